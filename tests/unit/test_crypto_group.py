"""Sealed group channels (parley.crypto.group*): rosters, the commit chain and its admission rules,
wrapped epoch secrets, epoch keys, messages and signals, the replay guard and invitations.

CRYPTO.md's group tests are here: a removed device cannot read epoch e+1, a wrap from a non-member
is rejected, all members derive the same epoch authenticator. The helpers (`User`, `Device`,
`Channel`) are shared by the property tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace

import nacl.signing
import pytest

from parley.crypto import identity
from parley.crypto.encoding import labelled, read_labelled
from parley.crypto.errors import CryptoError, DecryptionError, InvalidSignatureError, MalformedInputError
from parley.crypto.group import (
    ADMIN,
    ALL_EPOCHS,
    MEMBER,
    MEMBERS_SINCE_JOIN,
    BrokenChainError,
    ChannelState,
    Commit,
    CommittedEpoch,
    Epoch,
    EpochKeys,
    ForgedCommitError,
    ForgedGroupMessageError,
    ForgedWrapError,
    InvalidInvitationError,
    InvalidRosterError,
    Invitation,
    Member,
    MemberDevice,
    MismatchedWrapsError,
    RejectedCommitError,
    ReplayedGroupMessageError,
    ReplayGuard,
    Roster,
    SignedCommit,
    SignedTicket,
    SignedWrap,
    UnauthorisedCommitError,
    UnknownEpochError,
    WrapRejectedError,
    admitter_key_hash,
    auth_code,
    commit_epoch,
    enter_epoch,
    epoch_keys,
    invitation_proof,
    invitation_verifier,
    open_group_message,
    open_group_signal,
    open_invitation_package,
    package_key,
    read_group_header,
    read_invitation_proof,
    seal_group_message,
    seal_group_signal,
    seal_invitation_package,
    sign_commit,
    sign_ticket,
    signed_wrap,
    unwrap_epoch_secret,
    verifier_matches,
    verify_commit,
    verify_commit_wraps,
    verify_own_wrap,
    verify_signed_wrap,
    wrap_digest,
    wrap_epoch_secret,
    wraps_hash,
)
from parley.crypto.group_encoding import labelled_list
from parley.crypto.primitives import Rng, X25519KeyPair
from tests.unit.test_crypto_x3dh import counter_rng

CHANNEL = "ch-1"


@dataclass(frozen=True)
class Device:
    """A test device: its roster entry and its private keys."""

    entry: MemberDevice
    signing_key: nacl.signing.SigningKey = field(repr=False)
    dh: X25519KeyPair

    @property
    def device_id(self) -> str:
        return self.entry.device_id


@dataclass(frozen=True)
class User:
    user_id: str
    user_key: nacl.signing.SigningKey = field(repr=False)
    rng: Rng = field(repr=False)

    def new_device(self, certified_by: nacl.signing.SigningKey | None = None) -> Device:
        signing = nacl.signing.SigningKey(self.rng(32))
        dh = X25519KeyPair.generate(self.rng)
        user_public, signing_public = self.user_key.verify_key.encode(), signing.verify_key.encode()
        certifier = certified_by or self.user_key
        certificate = certifier.sign(
            identity.device_certificate_bytes(user_public, signing_public, dh.public_key)
        ).signature
        entry = MemberDevice(identity.device_id_for(signing_public), signing_public, dh.public_key, certificate)
        return Device(entry, signing, dh)

    def member(self, role: str, *devices: Device) -> Member:
        return Member(self.user_id, self.user_key.verify_key.encode(), role, tuple(d.entry for d in devices))


def make_user(user_id: str) -> User:
    rng = counter_rng(user_id.encode())
    return User(user_id, nacl.signing.SigningKey(rng(32)), rng)


@dataclass
class Channel:
    """A channel as its members see it: alice (admin, phone and laptop), bob and carol (members)."""

    rng: Rng
    alice: User
    bob: User
    carol: User
    devices: dict[str, Device]
    epochs: list[CommittedEpoch] = field(default_factory=list)

    @property
    def state(self) -> ChannelState:
        return self.epochs[-1].epoch.state

    @property
    def epoch(self) -> Epoch:
        return self.epochs[-1].epoch

    def alice_member(self, role: str = ADMIN) -> Member:
        return self.alice.member(role, self.devices["alice-phone"], self.devices["alice-laptop"])

    def bob_member(self, *extra: Device) -> Member:
        return self.bob.member(MEMBER, self.devices["bob-phone"], *extra)

    def carol_member(self) -> Member:
        return self.carol.member(MEMBER, self.devices["carol-phone"])

    def full_roster(self) -> Roster:
        return Roster((self.alice_member(), self.bob_member(), self.carol_member()))

    def commit(
        self, roster: Roster, committer: str, admission: str = "admin", *, proof: bytes = b"", history_policy: str = ""
    ) -> CommittedEpoch:
        """A commit made and checked by `commit_epoch`, appended to the channel's history."""
        committed = commit_epoch(
            self.state if self.epochs else None,
            roster,
            channel_id=CHANNEL,
            committer_device_id=self.devices[committer].device_id,
            signing_key=self.devices[committer].signing_key,
            admission=admission,
            history_policy=history_policy or (self.state.history_policy if self.epochs else MEMBERS_SINCE_JOIN),
            proof=proof,
            rng=self.rng,
        )
        self.epochs.append(committed)
        return committed

    def raw_commit(self, roster: Roster, committer: str, admission: str = "admin", /, **fields: object) -> SignedCommit:
        """A commit signed by `committer` that follows the current state unless `fields` say otherwise;
        nothing checks it, so a test can hand a forged one to `verify_commit`."""
        values: dict[str, object] = {
            "channel_id": CHANNEL,
            "epoch": self.state.epoch + 1,
            "previous_hash": self.state.commit_hash,
            "roster": roster,
            "history_policy": self.state.history_policy,
            "committer_device_id": self.devices[committer].device_id,
            "admission": admission,
            "proof": b"",
            "wraps_hash": bytes(32),
        }
        values.update(fields)
        return sign_commit(Commit(**values), self.devices[committer].signing_key)  # type: ignore[arg-type]

    def enter(self, name: str, committed: CommittedEpoch, previous: ChannelState | None) -> Epoch:
        device = self.devices[name]
        return enter_epoch(previous, committed.signed, committed.wraps, device.device_id, device.dh.private_key)

    def held(self, *epochs: Epoch) -> dict[int, tuple[ChannelState, EpochKeys]]:
        return {epoch.state.epoch: (epoch.state, epoch.keys) for epoch in epochs or [e.epoch for e in self.epochs]}

    def seal(self, sender: str, plaintext: bytes, *, counter: int = 0, epoch: Epoch | None = None) -> bytes:
        epoch = epoch or self.epoch
        device = self.devices[sender]
        return seal_group_message(
            epoch.keys,
            CHANNEL,
            epoch.state.epoch,
            device.entry,
            device.signing_key,
            message_id=f"m-{sender}-{counter}",
            content_type="text/plain",
            counter=counter,
            plaintext=plaintext,
            rng=self.rng,
        )


