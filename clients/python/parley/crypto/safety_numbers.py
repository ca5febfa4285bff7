"""Safety numbers for comparing user keys out of band, and first-use pinning of those keys.

A safety number is 60 digits in twelve groups of five, like Signal's: thirty
from each user's fingerprint, the smaller half first, so both users see the
same number. A fingerprint is BLAKE2b-256 over the user id and user signing
key, iterated (as Signal iterates SHA-512) to make a matching forgery costly.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol

from parley.crypto.encoding import labelled
from parley.crypto.errors import KeyChangedError
from parley.crypto.primitives import blake2b_256, constant_time_equal

FINGERPRINT_ITERATIONS = 5200
_CHUNKS = 6
_CHUNK_BYTES = 5
_DIGITS_PER_CHUNK = 5


@dataclass(frozen=True)
class SafetyNumber:
    digits: str

    def groups(self) -> list[str]:
        return [self.digits[i : i + _DIGITS_PER_CHUNK] for i in range(0, len(self.digits), _DIGITS_PER_CHUNK)]

    def __str__(self) -> str:
        return " ".join(self.groups())


def fingerprint_digits(user_id: str, user_signing_key: bytes) -> str:
    """Thirty digits that stand for one user's key."""
    digest = blake2b_256(labelled("safety-number", user_id.encode(), user_signing_key))
    for _ in range(FINGERPRINT_ITERATIONS):
        digest = blake2b_256(digest + user_signing_key)
    chunks = (digest[i * _CHUNK_BYTES : (i + 1) * _CHUNK_BYTES] for i in range(_CHUNKS))
    return "".join(f"{int.from_bytes(chunk, 'big') % 10**_DIGITS_PER_CHUNK:05d}" for chunk in chunks)


def safety_number(
    user_id: str, user_signing_key: bytes, peer_user_id: str, peer_user_signing_key: bytes
) -> SafetyNumber:
    """The number both users see for their pair, whichever of them computes it."""
    halves = sorted(
        [fingerprint_digits(user_id, user_signing_key), fingerprint_digits(peer_user_id, peer_user_signing_key)]
    )
    return SafetyNumber("".join(halves))


class PinnedKeys(Protocol):
    """Where pinned user keys live (the local key store)."""

    def pinned_user_key(self, user_id: str) -> bytes | None: ...

    def pin_user_key(self, user_id: str, user_signing_key: bytes) -> None: ...


class PinCheck(enum.Enum):
    FIRST_USE = "first-use"
    MATCHES = "matches"


class KeyPinning:
    """Trust on first use: the first key seen for a user is pinned; a different one blocks until accepted."""

    def __init__(self, store: PinnedKeys) -> None:
        self._store = store

    def verify(self, user_id: str, user_signing_key: bytes) -> PinCheck:
        """FIRST_USE (now pinned) or MATCHES; `KeyChangedError` when the key differs from the pinned one."""
        pinned = self._store.pinned_user_key(user_id)
        if pinned is None:
            self._store.pin_user_key(user_id, user_signing_key)
            return PinCheck.FIRST_USE
        if not constant_time_equal(pinned, user_signing_key):
            raise KeyChangedError(user_id, pinned, user_signing_key)
        return PinCheck.MATCHES

    def accept(self, user_id: str, user_signing_key: bytes) -> None:
        """The user compared safety numbers and trusts this key from now on."""
        self._store.pin_user_key(user_id, user_signing_key)
