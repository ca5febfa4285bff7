"""Why a group-channel operation refused: one exception class per reason, under `parley.crypto.errors`."""

from __future__ import annotations

from parley.crypto.errors import (
    CryptoError,
    DecryptionError,
    DuplicateMessageError,
    InvalidSignatureError,
    MalformedInputError,
)


class RejectedCommitError(CryptoError):
    """A commit that does not extend the channel's chain; the caller's channel state stays as it was."""


class ForgedCommitError(RejectedCommitError, InvalidSignatureError):
    """A commit whose signature does not verify under the committer's listed device key."""


class BrokenChainError(RejectedCommitError):
    """A commit for another channel, or one that does not follow the previous commit (epoch, previous hash)."""


class UnauthorisedCommitError(RejectedCommitError):
    """A signed commit whose committer may not make this change under its admission rule."""


class InvalidRosterError(RejectedCommitError):
    """A roster that cannot be committed: duplicate ids, an unknown role, or a device its user did not certify."""


class MismatchedWrapsError(RejectedCommitError):
    """The wraps delivered with a commit are not the ones it signed, or leave out a device of its roster."""


class WrapRejectedError(DecryptionError):
    """A wrapped epoch secret that does not open for this device under this channel, epoch and commit."""


class ForgedWrapError(InvalidSignatureError):
    """A wrap sent after its commit whose signer is not a device of the roster, or whose signature fails."""


class UnknownEpochError(DecryptionError):
    """A group message for a channel or epoch whose keys this device does not hold."""


class ForgedGroupMessageError(InvalidSignatureError):
    """A group message whose sender is not a device of its epoch's roster, or whose signature fails."""


class ReplayedGroupMessageError(DuplicateMessageError):
    """A (sender device, epoch, counter) already accepted, or too old to tell."""


class InvalidInvitationError(MalformedInputError):
    """An invitation code or auth code that does not parse."""
