"""Group messages and signals: sealed once for the whole channel, signed by the sending device.

A message is labelled("group-message", header, ciphertext, signature) where
the header (in the clear) names the channel, epoch, sender device, message
id, content type and the sender's counter; the ciphertext is the plaintext
sealed with the epoch's app key and the header as associated data; and the
sender's device key signs labelled("group-message-signature", header,
ciphertext), because the shared key proves membership, not authorship.
A receiver opens it only if it holds the epoch, the sender is a device of
that epoch's roster, the signature and the AEAD verify, and the replay
guard has not seen (sender, epoch, counter). Signals (typing, presence) are
built the same way under "group-signal" labels and the epoch's signal key.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import nacl.signing

from parley.crypto import identity
from parley.crypto.encoding import labelled, read_labelled
from parley.crypto.group_commit import ChannelState
from parley.crypto.group_encoding import read_text, read_u64, text, u64
from parley.crypto.group_errors import ForgedGroupMessageError, UnknownEpochError
from parley.crypto.group_keys import EpochKeys
from parley.crypto.group_replay import ReplayGuard
from parley.crypto.group_roster import MemberDevice
from parley.crypto.primitives import Rng, open_sealed, seal, system_rng

GroupKind = Literal["message", "signal"]
MESSAGE: GroupKind = "message"
SIGNAL: GroupKind = "signal"
EpochsHeld = Mapping[int, tuple[ChannelState, EpochKeys]]
"""The epochs of one channel a device holds keys for, by epoch number."""


@dataclass(frozen=True)
class GroupMessageHeader:
    channel_id: str
    epoch: int
    sender_device_id: str
    message_id: str
    content_type: str
    counter: int

    def to_bytes(self, kind: GroupKind = MESSAGE) -> bytes:
        return labelled(
            f"group-{kind}-header",
            text(self.channel_id),
            u64(self.epoch),
            text(self.sender_device_id),
            text(self.message_id),
            text(self.content_type),
            u64(self.counter),
        )

    @classmethod
    def from_bytes(cls, data: bytes, kind: GroupKind = MESSAGE) -> GroupMessageHeader:
        channel, epoch, sender, message_id, content_type, counter = read_labelled(f"group-{kind}-header", data, 6)
        return cls(
            read_text(channel),
            read_u64(epoch),
            read_text(sender),
            read_text(message_id),
            read_text(content_type),
            read_u64(counter),
        )


@dataclass(frozen=True)
class OpenedGroupMessage:
    sender_device_id: str
    sender_user_id: str
    epoch: int
    message_id: str
    content_type: str
    counter: int
    plaintext: bytes


def seal_group_message(
    keys: EpochKeys,
    channel_id: str,
    epoch: int,
    sender: MemberDevice,
    signing_key: nacl.signing.SigningKey,
    *,
    message_id: str,
    content_type: str,
    counter: int,
    plaintext: bytes,
    rng: Rng = system_rng,
) -> bytes:
    """The wire bytes of one message to the channel; `counter` goes up by one per message of this device and epoch."""
    header = GroupMessageHeader(channel_id, epoch, sender.device_id, message_id, content_type, counter)
    return _seal(MESSAGE, keys.app_key, header, sender, signing_key, plaintext, rng)


def seal_group_signal(
    keys: EpochKeys,
    channel_id: str,
    epoch: int,
    sender: MemberDevice,
    signing_key: nacl.signing.SigningKey,
    *,
    message_id: str,
    content_type: str,
    counter: int,
    plaintext: bytes,
    rng: Rng = system_rng,
) -> bytes:
    """As `seal_group_message`, for an ephemeral signal under the epoch's signal key (its own counter)."""
    header = GroupMessageHeader(channel_id, epoch, sender.device_id, message_id, content_type, counter)
    return _seal(SIGNAL, keys.signal_key, header, sender, signing_key, plaintext, rng)


def open_group_message(epochs: EpochsHeld, data: bytes, guard: ReplayGuard) -> OpenedGroupMessage:
    """The opened message, recorded in `guard`.

    Raises `UnknownEpochError`, `ForgedGroupMessageError`, `DecryptionError`, `ReplayedGroupMessageError`
    or `MalformedInputError`; the guard changes only when the message opens.
    """
    return _open(MESSAGE, epochs, data, guard)


def open_group_signal(epochs: EpochsHeld, data: bytes, guard: ReplayGuard) -> OpenedGroupMessage:
    """As `open_group_message`, for a signal (keep a separate guard for signals)."""
    return _open(SIGNAL, epochs, data, guard)


def read_group_header(data: bytes, kind: GroupKind = MESSAGE) -> GroupMessageHeader:
    """The clear header of a message (or signal), unverified: which epoch's keys it needs."""
    header, _ciphertext, _signature = read_labelled(f"group-{kind}", data, 3)
    return GroupMessageHeader.from_bytes(header, kind)


def _seal(
    kind: GroupKind,
    key: bytes,
    header: GroupMessageHeader,
    sender: MemberDevice,
    signing_key: nacl.signing.SigningKey,
    plaintext: bytes,
    rng: Rng,
) -> bytes:
    if signing_key.verify_key.encode() != sender.signing_key:
        raise ValueError(f"the signing key is not the key of device {sender.device_id!r}")
    header_bytes = header.to_bytes(kind)
    ciphertext = seal(key, plaintext, header_bytes, rng)
    signature = signing_key.sign(labelled(f"group-{kind}-signature", header_bytes, ciphertext)).signature
    return labelled(f"group-{kind}", header_bytes, ciphertext, signature)


def _open(kind: GroupKind, epochs: EpochsHeld, data: bytes, guard: ReplayGuard) -> OpenedGroupMessage:
    header_bytes, ciphertext, signature = read_labelled(f"group-{kind}", data, 3)
    header = GroupMessageHeader.from_bytes(header_bytes, kind)
    held = epochs.get(header.epoch)
    if held is None or held[0].channel_id != header.channel_id:
        raise UnknownEpochError(f"no keys for epoch {header.epoch} of channel {header.channel_id!r}")
    state, keys = held
    sender = state.roster.device(header.sender_device_id)
    owner = state.roster.member_of(header.sender_device_id)
    if sender is None or owner is None:
        raise ForgedGroupMessageError(f"sender {header.sender_device_id!r} is not a device of epoch {header.epoch}")
    signed = labelled(f"group-{kind}-signature", header_bytes, ciphertext)
    if not identity.verify_signature(sender.signing_key, signed, signature):
        raise ForgedGroupMessageError(f"{kind} signature does not verify under device {sender.device_id!r}")
    plaintext = open_sealed(keys.signal_key if kind == SIGNAL else keys.app_key, ciphertext, header_bytes)
    guard.accept(sender.device_id, header.epoch, header.counter)
    return OpenedGroupMessage(
        sender.device_id, owner.user_id, header.epoch, header.message_id, header.content_type, header.counter, plaintext
    )
