"""Sealed group channels ("MLS-lite", CRYPTO.md "Group channels"): the public API in one place.

- `group_roster`: members, roles and certified devices; the roster hash.
- `group_commit`: the signed commit chain and its admission rules (`verify_commit`).
- `group_wrap`: the epoch secret sealed to each device, and how a device knows a wrap is genuine.
- `group_epoch`: both ends of an epoch change (`commit_epoch`, `enter_epoch`).
- `group_keys`: the app, signal and authenticator keys of an epoch.
- `group_message`: messages and signals sealed once for the channel and signed by their sender.
- `group_replay`: the replay guard over (sender device, epoch, counter).
- `group_invitation`: invitation codes, auth codes, the server's verifier and the package key.

Everything here is pure: no I/O, no clock, randomness from an injectable `Rng`.
"""

from __future__ import annotations

from parley.crypto.group_commit import (
    ADMISSIONS,
    ALL_EPOCHS,
    HISTORY_POLICIES,
    MEMBERS_SINCE_JOIN,
    ChannelState,
    Commit,
    SignedCommit,
    sign_commit,
    verify_commit,
)
from parley.crypto.group_epoch import CommittedEpoch, Epoch, commit_epoch, enter_epoch
from parley.crypto.group_errors import (
    BrokenChainError,
    ForgedCommitError,
    ForgedGroupMessageError,
    ForgedWrapError,
    InvalidInvitationError,
    InvalidRosterError,
    MismatchedWrapsError,
    RejectedCommitError,
    ReplayedGroupMessageError,
    UnauthorisedCommitError,
    UnknownEpochError,
    WrapRejectedError,
)
from parley.crypto.group_invitation import (
    Invitation,
    InvitationTicket,
    SignedTicket,
    admitter_key_hash,
    auth_code,
    guest_use_bytes,
    invitation_proof,
    invitation_verifier,
    open_invitation_package,
    package_key,
    read_invitation_proof,
    seal_invitation_package,
    sign_ticket,
    verifier_matches,
)
from parley.crypto.group_keys import EpochKeys, epoch_keys
from parley.crypto.group_message import (
    GroupMessageHeader,
    OpenedGroupMessage,
    open_group_message,
    open_group_signal,
    read_group_header,
    seal_group_message,
    seal_group_signal,
)
from parley.crypto.group_replay import ReplayGuard
from parley.crypto.group_roster import ADMIN, MEMBER, ROLES, Member, MemberDevice, Roster
from parley.crypto.group_wrap import (
    SignedWrap,
    new_epoch_secret,
    signed_wrap,
    unwrap_epoch_secret,
    verify_commit_wraps,
    verify_own_wrap,
    verify_signed_wrap,
    wrap_digest,
    wrap_epoch_secret,
    wraps_hash,
    wraps_hash_from_digests,
)

__all__ = [
    "ADMIN",
    "ADMISSIONS",
    "ALL_EPOCHS",
    "HISTORY_POLICIES",
    "MEMBER",
    "MEMBERS_SINCE_JOIN",
    "ROLES",
    "BrokenChainError",
    "ChannelState",
    "Commit",
    "CommittedEpoch",
    "Epoch",
    "EpochKeys",
    "ForgedCommitError",
    "ForgedGroupMessageError",
    "ForgedWrapError",
    "GroupMessageHeader",
    "InvalidInvitationError",
    "InvalidRosterError",
    "Invitation",
    "InvitationTicket",
    "Member",
    "MemberDevice",
    "MismatchedWrapsError",
    "OpenedGroupMessage",
    "RejectedCommitError",
    "ReplayGuard",
    "ReplayedGroupMessageError",
    "Roster",
    "SignedCommit",
    "SignedTicket",
    "SignedWrap",
    "UnauthorisedCommitError",
    "UnknownEpochError",
    "WrapRejectedError",
    "admitter_key_hash",
    "auth_code",
    "commit_epoch",
    "enter_epoch",
    "epoch_keys",
    "guest_use_bytes",
    "invitation_proof",
    "invitation_verifier",
    "new_epoch_secret",
    "open_group_message",
    "open_group_signal",
    "open_invitation_package",
    "package_key",
    "read_group_header",
    "read_invitation_proof",
    "seal_group_message",
    "seal_group_signal",
    "seal_invitation_package",
    "sign_commit",
    "sign_ticket",
    "signed_wrap",
    "unwrap_epoch_secret",
    "verifier_matches",
    "verify_commit",
    "verify_commit_wraps",
    "verify_own_wrap",
    "verify_signed_wrap",
    "wrap_digest",
    "wrap_epoch_secret",
    "wraps_hash",
    "wraps_hash_from_digests",
]
