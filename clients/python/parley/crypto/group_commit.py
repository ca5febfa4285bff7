"""The signed commit chain that moves a group channel from epoch to epoch.

A commit names its channel, its epoch, the hash of the commit before it, the
whole new roster, the history policy, who committed and under which
admission rule, and the hash of the wrapped epoch secrets it hands out; the
committer's device signs exactly those bytes. `verify_commit` accepts a
commit only if it extends the previous state and its committer was allowed
to make it:

- "create" (epoch 0 only): the roster has exactly one admin and the
  committer is one of that admin's devices;
- "admin", "keeper": the committer is a device of an admin of the previous
  roster (a keeper is a service identity listed as an admin);
- "invitation": the committer is a device of a new user, a plain member,
  that the commit adds and nothing else changes; `proof` names the invitation;
- "device": the committer is a device the commit adds to an existing member,
  and only that member's devices change.

The signature is checked with the committer's key as the previous roster
lists it or, for a committer the commit adds, as the new roster lists it
(certified by its user key, which every roster device must be).
"""

from __future__ import annotations

from dataclasses import dataclass

import nacl.signing

from parley.crypto import identity
from parley.crypto.encoding import labelled, read_labelled
from parley.crypto.errors import MalformedInputError
from parley.crypto.group_encoding import labelled_list, read_labelled_list, read_text, read_u64, text, u64
from parley.crypto.group_errors import BrokenChainError, ForgedCommitError, UnauthorisedCommitError
from parley.crypto.group_invitation import guest_use_bytes, read_invitation_proof
from parley.crypto.group_roster import MEMBER, MemberDevice, Roster
from parley.crypto.primitives import blake2b_256, constant_time_equal

MEMBERS_SINCE_JOIN = "members-since-join"
ALL_EPOCHS = "all-epochs"
HISTORY_POLICIES = frozenset({MEMBERS_SINCE_JOIN, ALL_EPOCHS})
ADMISSIONS = frozenset({"create", "admin", "invitation", "keeper", "device"})


@dataclass(frozen=True)
class Commit:
    channel_id: str
    epoch: int
    previous_hash: bytes
    """The previous commit's `commit_hash`; empty for epoch 0."""
    roster: Roster
    history_policy: str
    committer_device_id: str
    admission: str
    proof: bytes
    """Opaque evidence for the admission rule, e.g. the invitation id."""
    wraps_hash: bytes
    """`group_wrap.wraps_hash` of the wrapped epoch secrets, so the signature covers them."""

    def __post_init__(self) -> None:
        if self.history_policy not in HISTORY_POLICIES:
            raise MalformedInputError(f"unknown history policy {self.history_policy!r}")
        if self.admission not in ADMISSIONS:
            raise MalformedInputError(f"unknown admission {self.admission!r}")

    def to_bytes(self) -> bytes:
        return labelled("group-commit", *self._content_fields(), self.wraps_hash)

    @classmethod
    def from_bytes(cls, data: bytes) -> Commit:
        channel, epoch, previous, roster, policy, committer, admission, proof, wraps = read_labelled(
            "group-commit", data, 9
        )
        return cls(
            read_text(channel),
            read_u64(epoch),
            previous,
            Roster.from_bytes(roster),
            read_text(policy),
            read_text(committer),
            read_text(admission),
            proof,
            wraps,
        )

    def content_hash(self) -> bytes:
        """BLAKE2b-256 of every field but `wraps_hash`: what this commit's wraps are bound to
        (they exist before the commit is signed, so they cannot name its `commit_hash`)."""
        return blake2b_256(labelled("group-commit-content", *self._content_fields()))

    def _content_fields(self) -> tuple[bytes, ...]:
        return (
            text(self.channel_id),
            u64(self.epoch),
            self.previous_hash,
            self.roster.to_bytes(),
            text(self.history_policy),
            text(self.committer_device_id),
            text(self.admission),
            self.proof,
        )


