"""The keys of one epoch, derived from its secret and bound to its channel, epoch and commit.

Each is HKDF-SHA256(secret, salt = BLAKE2b-256(labelled(channel id, epoch,
commit hash)), info "parley/v1/group-epoch <label>"): "app" seals messages,
"ephemeral" seals signals (typing, presence), and "authenticator" is a
value every member of the epoch computes alike, to compare out of band or
in a message and so detect a split view of the channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from parley.crypto.encoding import labelled
from parley.crypto.group_encoding import text, u64
from parley.crypto.primitives import HASH_BYTES, blake2b_256, hkdf_sha256


@dataclass(frozen=True)
class EpochKeys:
    app_key: bytes = field(repr=False)
    signal_key: bytes = field(repr=False)
    authenticator: bytes


def epoch_keys(secret: bytes, channel_id: str, epoch: int, commit_hash: bytes) -> EpochKeys:
    salt = blake2b_256(labelled("group-epoch-context", text(channel_id), u64(epoch), commit_hash))
    return EpochKeys(
        app_key=_derive(secret, salt, "app"),
        signal_key=_derive(secret, salt, "ephemeral"),
        authenticator=_derive(secret, salt, "authenticator"),
    )


def _derive(secret: bytes, salt: bytes, label: str) -> bytes:
    return hkdf_sha256(secret, salt=salt, info=f"parley/v1/group-epoch {label}".encode(), length=HASH_BYTES)
