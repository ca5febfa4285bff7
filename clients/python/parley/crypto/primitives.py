"""The classical primitives every Parley protocol is built from (CRYPTO.md, "Building blocks").

Each is a thin wrapper over libsodium (PyNaCl) or the standard library that
fixes the choices once: HKDF-SHA256, BLAKE2b-256, XChaCha20-Poly1305 with
random nonces and associated data, X25519 refusing low-order results, and
constant-time comparison. Randomness comes from an injectable `Rng`.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass

import nacl.bindings
import nacl.exceptions
import nacl.hash
import nacl.utils
from nacl.encoding import RawEncoder

from parley.crypto.errors import DecryptionError, InvalidKeyError, MalformedInputError

Rng = Callable[[int], bytes]
"""`rng(n)` returns n random bytes; tests inject a deterministic one."""

system_rng: Rng = nacl.utils.random

HASH_BYTES = 32
X25519_KEY_BYTES = 32
AEAD_KEY_BYTES = 32
AEAD_NONCE_BYTES = 24
AEAD_TAG_BYTES = 16
_HKDF_MAX_BYTES = 255 * HASH_BYTES


# --- KDF and hashes --------------------------------------------------------------


def hmac_sha256(key: bytes, data: bytes) -> bytes:
    return hmac.new(key, data, hashlib.sha256).digest()


def hkdf_extract(salt: bytes, ikm: bytes) -> bytes:
    """RFC 5869 §2.2; an empty salt means HashLen zero bytes."""
    return hmac_sha256(salt or bytes(HASH_BYTES), ikm)


def hkdf_expand(prk: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 §2.3."""
    if not 0 <= length <= _HKDF_MAX_BYTES:
        raise ValueError(f"HKDF-SHA256 output must be 0..{_HKDF_MAX_BYTES} bytes, not {length}")
    blocks = []
    block = b""
    for counter in range(1, -(-length // HASH_BYTES) + 1):
        block = hmac_sha256(prk, block + info + bytes([counter]))
        blocks.append(block)
    return b"".join(blocks)[:length]


def hkdf_sha256(ikm: bytes, *, salt: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` to `length` bytes."""
    return hkdf_expand(hkdf_extract(salt, ikm), info, length)


def blake2b_256(data: bytes) -> bytes:
    """The 32-byte BLAKE2b digest (raw bytes, not PyNaCl's default hex)."""
    return nacl.hash.blake2b(data, digest_size=HASH_BYTES, encoder=RawEncoder)


def constant_time_equal(a: bytes, b: bytes) -> bool:
    return hmac.compare_digest(a, b)


# --- AEAD ------------------------------------------------------------------------


def xchacha20poly1305_encrypt(key: bytes, nonce: bytes, plaintext: bytes, associated_data: bytes) -> bytes:
    """Ciphertext followed by the 16-byte tag. Prefer `seal`, which picks the nonce."""
    _check_aead_sizes(key, nonce)
    return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(plaintext, associated_data, nonce, key)


def xchacha20poly1305_decrypt(key: bytes, nonce: bytes, ciphertext: bytes, associated_data: bytes) -> bytes:
    """The plaintext, or `DecryptionError` when the tag does not verify."""
    _check_aead_sizes(key, nonce)
    try:
        return nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(ciphertext, associated_data, nonce, key)
    except nacl.exceptions.CryptoError as error:
        raise DecryptionError("ciphertext or associated data was altered, or the key is wrong") from error


def seal(key: bytes, plaintext: bytes, associated_data: bytes, rng: Rng = system_rng) -> bytes:
    """`nonce || ciphertext || tag` under a fresh random 24-byte nonce; the associated data may not be empty."""
    if not associated_data:
        raise ValueError("seal always binds associated data")
    nonce = rng(AEAD_NONCE_BYTES)
    return nonce + xchacha20poly1305_encrypt(key, nonce, plaintext, associated_data)


def open_sealed(key: bytes, sealed: bytes, associated_data: bytes) -> bytes:
    """The inverse of `seal`; `DecryptionError` for anything that does not verify."""
    if not associated_data:
        raise ValueError("seal always binds associated data")
    if len(sealed) < AEAD_NONCE_BYTES + AEAD_TAG_BYTES:
        raise DecryptionError("sealed message too short")
    nonce, ciphertext = sealed[:AEAD_NONCE_BYTES], sealed[AEAD_NONCE_BYTES:]
    return xchacha20poly1305_decrypt(key, nonce, ciphertext, associated_data)


def _check_aead_sizes(key: bytes, nonce: bytes) -> None:
    if len(key) != AEAD_KEY_BYTES:
        raise MalformedInputError(f"XChaCha20-Poly1305 key must be {AEAD_KEY_BYTES} bytes")
    if len(nonce) != AEAD_NONCE_BYTES:
        raise MalformedInputError(f"XChaCha20-Poly1305 nonce must be {AEAD_NONCE_BYTES} bytes")


# --- X25519 ----------------------------------------------------------------------


@dataclass(frozen=True)
class X25519KeyPair:
    private_key: bytes
    public_key: bytes

    @classmethod
    def generate(cls, rng: Rng = system_rng) -> X25519KeyPair:
        return cls.from_private_key(rng(X25519_KEY_BYTES))

    @classmethod
    def from_private_key(cls, private_key: bytes) -> X25519KeyPair:
        if len(private_key) != X25519_KEY_BYTES:
            raise MalformedInputError(f"X25519 private key must be {X25519_KEY_BYTES} bytes")
        return cls(private_key, nacl.bindings.crypto_scalarmult_base(private_key))

    def __repr__(self) -> str:
        return f"X25519KeyPair(public_key={self.public_key.hex()})"


def x25519(private_key: bytes, public_key: bytes) -> bytes:
    """The X25519 shared secret; `InvalidKeyError` when the peer key is low-order (all-zero result)."""
    if len(private_key) != X25519_KEY_BYTES:
        raise MalformedInputError(f"X25519 private key must be {X25519_KEY_BYTES} bytes")
    if len(public_key) != X25519_KEY_BYTES:
        raise InvalidKeyError(f"X25519 public key must be {X25519_KEY_BYTES} bytes")
    try:
        shared = nacl.bindings.crypto_scalarmult(private_key, public_key)
    except nacl.exceptions.RuntimeError as error:  # libsodium refuses an all-zero result
        raise InvalidKeyError("X25519 public key is a low-order point") from error
    if constant_time_equal(shared, bytes(X25519_KEY_BYTES)):
        raise InvalidKeyError("X25519 public key is a low-order point")
    return shared