def make_channel(seed: bytes = b"channel") -> Channel:
    """Epoch 0: alice creates the channel from her phone; epoch 1: she adds bob and carol."""
    alice, bob, carol = make_user("alice"), make_user("bob"), make_user("carol")
    devices = {
        "alice-phone": alice.new_device(),
        "alice-laptop": alice.new_device(),
        "bob-phone": bob.new_device(),
        "carol-phone": carol.new_device(),
    }
    channel = Channel(counter_rng(seed), alice, bob, carol, devices)
    channel.commit(Roster((channel.alice_member(),)), "alice-phone", "create")
    channel.commit(channel.full_roster(), "alice-phone")
    return channel


@pytest.fixture
def channel() -> Channel:
    return make_channel()


# --- rosters -----------------------------------------------------------------------


def test_roster_bytes_and_hash_do_not_depend_on_the_order_given(channel: Channel) -> None:
    alice, bob, carol = channel.alice_member(), channel.bob_member(), channel.carol_member()
    shuffled_alice = replace(alice, devices=tuple(reversed(alice.devices)))
    first, second = Roster((alice, bob, carol)), Roster((carol, shuffled_alice, bob))
    assert first == second
    assert first.to_bytes() == second.to_bytes()
    assert first.roster_hash() == second.roster_hash()
    assert len(first.roster_hash()) == 32
    assert [m.user_id for m in first.members] == ["alice", "bob", "carol"]
    assert Roster.from_bytes(first.to_bytes()) == first


def test_roster_lookups(channel: Channel) -> None:
    roster = channel.full_roster()
    phone, bob_phone = channel.devices["alice-phone"], channel.devices["bob-phone"]
    assert roster.device(phone.device_id) == phone.entry
    assert roster.member_of(bob_phone.device_id) == channel.bob_member()
    assert roster.member("carol") == channel.carol_member()
    assert roster.is_admin(phone.device_id)
    assert not roster.is_admin(bob_phone.device_id)
    assert not roster.is_admin("d-unknown")
    assert roster.device("d-unknown") is None
    assert roster.device_ids() == {d.device_id for d in channel.devices.values()}
    assert len(roster.devices()) == 4
    assert roster.admins() == (channel.alice_member(),)
    roster.verify_devices()


def test_roster_refuses_duplicates_unknown_roles_and_non_canonical_bytes(channel: Channel) -> None:
    alice, bob = channel.alice_member(), channel.bob_member()
    with pytest.raises(InvalidRosterError, match="user appears twice"):
        Roster((alice, alice))
    with pytest.raises(InvalidRosterError, match="device appears twice"):
        Roster((alice, replace(bob, devices=alice.devices[:1])))
    with pytest.raises(InvalidRosterError, match="unknown role"):
        replace(bob, role="owner")
    swapped = labelled_list("group-roster", [bob.to_bytes(), alice.to_bytes()])
    with pytest.raises(MalformedInputError, match="canonical"):
        Roster.from_bytes(swapped)


def test_a_device_its_user_did_not_certify_is_refused(channel: Channel) -> None:
    forged = channel.bob.new_device(certified_by=channel.carol.user_key)
    with pytest.raises(InvalidRosterError, match="certificate"):
        forged.entry.verify(channel.bob.user_key.verify_key.encode())
    renamed = replace(channel.devices["bob-phone"].entry, device_id="d-chosen")
    with pytest.raises(InvalidRosterError, match="not derived"):
        renamed.verify(channel.bob.user_key.verify_key.encode())


# --- the commit chain ----------------------------------------------------------------


