"""Epoch secrets sealed to one device each ("wraps"), and how a device knows a wrap is genuine.

A wrap is ephemeral-static X25519: key = HKDF(shared, salt = ephemeral public
|| recipient X25519 key, info "parley/v1/group-wrap"), sealed with
XChaCha20-Poly1305 and AD = labelled(channel id, epoch, commit content hash,
recipient device id). Anyone can make a wrap for a public key, so a wrap is
trusted only when a member vouches for it: the wraps made with a commit are
covered by the commit's signature (`Commit.wraps_hash`), and a wrap sent
later — the current epoch for a member's new device — is signed by a device
of the roster (`SignedWrap`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace

import nacl.signing

from parley.crypto import identity
from parley.crypto.encoding import labelled, read_labelled
from parley.crypto.errors import DecryptionError, InvalidKeyError
from parley.crypto.group_commit import ChannelState, Commit
from parley.crypto.group_encoding import read_text, read_u64, text, u64
from parley.crypto.group_errors import ForgedWrapError, MismatchedWrapsError, WrapRejectedError
from parley.crypto.group_roster import MemberDevice
from parley.crypto.primitives import (
    HASH_BYTES,
    Rng,
    X25519KeyPair,
    blake2b_256,
    constant_time_equal,
    hkdf_sha256,
    open_sealed,
    seal,
    system_rng,
    x25519,
)

EPOCH_SECRET_BYTES = 32
_WRAP_INFO = b"parley/v1/group-wrap"


def new_epoch_secret(rng: Rng = system_rng) -> bytes:
    """A fresh random 32-byte epoch secret (every commit starts an epoch with one)."""
    return rng(EPOCH_SECRET_BYTES)


def wrap_epoch_secret(
    secret: bytes,
    recipient: MemberDevice,
    channel_id: str,
    epoch: int,
    content_hash: bytes,
    rng: Rng = system_rng,
) -> bytes:
    """`secret` sealed to `recipient`'s X25519 key, bound to the channel, epoch, commit and device."""
    if len(secret) != EPOCH_SECRET_BYTES:
        raise ValueError(f"an epoch secret is {EPOCH_SECRET_BYTES} bytes")
    ephemeral = X25519KeyPair.generate(rng)
    key = _wrap_key(x25519(ephemeral.private_key, recipient.dh_key), ephemeral.public_key, recipient.dh_key)
    ad = _wrap_ad(channel_id, epoch, content_hash, recipient.device_id)
    return labelled("group-wrap", ephemeral.public_key, seal(key, secret, ad, rng))


def unwrap_epoch_secret(
    wrap: bytes,
    own_device_id: str,
    own_dh_private: bytes,
    channel_id: str,
    epoch: int,
    content_hash: bytes,
) -> bytes:
    """The epoch secret, or `WrapRejectedError` when the wrap is not for this device, channel, epoch and commit."""
    ephemeral_public, sealed = read_labelled("group-wrap", wrap, 2)
    own_public = X25519KeyPair.from_private_key(own_dh_private).public_key
    try:
        key = _wrap_key(x25519(own_dh_private, ephemeral_public), ephemeral_public, own_public)
        secret = open_sealed(key, sealed, _wrap_ad(channel_id, epoch, content_hash, own_device_id))
    except (InvalidKeyError, DecryptionError) as error:
        raise WrapRejectedError(f"wrap does not open for device {own_device_id!r} in epoch {epoch}") from error
    if len(secret) != EPOCH_SECRET_BYTES:
        raise WrapRejectedError(f"a wrapped epoch secret is {EPOCH_SECRET_BYTES} bytes")
    return secret


def wrap_digest(wrap: bytes) -> bytes:
    return blake2b_256(wrap)


def wraps_hash(wraps: Mapping[str, bytes]) -> bytes:
    """What a commit signs of its wraps: the hash of (device id, wrap digest) sorted by device id."""
    return wraps_hash_from_digests({device_id: wrap_digest(wrap) for device_id, wrap in wraps.items()})


def wraps_hash_from_digests(digests: Mapping[str, bytes]) -> bytes:
    """`wraps_hash` from the wraps' digests, so a device can check its own wrap without the others."""
    fields = [field for device_id in sorted(digests) for field in (text(device_id), digests[device_id])]
    return blake2b_256(labelled("group-wraps", *fields))


def verify_commit_wraps(commit: Commit, wraps: Mapping[str, bytes]) -> None:
    """`MismatchedWrapsError` unless `wraps` are exactly the signed ones: one per device of the new roster."""
    verify_wrap_digests(commit, {device_id: wrap_digest(wrap) for device_id, wrap in wraps.items()})


