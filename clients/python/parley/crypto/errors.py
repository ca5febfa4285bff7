"""Why a cryptographic operation refused: one exception class per reason."""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every refusal in `parley.crypto`."""


class MalformedInputError(CryptoError, ValueError):
    """Bytes that do not parse as the structure they claim to be, or a field of the wrong size."""


class InvalidKeyError(CryptoError, ValueError):
    """A public key that must not be used: wrong size, or a low-order X25519 point."""


class InvalidSignatureError(CryptoError):
    """A certificate or prekey signature that does not verify."""


class UnknownPrekeyError(CryptoError):
    """A message names a prekey this device does not hold (never had it, or already used it)."""


class KemUnavailableError(CryptoError):
    """The requested KEM is not available in this installation."""


class DecryptionError(CryptoError):
    """A ciphertext failed its authentication check; nothing was changed."""


class DuplicateMessageError(DecryptionError):
    """A message whose key was already used (a replay or a duplicate delivery)."""


class TooManySkippedMessagesError(DecryptionError):
    """A message claims more skipped messages than a session keeps keys for."""


class KeyChangedError(CryptoError):
    """A peer presents a user key other than the one pinned; the conversation waits until it is accepted."""

    def __init__(self, user_id: str, pinned_key: bytes, presented_key: bytes) -> None:
        super().__init__(f"the user key of {user_id!r} changed; compare safety numbers, then accept the new key")
        self.user_id = user_id
        self.pinned_key = pinned_key
        self.presented_key = presented_key


class NoSessionError(DecryptionError):
    """A message that belongs to no session this device has with its sender's device."""


class ForgedSenderError(CryptoError):
    """What a message says about its sender does not match the session it opened in (or the server's word)."""


class StaleDeviceListError(CryptoError):
    """A signed device list older than one already seen (a replayed list that could bring back a device)."""