@dataclass(frozen=True)
class SignedCommit:
    """What travels: the exact commit bytes and the committer device's Ed25519 signature over them."""

    commit_bytes: bytes
    signature: bytes

    def to_bytes(self) -> bytes:
        return labelled("group-signed-commit", self.commit_bytes, self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedCommit:
        commit_bytes, signature = read_labelled("group-signed-commit", data, 2)
        return cls(commit_bytes, signature)

    @property
    def commit_hash(self) -> bytes:
        """BLAKE2b-256 of labelled("group-commit-hash", commit bytes, signature): the next commit's previous hash."""
        return blake2b_256(labelled("group-commit-hash", self.commit_bytes, self.signature))

    def commit(self) -> Commit:
        return Commit.from_bytes(self.commit_bytes)


@dataclass(frozen=True)
class ChannelState:
    """What a device keeps of a verified commit: enough to verify the next one and to use this epoch."""

    channel_id: str
    epoch: int
    roster: Roster
    commit_hash: bytes
    content_hash: bytes
    """`Commit.content_hash()`: what the wraps of this epoch's secret are bound to."""
    history_policy: str
    used_invitations: tuple[tuple[str, int], ...] = ()
    """(invite id, guests it admitted so far), by invite id: an invitation admits at most its ticket's uses."""

    def to_bytes(self) -> bytes:
        used = [labelled("group-invitation-use", text(i), u64(n)) for i, n in self.used_invitations]
        return labelled(
            "group-channel-state",
            text(self.channel_id),
            u64(self.epoch),
            self.roster.to_bytes(),
            self.commit_hash,
            self.content_hash,
            text(self.history_policy),
            labelled_list("group-invitation-uses", used),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ChannelState:
        channel, epoch, roster, commit_hash, content_hash, policy, used = read_labelled("group-channel-state", data, 7)
        uses = []
        for item in read_labelled_list("group-invitation-uses", used):
            invite_id, count = read_labelled("group-invitation-use", item, 2)
            uses.append((read_text(invite_id), read_u64(count)))
        return cls(
            read_text(channel),
            read_u64(epoch),
            Roster.from_bytes(roster),
            commit_hash,
            content_hash,
            read_text(policy),
            tuple(uses),
        )

    def uses_of(self, invite_id: str) -> int:
        return dict(self.used_invitations).get(invite_id, 0)


def sign_commit(commit: Commit, device_signing_key: nacl.signing.SigningKey) -> SignedCommit:
    commit_bytes = commit.to_bytes()
    return SignedCommit(commit_bytes, device_signing_key.sign(commit_bytes).signature)


def verify_commit(previous: ChannelState | None, signed: SignedCommit) -> ChannelState:
    """The channel state after `signed`, which must extend `previous` (None: the channel's first commit).

    Raises `BrokenChainError` (other channel, wrong epoch or previous hash), `UnauthorisedCommitError`
    (the committer may not make this change), `ForgedCommitError` (bad signature), `InvalidRosterError`
    (a device its user did not certify) or `MalformedInputError`. The wraps that came with the commit
    are checked against its `wraps_hash` by `group_wrap.verify_commit_wraps` (or `group_epoch.enter_epoch`).
    """
    commit = signed.commit()
    if previous is None:
        signer = _creator(commit)
    else:
        _check_follows(previous, commit)
        signer = _authorised_committer(previous, commit)
    if not identity.verify_signature(signer.signing_key, signed.commit_bytes, signed.signature):
        raise ForgedCommitError(f"commit signature does not verify under device {signer.device_id!r}")
    commit.roster.verify_devices()
    used = dict(previous.used_invitations) if previous is not None else {}
    if commit.admission == "invitation":
        invite_id = read_invitation_proof(commit.proof)[1].invite_id
        used[invite_id] = used.get(invite_id, 0) + 1
    return ChannelState(
        commit.channel_id,
        commit.epoch,
        commit.roster,
        signed.commit_hash,
        commit.content_hash(),
        commit.history_policy,
        tuple(sorted(used.items())),
    )


def _creator(commit: Commit) -> MemberDevice:
    if commit.epoch != 0 or commit.previous_hash:
        raise BrokenChainError("a channel's first commit has epoch 0 and no previous hash")
    if commit.admission != "create":
        raise UnauthorisedCommitError(f"a channel starts with a 'create' commit, not {commit.admission!r}")
    admins = commit.roster.admins()
    if len(admins) != 1:
        raise UnauthorisedCommitError(f"a new channel has exactly one admin, not {len(admins)}")
    committer = next((d for d in admins[0].devices if d.device_id == commit.committer_device_id), None)
    if committer is None:
        raise UnauthorisedCommitError("the creator must be a device of the new channel's admin")
    return committer


def _check_follows(previous: ChannelState, commit: Commit) -> None:
    if commit.channel_id != previous.channel_id:
        raise BrokenChainError(f"commit is for channel {commit.channel_id!r}, not {previous.channel_id!r}")
    if commit.epoch != previous.epoch + 1:
        raise BrokenChainError(f"commit has epoch {commit.epoch}, expected {previous.epoch + 1}")
    if not constant_time_equal(commit.previous_hash, previous.commit_hash):
        raise BrokenChainError(f"commit for epoch {commit.epoch} does not name the previous commit's hash")


def _authorised_committer(previous: ChannelState, commit: Commit) -> MemberDevice:
    """The committer's device (whose key must have signed), once the admission rule allows the change."""
    committer_id = commit.committer_device_id
    if commit.admission in ("admin", "keeper"):
        device = previous.roster.device(committer_id)
        if device is None or not previous.roster.is_admin(committer_id):
            raise UnauthorisedCommitError(f"{commit.admission!r} commit by {committer_id!r}, not an admin's device")
        return device
    if commit.admission == "create":
        raise UnauthorisedCommitError("only a channel's first commit is a 'create' commit")
    added = commit.roster.device_ids() - previous.roster.device_ids()
    device = commit.roster.device(committer_id)
    owner = commit.roster.member_of(committer_id)
    if device is None or owner is None or committer_id not in added:
        raise UnauthorisedCommitError(f"{commit.admission!r} commit by {committer_id!r}, not a device it adds")
    if commit.history_policy != previous.history_policy:
        raise UnauthorisedCommitError(f"only an admin changes the history policy, not an {commit.admission!r} commit")
    if commit.admission == "invitation":
        _check_invitation(previous, commit, owner.user_id)
    else:
        _check_new_device(previous, commit, owner.user_id)
    return device


def _check_invitation(previous: ChannelState, commit: Commit, guest_id: str) -> None:
    guest = commit.roster.member(guest_id)
    if previous.roster.member(guest_id) is not None:
        raise UnauthorisedCommitError(f"{guest_id!r} is already a member; an invitation admits a new user")
    if guest is None or guest.role != MEMBER:
        raise UnauthorisedCommitError("a guest admitted by invitation joins as a plain member")
    if not commit.proof:
        raise UnauthorisedCommitError("an invitation commit names its invitation in the proof")
    try:
        signed, ticket, guest_signature = read_invitation_proof(commit.proof)
    except MalformedInputError as error:
        raise UnauthorisedCommitError(f"an invitation commit's proof does not hold: {error}") from error
    if ticket.channel_id != commit.channel_id:
        raise UnauthorisedCommitError("the invitation is for another channel")
    if previous.uses_of(ticket.invite_id) >= ticket.uses:
        raise UnauthorisedCommitError(f"the invitation admitted {ticket.uses} guest(s) already: it is used up")
    inviter = previous.roster.device(signed.signer_device_id)
    if inviter is None or not previous.roster.is_admin(signed.signer_device_id):
        raise UnauthorisedCommitError("the invitation was not signed by an admin's device")
    if not identity.verify_signature(inviter.signing_key, signed.ticket, signed.signature):
        raise ForgedCommitError("the invitation's signature does not verify under its admin's device key")
    use = guest_use_bytes(commit.channel_id, commit.epoch, commit.previous_hash, guest_id)
    if not identity.verify_signature(ticket.guest_key, use, guest_signature):
        raise UnauthorisedCommitError("the proof was not made by a guest who knows the invitation, for this commit")
    if _without(commit.roster, guest_id) != previous.roster:
        raise UnauthorisedCommitError("an invitation commit adds its guest and changes nothing else")


def _check_new_device(previous: ChannelState, commit: Commit, user_id: str) -> None:
    before, after = previous.roster.member(user_id), commit.roster.member(user_id)
    if before is None or after is None:
        raise UnauthorisedCommitError(f"{user_id!r} is not a member; a device commit is for a member's new device")
    if (after.user_signing_key, after.role) != (before.user_signing_key, before.role):
        raise UnauthorisedCommitError("a device commit changes neither its user's key nor its role")
    if _without(commit.roster, user_id) != _without(previous.roster, user_id):
        raise UnauthorisedCommitError("a device commit changes only its own user's devices")


def _without(roster: Roster, user_id: str) -> Roster:
    return Roster(tuple(member for member in roster.members if member.user_id != user_id))
