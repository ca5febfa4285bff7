"""The Double Ratchet (Signal's spec) over HKDF-SHA256, HMAC-SHA256 and XChaCha20-Poly1305.

KDF_RK is HKDF with the root key as salt; KDF_CK is HMAC-SHA256 of 0x01
(message key) and 0x02 (next chain key). Each message is sealed with AD =
X3DH associated data || header || sender and recipient device ids.
Decryption works on a copy of the state and commits it only after the AEAD
check, so a forged, replayed or corrupt message changes nothing. Keys of
skipped messages are bounded (per step, in total, and in age).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from parley.crypto.encoding import b64, labelled, read_labelled, read_u32, u32, unb64
from parley.crypto.errors import (
    CryptoError,
    DuplicateMessageError,
    MalformedInputError,
    TooManySkippedMessagesError,
)
from parley.crypto.primitives import (
    HASH_BYTES,
    Rng,
    X25519KeyPair,
    hkdf_sha256,
    hmac_sha256,
    open_sealed,
    seal,
    system_rng,
    x25519,
)

ROOT_INFO = b"parley/v1/ratchet root"
_STATE_VERSION = 1


@dataclass(frozen=True)
class RatchetConfig:
    """Protocol constants; `root_info` is KDF_RK's info label (libsignal's tests use their own)."""

    root_info: bytes = ROOT_INFO
    max_skip: int = 1000
    max_skipped_keys: int = 2000
    skipped_key_lifetime: float = 30 * 86_400.0


def kdf_rk(root_key: bytes, dh_output: bytes, info: bytes) -> tuple[bytes, bytes]:
    """(next root key, chain key) = HKDF(salt=root key, ikm=DH output, info), 64 bytes split in two."""
    output = hkdf_sha256(dh_output, salt=root_key, info=info, length=2 * HASH_BYTES)
    return output[:HASH_BYTES], output[HASH_BYTES:]


def kdf_ck(chain_key: bytes) -> tuple[bytes, bytes]:
    """(next chain key, message key): HMAC-SHA256(chain key, 0x02) and (…, 0x01)."""
    return hmac_sha256(chain_key, b"\x02"), hmac_sha256(chain_key, b"\x01")


@dataclass(frozen=True)
class MessageHeader:
    ratchet_key: bytes
    previous_chain_length: int
    message_number: int

    def to_bytes(self) -> bytes:
        return labelled("ratchet-header", self.ratchet_key, u32(self.previous_chain_length), u32(self.message_number))

    @classmethod
    def from_bytes(cls, data: bytes) -> MessageHeader:
        key, previous, number = read_labelled("ratchet-header", data, 3)
        return cls(key, read_u32(previous), read_u32(number))


@dataclass(frozen=True)
class RatchetMessage:
    """What travels: the header in the clear, and `nonce || ciphertext || tag`."""

    header: MessageHeader
    sealed: bytes

    def to_bytes(self) -> bytes:
        return labelled("ratchet-message", self.header.to_bytes(), self.sealed)

    @classmethod
    def from_bytes(cls, data: bytes) -> RatchetMessage:
        header, sealed = read_labelled("ratchet-message", data, 2)
        return cls(MessageHeader.from_bytes(header), sealed)


@dataclass(frozen=True)
class SkippedKey:
    message_key: bytes = field(repr=False)
    stored_at: float


@dataclass
class RatchetState:
    """Everything one side of a session keeps between messages (serialisable with `to_dict`)."""

    root_key: bytes = field(repr=False)
    own_ratchet_key: X25519KeyPair
    peer_ratchet_key: bytes | None
    sending_chain_key: bytes | None = field(repr=False)
    receiving_chain_key: bytes | None = field(repr=False)
    associated_data: bytes
    local_device_id: str
    remote_device_id: str
    sent_count: int = 0
    received_count: int = 0
    previous_sent_count: int = 0
    # Insertion-ordered, so the oldest key is evicted first.
    skipped: dict[tuple[bytes, int], SkippedKey] = field(default_factory=dict)

    def copy(self) -> RatchetState:
        """An independent copy (every other field is immutable)."""
        return dataclasses.replace(self, skipped=dict(self.skipped))

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "root_key": b64(self.root_key),
            "own_ratchet_private_key": b64(self.own_ratchet_key.private_key),
            "peer_ratchet_key": _b64_or_none(self.peer_ratchet_key),
            "sending_chain_key": _b64_or_none(self.sending_chain_key),
            "receiving_chain_key": _b64_or_none(self.receiving_chain_key),
            "associated_data": b64(self.associated_data),
            "local_device_id": self.local_device_id,
            "remote_device_id": self.remote_device_id,
            "sent_count": self.sent_count,
            "received_count": self.received_count,
            "previous_sent_count": self.previous_sent_count,
            "skipped": [
                [b64(key), number, b64(skipped.message_key), skipped.stored_at]
                for (key, number), skipped in self.skipped.items()
            ],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RatchetState:
        if data.get("version") != _STATE_VERSION:
            raise MalformedInputError(f"ratchet state version {data.get('version')!r} is not {_STATE_VERSION}")
        try:
            return cls(
                root_key=unb64(data["root_key"]),
                own_ratchet_key=X25519KeyPair.from_private_key(unb64(data["own_ratchet_private_key"])),
                peer_ratchet_key=_unb64_or_none(data["peer_ratchet_key"]),
                sending_chain_key=_unb64_or_none(data["sending_chain_key"]),
                receiving_chain_key=_unb64_or_none(data["receiving_chain_key"]),
                associated_data=unb64(data["associated_data"]),
                local_device_id=str(data["local_device_id"]),
                remote_device_id=str(data["remote_device_id"]),
                sent_count=int(data["sent_count"]),
                received_count=int(data["received_count"]),
                previous_sent_count=int(data["previous_sent_count"]),
                skipped={
                    (unb64(key), int(number)): SkippedKey(unb64(message_key), float(stored_at))
                    for key, number, message_key, stored_at in data["skipped"]
                },
            )
        except (KeyError, TypeError, ValueError) as error:
            raise MalformedInputError(f"not a ratchet state: {error}") from error


class DoubleRatchet:
    """One side of a session with one peer device."""

    def __init__(self, state: RatchetState, *, config: RatchetConfig | None = None, rng: Rng = system_rng) -> None:
        self._state = state
        self._config = config or RatchetConfig()
        self._rng = rng

    @classmethod
    def initiator(
        cls,
        shared_secret: bytes,
        peer_ratchet_key: bytes,
        associated_data: bytes,
        *,
        local_device_id: str,
        remote_device_id: str,
        config: RatchetConfig | None = None,
        rng: Rng = system_rng,
    ) -> DoubleRatchet:
        """The side that ran X3DH as initiator; it may send at once."""
        config = config or RatchetConfig()
        own = X25519KeyPair.generate(rng)
        root_key, sending = kdf_rk(shared_secret, x25519(own.private_key, peer_ratchet_key), config.root_info)
        state = RatchetState(
            root_key=root_key,
            own_ratchet_key=own,
            peer_ratchet_key=peer_ratchet_key,
            sending_chain_key=sending,
            receiving_chain_key=None,
            associated_data=associated_data,
            local_device_id=local_device_id,
            remote_device_id=remote_device_id,
        )
        return cls(state, config=config, rng=rng)

    @classmethod
    def responder(
        cls,
        shared_secret: bytes,
        own_ratchet_key: X25519KeyPair,
        associated_data: bytes,
        *,
        local_device_id: str,
        remote_device_id: str,
        config: RatchetConfig | None = None,
        rng: Rng = system_rng,
    ) -> DoubleRatchet:
        """The X3DH responder, whose signed prekey is its first ratchet key; it sends after its first receipt."""
        state = RatchetState(
            root_key=shared_secret,
            own_ratchet_key=own_ratchet_key,
            peer_ratchet_key=None,
            sending_chain_key=None,
            receiving_chain_key=None,
            associated_data=associated_data,
            local_device_id=local_device_id,
            remote_device_id=remote_device_id,
        )
        return cls(state, config=config, rng=rng)

    @property
    def can_send(self) -> bool:
        return self._state.sending_chain_key is not None

    @property
    def skipped_keys(self) -> int:
        """How many keys of messages that have not arrived (yet) are held."""
        return len(self._state.skipped)

    def copy(self) -> DoubleRatchet:
        """An independent session object with the same state (to try a decrypt on)."""
        return DoubleRatchet(self._state.copy(), config=self._config, rng=self._rng)

    def snapshot(self) -> RatchetState:
        """A copy of the state, e.g. to store it."""
        return self._state.copy()

    def to_bytes(self) -> bytes:
        """The state as JSON bytes; it holds private keys, so whoever stores it must protect it."""
        return json.dumps(self._state.to_dict(), sort_keys=True).encode()

    @classmethod
    def from_bytes(cls, data: bytes, *, config: RatchetConfig | None = None, rng: Rng = system_rng) -> DoubleRatchet:
        try:
            document = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise MalformedInputError("ratchet state is not JSON") from error
        if not isinstance(document, dict):
            raise MalformedInputError("ratchet state is not a JSON object")
        return cls(RatchetState.from_dict(document), config=config, rng=rng)

    def encrypt(self, plaintext: bytes) -> bytes:
        """The wire bytes of `plaintext` as the next message of the sending chain."""
        state = self._state
        if state.sending_chain_key is None:
            raise CryptoError("this side cannot send until the peer's first message arrives")
        state.sending_chain_key, message_key = kdf_ck(state.sending_chain_key)
        header = MessageHeader(state.own_ratchet_key.public_key, state.previous_sent_count, state.sent_count)
        state.sent_count += 1
        ad = _message_ad(state.associated_data, header, state.local_device_id, state.remote_device_id)
        return RatchetMessage(header, seal(message_key, plaintext, ad, self._rng)).to_bytes()

    def decrypt(self, data: bytes, *, now: float) -> bytes:
        """The plaintext; on any error (`DecryptionError`, `DuplicateMessageError`, …) the state is unchanged,
        except that skipped-message keys older than their lifetime at `now` are forgotten either way."""
        message = RatchetMessage.from_bytes(data)
        self.forget_expired(now)
        trial = self._state.copy()
        plaintext = self._decrypt(trial, message, now)
        self._state = trial
        return plaintext

    def _decrypt(self, state: RatchetState, message: RatchetMessage, now: float) -> bytes:
        header = message.header
        ad = _message_ad(state.associated_data, header, state.remote_device_id, state.local_device_id)
        skipped = state.skipped.pop((header.ratchet_key, header.message_number), None)
        if skipped is not None:
            return open_sealed(skipped.message_key, message.sealed, ad)
        if header.ratchet_key == state.peer_ratchet_key and header.message_number < state.received_count:
            raise DuplicateMessageError("this message was already received (or its key expired)")
        if header.ratchet_key != state.peer_ratchet_key:
            self._skip(state, header.previous_chain_length, now)
            self._dh_ratchet(state, header.ratchet_key)
        self._skip(state, header.message_number, now)
        assert state.receiving_chain_key is not None  # set by the DH ratchet step at the latest
        state.receiving_chain_key, message_key = kdf_ck(state.receiving_chain_key)
        state.received_count += 1
        return open_sealed(message_key, message.sealed, ad)

    def _skip(self, state: RatchetState, until: int, now: float) -> None:
        if state.receiving_chain_key is None or state.peer_ratchet_key is None:
            return
        if until - state.received_count > self._config.max_skip:
            raise TooManySkippedMessagesError(
                f"{until - state.received_count} skipped messages in one chain (at most {self._config.max_skip})"
            )
        while state.received_count < until:
            state.receiving_chain_key, message_key = kdf_ck(state.receiving_chain_key)
            state.skipped[(state.peer_ratchet_key, state.received_count)] = SkippedKey(message_key, now)
            state.received_count += 1
        while len(state.skipped) > self._config.max_skipped_keys:
            del state.skipped[next(iter(state.skipped))]

    def _dh_ratchet(self, state: RatchetState, peer_ratchet_key: bytes) -> None:
        info = self._config.root_info
        state.previous_sent_count = state.sent_count
        state.sent_count = 0
        state.received_count = 0
        state.peer_ratchet_key = peer_ratchet_key
        shared = x25519(state.own_ratchet_key.private_key, peer_ratchet_key)
        state.root_key, state.receiving_chain_key = kdf_rk(state.root_key, shared, info)
        state.own_ratchet_key = X25519KeyPair.generate(self._rng)
        shared = x25519(state.own_ratchet_key.private_key, peer_ratchet_key)
        state.root_key, state.sending_chain_key = kdf_rk(state.root_key, shared, info)

    def forget_expired(self, now: float) -> None:
        """Drop the keys of skipped messages stored longer than the configured lifetime before `now`."""
        skipped = self._state.skipped
        oldest_kept = now - self._config.skipped_key_lifetime
        for slot in [slot for slot, key in skipped.items() if key.stored_at < oldest_kept]:
            del skipped[slot]


def _message_ad(x3dh_ad: bytes, header: MessageHeader, sender_device_id: str, recipient_device_id: str) -> bytes:
    return labelled(
        "ratchet-message-ad", x3dh_ad, header.to_bytes(), sender_device_id.encode(), recipient_device_id.encode()
    )


def _b64_or_none(data: bytes | None) -> str | None:
    return None if data is None else b64(data)


def _unb64_or_none(text: str | None) -> bytes | None:
    return None if text is None else unb64(text)