def test_commits_and_states_round_trip(channel: Channel) -> None:
    signed = channel.epochs[1].signed
    commit = signed.commit()
    assert Commit.from_bytes(commit.to_bytes()) == commit
    assert SignedCommit.from_bytes(signed.to_bytes()) == signed
    assert ChannelState.from_bytes(channel.state.to_bytes()) == channel.state
    assert commit.epoch == 1
    assert commit.previous_hash == channel.epochs[0].signed.commit_hash
    assert commit.wraps_hash == wraps_hash(channel.epochs[1].wraps)


def test_every_member_verifies_the_chain_to_the_same_state(channel: Channel) -> None:
    state = None
    for committed in channel.epochs:
        state = verify_commit(state, committed.signed)
        assert state == committed.epoch.state
    assert state is not None
    assert state.epoch == 1
    assert state.roster == channel.full_roster()
    assert state.commit_hash == channel.epochs[1].signed.commit_hash


def test_an_admin_removes_a_member_and_changes_the_history_policy(channel: Channel) -> None:
    roster = Roster((channel.alice_member(), channel.bob_member()))
    committed = channel.commit(roster, "alice-laptop", history_policy=ALL_EPOCHS)
    state = verify_commit(channel.epochs[1].epoch.state, committed.signed)
    assert (state.epoch, state.history_policy, state.roster) == (2, ALL_EPOCHS, roster)


def test_a_bad_signature_is_a_forged_commit(channel: Channel) -> None:
    signed = channel.raw_commit(channel.full_roster(), "alice-phone")
    flipped = SignedCommit(signed.commit_bytes, bytes([signed.signature[0] ^ 1]) + signed.signature[1:])
    with pytest.raises(ForgedCommitError, match="signature does not verify"):
        verify_commit(channel.state, flipped)
    assert issubclass(ForgedCommitError, InvalidSignatureError)


def test_a_commit_signed_by_another_key_than_the_listed_one_is_forged(channel: Channel) -> None:
    signed = channel.raw_commit(channel.full_roster(), "alice-phone")
    other = sign_commit(signed.commit(), channel.devices["bob-phone"].signing_key)
    with pytest.raises(ForgedCommitError):
        verify_commit(channel.state, other)


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"previous_hash": bytes(32)}, "previous commit's hash"),
        ({"epoch": 3}, "expected 2"),
        ({"epoch": 1}, "expected 2"),
        ({"channel_id": "ch-2"}, "channel"),
    ],
)
def test_a_commit_that_does_not_follow_the_chain_is_refused(
    channel: Channel, fields: dict[str, object], reason: str
) -> None:
    signed = channel.raw_commit(channel.full_roster(), "alice-phone", **fields)
    with pytest.raises(BrokenChainError, match=reason):
        verify_commit(channel.state, signed)


def test_a_member_who_is_not_an_admin_cannot_commit(channel: Channel) -> None:
    roster = Roster((channel.alice_member(), channel.bob_member()))
    for admission in ("admin", "keeper"):
        with pytest.raises(UnauthorisedCommitError, match="not an admin's device"):
            verify_commit(channel.state, channel.raw_commit(roster, "bob-phone", admission))


def test_a_roster_with_a_badly_certified_device_is_refused(channel: Channel) -> None:
    intruder = channel.bob.new_device(certified_by=channel.alice.user_key)
    channel.devices["bob-tablet"] = intruder
    roster = Roster((channel.alice_member(), channel.bob_member(intruder), channel.carol_member()))
    with pytest.raises(InvalidRosterError, match="certificate"):
        verify_commit(channel.state, channel.raw_commit(roster, "alice-phone"))


def test_a_channel_starts_with_one_admin_whose_device_creates_it(channel: Channel) -> None:
    roster = channel.full_roster()
    first = {"epoch": 0, "previous_hash": b"", "admission": "create"}
    assert verify_commit(None, channel.raw_commit(Roster((channel.alice_member(),)), "alice-laptop", **first))
    with pytest.raises(UnauthorisedCommitError, match="a device of the new channel's admin"):
        verify_commit(None, channel.raw_commit(roster, "bob-phone", **first))
    two_admins = Roster((channel.alice_member(), replace(channel.bob_member(), role=ADMIN)))
    with pytest.raises(UnauthorisedCommitError, match="exactly one admin"):
        verify_commit(None, channel.raw_commit(two_admins, "alice-phone", **first))
    with pytest.raises(UnauthorisedCommitError, match="'create' commit"):
        verify_commit(None, channel.raw_commit(roster, "alice-phone", epoch=0, previous_hash=b""))
    with pytest.raises(BrokenChainError, match="epoch 0"):
        verify_commit(None, channel.raw_commit(roster, "alice-phone", "create"))
    with pytest.raises(UnauthorisedCommitError, match="first commit"):
        verify_commit(channel.state, channel.raw_commit(roster, "alice-phone", "create"))


def test_a_keeper_listed_as_admin_commits() -> None:
    channel = make_channel()
    keeper = make_user("keeper")
    channel.devices["keeper"] = keeper.new_device()
    with_keeper = Roster((*channel.full_roster().members, keeper.member(ADMIN, channel.devices["keeper"])))
    channel.commit(with_keeper, "alice-phone")
    dave = make_user("dave")
    channel.devices["dave-phone"] = dave.new_device()
    roster = Roster((*with_keeper.members, dave.member(MEMBER, channel.devices["dave-phone"])))
    committed = channel.commit(roster, "keeper", "keeper", proof=b"join-request-7")
    assert committed.epoch.state.roster == roster