def verify_own_wrap(commit: Commit, own_device_id: str, wrap: bytes, digests: Mapping[str, bytes]) -> None:
    """`MismatchedWrapsError` unless `wrap` is the one `commit` signed for this device, given every wrap's digest."""
    if not constant_time_equal(digests.get(own_device_id, b""), wrap_digest(wrap)):
        raise MismatchedWrapsError(f"the wrap for {own_device_id!r} is not the one the commit lists")
    verify_wrap_digests(commit, digests)


def verify_wrap_digests(commit: Commit, digests: Mapping[str, bytes]) -> None:
    if set(digests) != commit.roster.device_ids():
        raise MismatchedWrapsError("a commit wraps its epoch secret for every device of its roster, and no other")
    if not constant_time_equal(wraps_hash_from_digests(digests), commit.wraps_hash):
        raise MismatchedWrapsError("the wraps are not the ones the commit signed")


@dataclass(frozen=True)
class SignedWrap:
    """A wrap sent after its epoch's commit, signed by a device of the roster."""

    channel_id: str
    epoch: int
    commit_hash: bytes
    recipient_device_id: str
    wrap: bytes
    signer_device_id: str
    signature: bytes

    def signed_bytes(self) -> bytes:
        return labelled(
            "group-signed-wrap",
            text(self.channel_id),
            u64(self.epoch),
            self.commit_hash,
            text(self.recipient_device_id),
            self.wrap,
            text(self.signer_device_id),
        )

    def to_bytes(self) -> bytes:
        return labelled("group-signed-wrap-message", self.signed_bytes(), self.signature)

    @classmethod
    def from_bytes(cls, data: bytes) -> SignedWrap:
        signed, signature = read_labelled("group-signed-wrap-message", data, 2)
        channel, epoch, commit_hash, recipient, wrap, signer = read_labelled("group-signed-wrap", signed, 6)
        return cls(
            read_text(channel), read_u64(epoch), commit_hash, read_text(recipient), wrap, read_text(signer), signature
        )


def signed_wrap(
    epoch_state: ChannelState,
    recipient_device_id: str,
    wrap: bytes,
    signer_device_id: str,
    signing_key: nacl.signing.SigningKey,
) -> SignedWrap:
    """`wrap` (of `epoch_state`'s secret) for `recipient_device_id`, signed by this device."""
    unsigned = SignedWrap(
        epoch_state.channel_id,
        epoch_state.epoch,
        epoch_state.commit_hash,
        recipient_device_id,
        wrap,
        signer_device_id,
        b"",
    )
    return replace(unsigned, signature=signing_key.sign(unsigned.signed_bytes()).signature)


def verify_signed_wrap(current: ChannelState, signed: SignedWrap, epoch_state: ChannelState | None = None) -> bytes:
    """The wrap, once a device of `current`'s roster is shown to have signed it for a device of that roster.

    `epoch_state` is the epoch whose secret is wrapped (default: `current`; an older one for history).
    Raises `ForgedWrapError`.
    """
    wrapped = epoch_state or current
    if wrapped.channel_id != current.channel_id or wrapped.epoch > current.epoch:
        raise ValueError("epoch_state is an epoch of the current channel, no later than the current one")
    if (signed.channel_id, signed.epoch) != (current.channel_id, wrapped.epoch):
        raise ForgedWrapError(
            f"wrap is for channel {signed.channel_id!r} epoch {signed.epoch}, "
            f"not {current.channel_id!r} epoch {wrapped.epoch}"
        )
    if not constant_time_equal(signed.commit_hash, wrapped.commit_hash):
        raise ForgedWrapError(f"wrap names another commit than epoch {wrapped.epoch}'s")
    signer = current.roster.device(signed.signer_device_id)
    if signer is None:
        raise ForgedWrapError(f"wrap signed by {signed.signer_device_id!r}, not a device of the roster")
    if current.roster.device(signed.recipient_device_id) is None:
        raise ForgedWrapError(f"wrap for {signed.recipient_device_id!r}, not a device of the roster")
    if not identity.verify_signature(signer.signing_key, signed.signed_bytes(), signed.signature):
        raise ForgedWrapError(f"wrap signature does not verify under device {signed.signer_device_id!r}")
    return signed.wrap


def _wrap_key(shared: bytes, ephemeral_public: bytes, recipient_dh_key: bytes) -> bytes:
    return hkdf_sha256(shared, salt=ephemeral_public + recipient_dh_key, info=_WRAP_INFO, length=HASH_BYTES)


def _wrap_ad(channel_id: str, epoch: int, content_hash: bytes, device_id: str) -> bytes:
    return labelled("group-wrap-ad", text(channel_id), u64(epoch), content_hash, text(device_id))
