"""Device certificates, device lists, prekey signatures, login challenges and device ids.

Shared by the client (which signs) and the identity service (which verifies),
so both build exactly the same bytes.
"""

from __future__ import annotations

import nacl.bindings
import nacl.exceptions
import nacl.hash
import nacl.signing
from nacl.encoding import RawEncoder

from parley.crypto.encoding import labelled

KEY_BYTES = 32
SIGNATURE_BYTES = 64
_X25519_PROBE_SCALAR = bytes([9] * 32)


def device_id_for(device_signing_key: bytes) -> str:
    """ "d" + 32 hex digits of BLAKE2b-128 of the device's Ed25519 public key."""
    return "d" + nacl.hash.blake2b(device_signing_key, digest_size=16, encoder=RawEncoder).hex()


def device_certificate_bytes(user_signing_key: bytes, device_signing_key: bytes, device_dh_key: bytes) -> bytes:
    """What a user key signs to vouch for one device's keys."""
    return labelled("device-certificate", user_signing_key, device_signing_key, device_dh_key)


def login_challenge_bytes(challenge_id: str, nonce: bytes, user_id: str, device_id: str) -> bytes:
    """What a device signs to log in."""
    return labelled("login-challenge", challenge_id.encode(), nonce, user_id.encode(), device_id.encode())


def device_list_bytes(serialized_list: bytes) -> bytes:
    """What a user key signs to say which devices are theirs (a serialized DeviceListContent)."""
    return labelled("device-list", serialized_list)


def signed_prekey_bytes(key_id: int, public_key: bytes) -> bytes:
    """What a device key signs to vouch for one of its X25519 prekeys."""
    return labelled("signed-prekey", key_id.to_bytes(4, "big"), public_key)


def kem_prekey_bytes(kem: str, key_id: int, public_key: bytes) -> bytes:
    """What a device key signs to vouch for one of its KEM prekeys (the KEM named)."""
    return labelled("kem-prekey", kem.encode(), key_id.to_bytes(4, "big"), public_key)


def verify_signature(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """Ed25519 verification; False for any malformed key or signature."""
    if len(signature) != SIGNATURE_BYTES or not is_valid_signing_key(public_key):
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(message, signature)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, nacl.exceptions.TypeError):
        return False
    return True


def is_valid_signing_key(key: bytes) -> bool:
    """A 32-byte Ed25519 point that is on the curve and not of small order."""
    return len(key) == KEY_BYTES and bool(nacl.bindings.crypto_core_ed25519_is_valid_point(key))


def is_valid_dh_key(key: bytes) -> bool:
    """A 32-byte X25519 key that is not a low-order point."""
    if len(key) != KEY_BYTES:
        return False
    try:
        nacl.bindings.crypto_scalarmult(_X25519_PROBE_SCALAR, key)
    except (nacl.exceptions.RuntimeError, nacl.exceptions.CryptoError, RuntimeError):
        return False
    return True