def ticket_proof(channel: Channel, signer: str = "alice-phone", channel_id: str = "", guest: str = "dave") -> bytes:
    """The proof guest `guest` puts in the next commit: a ticket signed by `signer`'s device, and its signature
    with the invitation's derived key over its user id and the place in the chain."""
    device = channel.devices[signer]
    invitation = Invitation.generate(channel_id or channel.state.channel_id, "invite-1", bytes(32))
    signed = sign_ticket(invitation, 1, device.device_id, device.signing_key)
    return invitation_proof(signed, invitation, channel.state.epoch + 1, channel.state.commit_hash, guest)


def test_a_guest_admits_itself_with_an_invitation(channel: Channel) -> None:
    dave = make_user("dave")
    channel.devices["dave-phone"] = dave.new_device()
    roster = Roster((*channel.full_roster().members, dave.member(MEMBER, channel.devices["dave-phone"])))
    committed = channel.commit(roster, "dave-phone", "invitation", proof=ticket_proof(channel))
    assert committed.epoch.state.roster.member("dave") is not None


def test_an_invitation_admits_no_more_guests_than_its_ticket_says(channel: Channel) -> None:
    device = channel.devices["alice-phone"]
    invitation = Invitation.generate(channel.state.channel_id, "invite-2", bytes(32))
    signed = sign_ticket(invitation, 2, device.device_id, device.signing_key)
    for n, name in enumerate(("dave", "erin", "fay")):
        guest = make_user(name)
        channel.devices[f"{name}-phone"] = guest.new_device()
        roster = Roster((*channel.state.roster.members, guest.member(MEMBER, channel.devices[f"{name}-phone"])))
        proof = invitation_proof(signed, invitation, channel.state.epoch + 1, channel.state.commit_hash, name)
        if n < 2:
            committed = channel.commit(roster, f"{name}-phone", "invitation", proof=proof)
            assert committed.epoch.state.uses_of("invite-2") == n + 1
        else:
            with pytest.raises(UnauthorisedCommitError, match="used up"):
                verify_commit(channel.state, channel.raw_commit(roster, f"{name}-phone", "invitation", proof=proof))


def test_an_invitation_proof_must_come_from_an_admin_for_this_channel_and_guest_and_place(channel: Channel) -> None:
    dave = make_user("dave")
    channel.devices["dave-phone"] = dave.new_device()
    roster = Roster((*channel.full_roster().members, dave.member(MEMBER, channel.devices["dave-phone"])))
    signed, _, guest_signature = read_invitation_proof(ticket_proof(channel))
    forged = SignedTicket(signed.ticket, signed.signer_device_id, bytes(64))
    cases = [
        (ticket_proof(channel, signer="bob-phone"), "not signed by an admin"),
        (ticket_proof(channel, channel_id="sp-" + "0" * 32), "another channel"),
        (ticket_proof(channel, guest="erin"), "not made by a guest"),  # erin's proof, copied by dave
        (labelled("group-invitation-proof", forged.to_bytes(), guest_signature), "signature does not verify"),
        (b"invite-1", "does not hold"),
    ]
    for proof, reason in cases:
        with pytest.raises(RejectedCommitError, match=reason):
            verify_commit(channel.state, channel.raw_commit(roster, "dave-phone", "invitation", proof=proof))
    stale = ticket_proof(channel)
    channel.commit(channel.full_roster(), "alice-phone")  # the chain moves on: the proof was for the epoch before
    roster = Roster((*channel.full_roster().members, dave.member(MEMBER, channel.devices["dave-phone"])))
    with pytest.raises(RejectedCommitError, match="not made by a guest"):
        verify_commit(channel.state, channel.raw_commit(roster, "dave-phone", "invitation", proof=stale))


def test_an_invitation_commit_adds_one_plain_member_and_changes_nothing_else(channel: Channel) -> None:
    dave = make_user("dave")
    channel.devices["dave-phone"] = dave.new_device()
    dave_member = dave.member(MEMBER, channel.devices["dave-phone"])
    others = channel.full_roster().members
    cases: list[tuple[Roster, dict[str, object], str]] = [
        (Roster((*others, replace(dave_member, role=ADMIN))), {}, "plain member"),
        (Roster((channel.alice_member(), channel.bob_member(), dave_member)), {}, "changes nothing else"),
        (Roster((*others, dave_member)), {"proof": b""}, "names its invitation"),
        (Roster((*others, dave_member)), {"history_policy": ALL_EPOCHS}, "history policy"),
        (channel.full_roster(), {"committer_device_id": "d-unknown"}, "not a device it adds"),
    ]
    for roster, fields, reason in cases:
        overrides: dict[str, object] = {"proof": ticket_proof(channel), **fields}
        signed = channel.raw_commit(roster, "dave-phone", "invitation", **overrides)
        with pytest.raises(UnauthorisedCommitError, match=reason):
            verify_commit(channel.state, signed)
    existing = channel.bob.new_device()
    channel.devices["bob-tablet"] = existing
    roster = Roster((channel.alice_member(), channel.bob_member(existing), channel.carol_member()))
    with pytest.raises(UnauthorisedCommitError, match="already a member"):
        verify_commit(
            channel.state, channel.raw_commit(roster, "bob-tablet", "invitation", proof=ticket_proof(channel))
        )


