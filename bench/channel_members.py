"""Channels for the channel benchmark's crypto phases: N members of one device each, every device certified by
its user's key (as `tests/unit/test_crypto_group.py` builds them); the first member is the admin and created
the channel with everyone in it (epoch 0).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nacl.signing

from parley.crypto import identity
from parley.crypto.group import (
    ADMIN,
    MEMBER,
    MEMBERS_SINCE_JOIN,
    ChannelState,
    CommittedEpoch,
    EpochKeys,
    Member,
    MemberDevice,
    Roster,
    commit_epoch,
)
from parley.crypto.primitives import X25519KeyPair

CHANNEL_ID = "sp-bench"


@dataclass(frozen=True)
class Person:
    """A member with one device: the roster entry and the device's private keys."""

    member: Member
    signing_key: nacl.signing.SigningKey = field(repr=False)
    dh: X25519KeyPair = field(repr=False)

    @property
    def device(self) -> MemberDevice:
        return self.member.devices[0]


def make_person(user_id: str, role: str) -> Person:
    user, device = nacl.signing.SigningKey.generate(), nacl.signing.SigningKey.generate()
    dh = X25519KeyPair.generate()
    user_public, device_public = user.verify_key.encode(), device.verify_key.encode()
    certificate = user.sign(identity.device_certificate_bytes(user_public, device_public, dh.public_key)).signature
    entry = MemberDevice(identity.device_id_for(device_public), device_public, dh.public_key, certificate)
    return Person(Member(user_id, user_public, role, (entry,)), device, dh)


@dataclass(frozen=True)
class BenchChannel:
    """Epoch 0 of a channel the admin (`people[0]`) created with all `people` in it."""

    people: tuple[Person, ...]
    created: CommittedEpoch

    @property
    def admin(self) -> Person:
        return self.people[0]

    @property
    def state(self) -> ChannelState:
        return self.created.epoch.state

    @property
    def keys(self) -> EpochKeys:
        return self.created.epoch.keys


def make_channel(members: int) -> BenchChannel:
    # Zero-padded ids keep the roster's order (sorted by user id) the order made here.
    people = tuple(make_person(f"u{n:04d}", ADMIN if n == 0 else MEMBER) for n in range(members))
    admin = people[0]
    created = commit_epoch(
        None,
        Roster(tuple(person.member for person in people)),
        channel_id=CHANNEL_ID,
        committer_device_id=admin.device.device_id,
        signing_key=admin.signing_key,
        admission="create",
        history_policy=MEMBERS_SINCE_JOIN,
    )
    return BenchChannel(people, created)
