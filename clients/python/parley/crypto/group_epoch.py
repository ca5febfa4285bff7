"""Moving a channel to a new epoch, from either end: the committer's and a receiving device's.

The committer draws a fresh epoch secret, wraps it for every device of the
new roster (bound to the commit's content hash), signs the commit over the
wraps' hash, and checks its own commit the way every receiver will. A
receiver verifies the commit against its previous state, checks the wraps
are the signed ones, unwraps its own and derives the epoch's keys.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

import nacl.signing

from parley.crypto.group_commit import ChannelState, Commit, SignedCommit, sign_commit, verify_commit
from parley.crypto.group_errors import MismatchedWrapsError
from parley.crypto.group_keys import EpochKeys, epoch_keys
from parley.crypto.group_roster import Roster
from parley.crypto.group_wrap import (
    new_epoch_secret,
    unwrap_epoch_secret,
    verify_commit_wraps,
    wrap_epoch_secret,
    wraps_hash,
)
from parley.crypto.primitives import Rng, system_rng


@dataclass(frozen=True)
class Epoch:
    """One epoch as a member device holds it: the verified state, its secret and its keys."""

    state: ChannelState
    secret: bytes = field(repr=False)
    keys: EpochKeys


@dataclass(frozen=True)
class CommittedEpoch:
    """What a committer sends (the signed commit and a wrap per device) and keeps (the new epoch)."""

    signed: SignedCommit
    wraps: Mapping[str, bytes]
    epoch: Epoch


def commit_epoch(
    previous: ChannelState | None,
    roster: Roster,
    *,
    channel_id: str,
    committer_device_id: str,
    signing_key: nacl.signing.SigningKey,
    admission: str,
    history_policy: str,
    proof: bytes = b"",
    rng: Rng = system_rng,
) -> CommittedEpoch:
    """The commit that moves `previous` (None: a new channel) to the next epoch with `roster`.

    It is verified as a receiver would, so a commit the rules refuse raises here (`RejectedCommitError`).
    """
    unsigned = Commit(
        channel_id=channel_id,
        epoch=0 if previous is None else previous.epoch + 1,
        previous_hash=b"" if previous is None else previous.commit_hash,
        roster=roster,
        history_policy=history_policy,
        committer_device_id=committer_device_id,
        admission=admission,
        proof=proof,
        wraps_hash=b"",
    )
    secret = new_epoch_secret(rng)
    content_hash = unsigned.content_hash()
    wraps = {
        device.device_id: wrap_epoch_secret(secret, device, channel_id, unsigned.epoch, content_hash, rng)
        for device in roster.devices()
    }
    signed = sign_commit(replace(unsigned, wraps_hash=wraps_hash(wraps)), signing_key)
    state = verify_commit(previous, signed)
    return CommittedEpoch(
        signed, wraps, Epoch(state, secret, epoch_keys(secret, channel_id, state.epoch, state.commit_hash))
    )


def enter_epoch(
    previous: ChannelState | None,
    signed: SignedCommit,
    wraps: Mapping[str, bytes],
    own_device_id: str,
    own_dh_private: bytes,
) -> Epoch:
    """The epoch `signed` starts, for this device; raises `RejectedCommitError` (including
    `MismatchedWrapsError` when this device has no signed wrap) or `WrapRejectedError`."""
    state = verify_commit(previous, signed)
    verify_commit_wraps(signed.commit(), wraps)
    wrap = wraps.get(own_device_id)
    if wrap is None:
        raise MismatchedWrapsError(f"device {own_device_id!r} is not in the roster of epoch {state.epoch}")
    secret = unwrap_epoch_secret(wrap, own_device_id, own_dh_private, state.channel_id, state.epoch, state.content_hash)
    return Epoch(state, secret, epoch_keys(secret, state.channel_id, state.epoch, state.commit_hash))