def test_a_members_new_device_adds_itself(channel: Channel) -> None:
    tablet = channel.bob.new_device()
    channel.devices["bob-tablet"] = tablet
    roster = Roster((channel.alice_member(), channel.bob_member(tablet), channel.carol_member()))
    committed = channel.commit(roster, "bob-tablet", "device")
    assert committed.epoch.state.roster.member_of(tablet.device_id) == channel.bob_member(tablet)


def test_a_device_commit_changes_only_its_users_devices(channel: Channel) -> None:
    tablet = channel.bob.new_device()
    channel.devices["bob-tablet"] = tablet
    bob = channel.bob_member(tablet)
    dave = make_user("dave")
    channel.devices["dave-phone"] = dave.new_device()
    cases = [
        (Roster((channel.alice_member(), bob)), "only its own user's devices"),
        (Roster((channel.alice_member(), replace(bob, role=ADMIN), channel.carol_member())), "role"),
        (Roster((*channel.full_roster().members, dave.member(MEMBER, channel.devices["dave-phone"]))), "not a member"),
    ]
    committers = ["bob-tablet", "bob-tablet", "dave-phone"]
    for (roster, reason), committer in zip(cases, committers, strict=True):
        with pytest.raises(UnauthorisedCommitError, match=reason):
            verify_commit(channel.state, channel.raw_commit(roster, committer, "device"))
    with pytest.raises(UnauthorisedCommitError, match="not a device it adds"):
        verify_commit(channel.state, channel.raw_commit(channel.full_roster(), "bob-phone", "device"))


def test_a_device_certified_by_another_user_cannot_join_as_that_users_device(channel: Channel) -> None:
    impostor = channel.bob.new_device(certified_by=channel.carol.user_key)
    channel.devices["bob-impostor"] = impostor
    roster = Roster((channel.alice_member(), channel.bob_member(impostor), channel.carol_member()))
    with pytest.raises(InvalidRosterError, match="certificate"):
        verify_commit(channel.state, channel.raw_commit(roster, "bob-impostor", "device"))


def test_unknown_admissions_and_policies_do_not_parse(channel: Channel) -> None:
    commit = channel.epochs[1].signed.commit()
    with pytest.raises(MalformedInputError, match="admission"):
        replace(commit, admission="server")
    with pytest.raises(MalformedInputError, match="history policy"):
        replace(commit, history_policy="forever")


# --- wraps -----------------------------------------------------------------------


def _wrap_for(channel: Channel, name: str, **overrides: object) -> bytes:
    state = channel.state
    values: dict[str, object] = {"channel_id": CHANNEL, "epoch": state.epoch, "content_hash": state.content_hash}
    values.update(overrides)
    return wrap_epoch_secret(channel.epoch.secret, channel.devices[name].entry, rng=channel.rng, **values)  # type: ignore[arg-type]


def _unwrap(channel: Channel, wrap: bytes, name: str) -> bytes:
    state, device = channel.state, channel.devices[name]
    return unwrap_epoch_secret(wrap, device.device_id, device.dh.private_key, CHANNEL, state.epoch, state.content_hash)


def test_a_wrap_opens_for_its_device_only(channel: Channel) -> None:
    wrap = _wrap_for(channel, "bob-phone")
    assert _unwrap(channel, wrap, "bob-phone") == channel.epoch.secret
    with pytest.raises(WrapRejectedError):
        _unwrap(channel, wrap, "carol-phone")
    bob = channel.devices["bob-phone"]
    with pytest.raises(WrapRejectedError):  # bob's id, another device's key
        unwrap_epoch_secret(
            wrap, bob.device_id, channel.devices["carol-phone"].dh.private_key, CHANNEL, 1, channel.state.content_hash
        )


@pytest.mark.parametrize(
    "overrides",
    [{"channel_id": "ch-2"}, {"epoch": 0}, {"content_hash": bytes(32)}],
)
def test_a_wrap_is_bound_to_channel_epoch_and_commit(channel: Channel, overrides: dict[str, object]) -> None:
    with pytest.raises(WrapRejectedError):
        _unwrap(channel, _wrap_for(channel, "bob-phone", **overrides), "bob-phone")


def test_a_wrap_for_another_device_id_with_the_same_key_does_not_open(channel: Channel) -> None:
    bob = channel.devices["bob-phone"]
    relabelled = replace(bob.entry, device_id="d-other")
    wrap = wrap_epoch_secret(channel.epoch.secret, relabelled, CHANNEL, 1, channel.state.content_hash, channel.rng)
    with pytest.raises(WrapRejectedError):
        _unwrap(channel, wrap, "bob-phone")


def test_every_bit_flip_of_a_wrap_is_rejected(channel: Channel) -> None:
    wrap = _wrap_for(channel, "bob-phone")
    for index in range(len(wrap)):
        flipped = wrap[:index] + bytes([wrap[index] ^ 0x10]) + wrap[index + 1 :]
        with pytest.raises(CryptoError):
            _unwrap(channel, flipped, "bob-phone")


def test_the_commit_signs_its_wraps(channel: Channel) -> None:
    committed = channel.epochs[-1]
    commit = committed.signed.commit()
    verify_commit_wraps(commit, committed.wraps)
    bob_id, carol_id = channel.devices["bob-phone"].device_id, channel.devices["carol-phone"].device_id
    substituted = {**committed.wraps, bob_id: _wrap_for(channel, "bob-phone")}
    with pytest.raises(MismatchedWrapsError, match="not the ones the commit signed"):
        verify_commit_wraps(commit, substituted)
    missing = {k: v for k, v in committed.wraps.items() if k != carol_id}
    with pytest.raises(MismatchedWrapsError, match="every device"):
        verify_commit_wraps(commit, missing)
    digests = {device_id: wrap_digest(wrap) for device_id, wrap in committed.wraps.items()}
    verify_own_wrap(commit, bob_id, committed.wraps[bob_id], digests)
    with pytest.raises(MismatchedWrapsError):
        verify_own_wrap(commit, bob_id, substituted[bob_id], digests)


def test_a_removed_device_cannot_read_the_next_epoch(channel: Channel) -> None:
    before = channel.state
    committed = channel.commit(Roster((channel.alice_member(), channel.bob_member())), "alice-phone")
    carol = channel.devices["carol-phone"]
    assert carol.device_id not in committed.wraps
    with pytest.raises(MismatchedWrapsError, match="not in the roster"):
        channel.enter("carol-phone", committed, before)
    for device_id, wrap in committed.wraps.items():
        with pytest.raises(WrapRejectedError):
            unwrap_epoch_secret(wrap, device_id, carol.dh.private_key, CHANNEL, 2, committed.epoch.state.content_hash)
        with pytest.raises(WrapRejectedError):
            unwrap_epoch_secret(
                wrap, carol.device_id, carol.dh.private_key, CHANNEL, 2, committed.epoch.state.content_hash
            )
    assert committed.epoch.secret != channel.epochs[1].epoch.secret
    message = channel.seal("bob-phone", b"after carol left", epoch=committed.epoch)
    with pytest.raises(UnknownEpochError):
        open_group_message(channel.held(channel.epochs[1].epoch), message, ReplayGuard())


def test_all_members_derive_the_same_epoch_authenticator(channel: Channel) -> None:
    previous = channel.epochs[0].epoch.state
    entered = [channel.enter(name, channel.epochs[1], previous) for name in channel.devices]
    assert {epoch.keys.authenticator for epoch in entered} == {channel.epoch.keys.authenticator}
    assert {epoch.secret for epoch in entered} == {channel.epoch.secret}
    assert channel.epoch.keys.authenticator != channel.epochs[0].epoch.keys.authenticator


def test_epoch_keys_are_distinct_and_bound_to_the_commit(channel: Channel) -> None:
    state, secret = channel.state, channel.epoch.secret
    keys = epoch_keys(secret, CHANNEL, state.epoch, state.commit_hash)
    assert len({keys.app_key, keys.signal_key, keys.authenticator}) == 3
    assert epoch_keys(secret, CHANNEL, state.epoch, bytes(32)) != keys
    assert epoch_keys(secret, "ch-2", state.epoch, state.commit_hash) != keys
    assert epoch_keys(secret, CHANNEL, state.epoch + 1, state.commit_hash) != keys
    assert keys.app_key.hex() not in repr(keys)
    assert repr(keys.app_key) not in repr(keys)


# --- wraps sent after the commit ----------------------------------------------------------


def test_a_members_device_wraps_the_current_epoch_for_a_new_device(channel: Channel) -> None:
    tablet = channel.bob.new_device()
    channel.devices["bob-tablet"] = tablet
    before = channel.epochs[-1]
    channel.commit(
        Roster((channel.alice_member(), channel.bob_member(tablet), channel.carol_member())), "bob-tablet", "device"
    )
    current = channel.state
    # bob's phone hands the tablet epoch 1's secret (history), signed.
    wrap = wrap_epoch_secret(
        before.epoch.secret, tablet.entry, CHANNEL, 1, before.epoch.state.content_hash, channel.rng
    )
    phone = channel.devices["bob-phone"]
    signed = signed_wrap(before.epoch.state, tablet.device_id, wrap, phone.device_id, phone.signing_key)
    assert SignedWrap.from_bytes(signed.to_bytes()) == signed
    received = verify_signed_wrap(current, SignedWrap.from_bytes(signed.to_bytes()), before.epoch.state)
    secret = unwrap_epoch_secret(
        received, tablet.device_id, tablet.dh.private_key, CHANNEL, 1, before.epoch.state.content_hash
    )
    assert secret == before.epoch.secret
    with pytest.raises(ForgedWrapError, match="epoch 1, not 'ch-1' epoch 2"):
        verify_signed_wrap(current, signed)
    with pytest.raises(ForgedWrapError, match="another commit"):
        verify_signed_wrap(current, replace(signed, commit_hash=current.commit_hash), before.epoch.state)


def test_a_wrap_signed_by_a_non_member_is_rejected(channel: Channel) -> None:
    state = channel.state
    mallory = make_user("mallory").new_device()
    bob = channel.devices["bob-phone"]
    wrap = _wrap_for(channel, "bob-phone")
    forged = signed_wrap(state, bob.device_id, wrap, mallory.device_id, mallory.signing_key)
    with pytest.raises(ForgedWrapError, match="not a device of the roster"):
        verify_signed_wrap(state, forged)
    alice = channel.devices["alice-phone"]
    claimed = signed_wrap(state, bob.device_id, wrap, alice.device_id, mallory.signing_key)
    with pytest.raises(ForgedWrapError, match="signature does not verify"):
        verify_signed_wrap(state, claimed)
    genuine = signed_wrap(state, bob.device_id, wrap, alice.device_id, alice.signing_key)
    assert verify_signed_wrap(state, genuine) == wrap
    with pytest.raises(ForgedWrapError, match="epoch 0, not 'ch-1' epoch 1"):
        verify_signed_wrap(state, replace(genuine, epoch=0))
    with pytest.raises(ForgedWrapError, match="for 'd-outsider'"):
        verify_signed_wrap(state, signed_wrap(state, "d-outsider", wrap, alice.device_id, alice.signing_key))
    with pytest.raises(ForgedWrapError, match="signature"):
        verify_signed_wrap(state, replace(genuine, wrap=_wrap_for(channel, "bob-phone")))


# --- messages and signals --------------------------------------------------------------


def test_a_message_opens_for_every_member_with_its_sender(channel: Channel) -> None:
    message = channel.seal("bob-phone", b"hello", counter=3)
    header = read_group_header(message)
    assert (header.channel_id, header.epoch, header.counter) == (CHANNEL, 1, 3)
    opened = open_group_message(channel.held(), message, ReplayGuard())
    assert opened.plaintext == b"hello"
    assert (opened.sender_user_id, opened.sender_device_id) == ("bob", channel.devices["bob-phone"].device_id)
    assert (opened.epoch, opened.message_id, opened.content_type, opened.counter) == (
        1,
        "m-bob-phone-3",
        "text/plain",
        3,
    )


def test_a_signal_uses_its_own_key_and_labels(channel: Channel) -> None:
    device, epoch = channel.devices["carol-phone"], channel.epoch
    signal = seal_group_signal(
        epoch.keys,
        CHANNEL,
        1,
        device.entry,
        device.signing_key,
        message_id="s-1",
        content_type="typing",
        counter=0,
        plaintext=b"typing",
        rng=channel.rng,
    )
    opened = open_group_signal(channel.held(), signal, ReplayGuard())
    assert (opened.plaintext, opened.content_type, opened.sender_user_id) == (b"typing", "typing", "carol")
    with pytest.raises(MalformedInputError):
        open_group_message(channel.held(), signal, ReplayGuard())
    with pytest.raises(MalformedInputError):
        open_group_signal(channel.held(), channel.seal("carol-phone", b"x"), ReplayGuard())


def test_a_message_from_a_device_outside_the_roster_is_forged(channel: Channel) -> None:
    mallory = make_user("mallory").new_device()
    message = seal_group_message(
        channel.epoch.keys,
        CHANNEL,
        1,
        mallory.entry,
        mallory.signing_key,
        message_id="m",
        content_type="text/plain",
        counter=0,
        plaintext=b"let me in",
        rng=channel.rng,
    )
    with pytest.raises(ForgedGroupMessageError, match="not a device of epoch 1"):
        open_group_message(channel.held(), message, ReplayGuard())


def test_a_member_cannot_send_as_another_member(channel: Channel) -> None:
    bob, carol = channel.devices["bob-phone"], channel.devices["carol-phone"]
    with pytest.raises(ValueError, match="signing key"):
        seal_group_message(
            channel.epoch.keys,
            CHANNEL,
            1,
            carol.entry,
            bob.signing_key,
            message_id="m",
            content_type="text/plain",
            counter=0,
            plaintext=b"I am carol",
        )
    # Bob holds the app key, so he can seal under carol's header; only the signature gives him away.
    header, ciphertext, _ = read_labelled("group-message", channel.seal("carol-phone", b"hi"), 3)
    signature = bob.signing_key.sign(labelled("group-message-signature", header, ciphertext)).signature
    with pytest.raises(ForgedGroupMessageError, match="signature does not verify"):
        open_group_message(channel.held(), labelled("group-message", header, ciphertext, signature), ReplayGuard())


def test_a_message_for_an_epoch_or_channel_not_held_is_refused(channel: Channel) -> None:
    message = channel.seal("bob-phone", b"hello")
    with pytest.raises(UnknownEpochError, match="epoch 1"):
        open_group_message(channel.held(channel.epochs[0].epoch), message, ReplayGuard())
    other_channel = {1: (replace(channel.state, channel_id="ch-2"), channel.epoch.keys)}
    with pytest.raises(UnknownEpochError, match="'ch-1'"):
        open_group_message(other_channel, message, ReplayGuard())
    other_keys = {1: (channel.state, epoch_keys(bytes(32), CHANNEL, 1, channel.state.commit_hash))}
    with pytest.raises(DecryptionError):
        open_group_message(other_keys, message, ReplayGuard())


def test_a_replayed_message_is_rejected_and_reordering_within_the_window_is_not(channel: Channel) -> None:
    guard = ReplayGuard(window=8)
    messages = {counter: channel.seal("bob-phone", b"m%d" % counter, counter=counter) for counter in range(12)}
    for counter in [0, 2, 1, 9, 5, 11, 4]:
        assert open_group_message(channel.held(), messages[counter], guard).counter == counter
    with pytest.raises(ReplayedGroupMessageError, match="already accepted"):
        open_group_message(channel.held(), messages[9], guard)
    with pytest.raises(ReplayedGroupMessageError, match="below the replay window"):
        open_group_message(channel.held(), messages[3], guard)  # 11 - 3 >= 8
    assert open_group_message(channel.held(), messages[6], guard).counter == 6
    carol_zero = channel.seal("carol-phone", b"other sender", counter=0)
    assert open_group_message(channel.held(), carol_zero, guard).sender_user_id == "carol"


def test_a_refused_message_leaves_the_guard_unchanged(channel: Channel) -> None:
    guard = ReplayGuard()
    message = channel.seal("bob-phone", b"hello")
    tampered = message[:-1] + bytes([message[-1] ^ 1])
    with pytest.raises(ForgedGroupMessageError):
        open_group_message(channel.held(), tampered, guard)
    assert guard.to_dict()["seen"] == []
    open_group_message(channel.held(), message, guard)


def test_the_message_size_does_not_depend_on_the_roster_size() -> None:
    sizes = set()
    for extra_members in (0, 20):
        channel = make_channel(b"size")
        others = [make_user(f"user-{i}") for i in range(extra_members)]
        members = [user.member(MEMBER, user.new_device()) for user in others]
        channel.commit(Roster((*channel.full_roster().members, *members)), "alice-phone")
        sizes.add(len(channel.seal("bob-phone", b"same plaintext")))
    assert len(sizes) == 1


# --- the replay guard -----------------------------------------------------------------


def test_the_replay_guard_round_trips_through_json() -> None:
    guard = ReplayGuard(window=16)
    for device, epoch, counter in [("d1", 0, 5), ("d1", 0, 3), ("d2", 1, 40), ("d1", 1, 0)]:
        guard.accept(device, epoch, counter)
    restored = ReplayGuard.from_dict(json.loads(json.dumps(guard.to_dict())))
    assert restored.to_dict() == guard.to_dict()
    with pytest.raises(ReplayedGroupMessageError):
        restored.accept("d1", 0, 3)
    restored.accept("d1", 0, 4)
    restored.forget_epochs_before(1)
    restored.accept("d1", 0, 3)  # forgotten with its epoch
    with pytest.raises(MalformedInputError):
        ReplayGuard.from_dict({"version": 1, "window": 16, "seen": [["d1", 0, 5, "1" + "0" * 16]]})
    with pytest.raises(MalformedInputError):
        ReplayGuard.from_dict({"version": 2})


# --- invitations ------------------------------------------------------------------------


@pytest.fixture
def invitation() -> Invitation:
    rng = counter_rng(b"invitation")
    return Invitation.generate(CHANNEL, "inv-1", admitter_key_hash(b"\x01" * 32), rng)


def test_an_invitation_round_trips_through_its_text_code(invitation: Invitation) -> None:
    code = invitation.to_text()
    assert code.startswith("pi1.")
    assert code.isascii()
    assert not set(code) & set("=+/")
    assert Invitation.from_text(code) == invitation
    assert Invitation.from_text(f"  {code}\n") == invitation
    assert invitation.secret.hex() not in repr(invitation)


@pytest.mark.parametrize("code", ["", "pi1.", "pi2.AAAA", "pi1.!!!!", "pi1.AAAAA", "hello"])
def test_garbage_is_not_an_invitation(code: str) -> None:
    with pytest.raises(InvalidInvitationError):
        Invitation.from_text(code)


def test_a_non_canonical_invitation_code_is_refused(invitation: Invitation) -> None:
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    code = invitation.to_text()
    assert len(invitation.to_bytes()) % 3 != 0  # so the last character has bits the bytes do not use
    unused_bit_set = code[:-1] + alphabet[alphabet.index(code[-1]) ^ 1]
    with pytest.raises(InvalidInvitationError, match="canonical"):
        Invitation.from_text(unused_bit_set)


def test_auth_codes_are_eight_random_digits() -> None:
    rng = counter_rng(b"codes")
    codes = [auth_code(rng) for _ in range(200)]
    assert all(len(code) == 8 and code.isdigit() for code in codes)
    assert len(set(codes)) == 200
    assert {code[0] for code in codes} == set("0123456789")


def test_the_verifier_needs_the_secret_and_the_code(invitation: Invitation) -> None:
    secret, invite_id = invitation.secret, invitation.invite_id
    stored = invitation_verifier(secret, "12345678", invite_id)
    assert verifier_matches(stored, invitation_verifier(secret, "12345678", invite_id))
    assert not verifier_matches(stored, invitation_verifier(secret, "12345679", invite_id))
    assert not verifier_matches(stored, invitation_verifier(secret, "12345678", "inv-2"))
    assert not verifier_matches(stored, invitation_verifier(bytes(32), "12345678", invite_id))
    assert package_key(secret, "12345678", invite_id) != stored
    assert len(stored) == 32
    with pytest.raises(InvalidInvitationError):
        invitation_verifier(secret, "1234567", invite_id)
    with pytest.raises(InvalidInvitationError):
        package_key(secret, "1234567a", invite_id)


def test_the_package_opens_with_the_right_code_only(invitation: Invitation) -> None:
    rng = counter_rng(b"package")
    sealed = seal_invitation_package(invitation, "00001234", b"epoch secrets and roster", rng)
    with pytest.raises(DecryptionError):
        open_invitation_package(invitation, "00001235", sealed)
    assert open_invitation_package(invitation, "00001234", sealed) == b"epoch secrets and roster"
    with pytest.raises(DecryptionError):
        open_invitation_package(replace(invitation, invite_id="inv-2"), "00001234", sealed)
    with pytest.raises(DecryptionError):
        open_invitation_package(replace(invitation, channel_id="ch-2"), "00001234", sealed)
