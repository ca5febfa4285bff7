"""Key encapsulation for the post-quantum half of PQXDH, behind a small interface.

The one implementation is ML-KEM-768 (FIPS 203) from `cryptography` (≥ 47,
with its bundled OpenSSL). Private keys are kept as the 64-byte seed (d || z)
from which FIPS 203 derives the whole key pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from parley.crypto.errors import InvalidKeyError, KemUnavailableError, MalformedInputError
from parley.crypto.primitives import Rng, system_rng


@dataclass(frozen=True)
class KemKeyPair:
    seed: bytes
    public_key: bytes

    def __repr__(self) -> str:
        return f"KemKeyPair(public_key={self.public_key[:8].hex()}…)"


class Encapsulation(NamedTuple):
    ciphertext: bytes
    shared_secret: bytes


class Kem(Protocol):
    """A KEM; `name` (e.g. "ML-KEM-768") is what prekeys and KDF labels call it."""

    @property
    def name(self) -> str: ...

    def generate(self, rng: Rng = system_rng) -> KemKeyPair: ...

    def public_key(self, seed: bytes) -> bytes: ...

    def encapsulate(self, public_key: bytes) -> Encapsulation: ...

    def decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes: ...


class MlKem768:
    """ML-KEM-768 from `cryptography`; constructing it raises `KemUnavailableError` when that cannot work here."""

    name = "ML-KEM-768"
    SEED_BYTES = 64
    PUBLIC_KEY_BYTES = 1184
    CIPHERTEXT_BYTES = 1088
    SHARED_SECRET_BYTES = 32

    def __init__(self) -> None:
        self._mlkem = _load_mlkem()

    def generate(self, rng: Rng = system_rng) -> KemKeyPair:
        seed = rng(self.SEED_BYTES)
        return KemKeyPair(seed, self.public_key(seed))

    def public_key(self, seed: bytes) -> bytes:
        key: bytes = self._private_key(seed).public_key().public_bytes_raw()
        return key

    def encapsulate(self, public_key: bytes) -> Encapsulation:
        if len(public_key) != self.PUBLIC_KEY_BYTES:
            raise InvalidKeyError(f"{self.name} public key must be {self.PUBLIC_KEY_BYTES} bytes")
        try:
            key = self._mlkem.MLKEM768PublicKey.from_public_bytes(public_key)
        except ValueError as error:  # FIPS 203's modulus check on the encapsulation key
            raise InvalidKeyError(f"not a valid {self.name} public key") from error
        shared_secret, ciphertext = key.encapsulate()
        return Encapsulation(ciphertext, shared_secret)

    def decapsulate(self, seed: bytes, ciphertext: bytes) -> bytes:
        """The shared secret; a forged ciphertext yields an unrelated secret (implicit rejection), not an error."""
        if len(ciphertext) != self.CIPHERTEXT_BYTES:
            raise MalformedInputError(f"{self.name} ciphertext must be {self.CIPHERTEXT_BYTES} bytes")
        shared_secret: bytes = self._private_key(seed).decapsulate(ciphertext)
        return shared_secret

    def _private_key(self, seed: bytes) -> Any:
        if len(seed) != self.SEED_BYTES:
            raise MalformedInputError(f"{self.name} private key seed must be {self.SEED_BYTES} bytes")
        return self._mlkem.MLKEM768PrivateKey.from_seed_bytes(seed)


def ml_kem_768_available() -> bool:
    try:
        _load_mlkem()
    except KemUnavailableError:
        return False
    return True


def _load_mlkem() -> Any:
    try:
        from cryptography.exceptions import UnsupportedAlgorithm
        from cryptography.hazmat.primitives.asymmetric import mlkem
    except ImportError as error:
        raise KemUnavailableError("ML-KEM-768 needs the `cryptography` package, version 47 or later") from error
    try:
        mlkem.MLKEM768PrivateKey.from_seed_bytes(bytes(MlKem768.SEED_BYTES))
    except UnsupportedAlgorithm as error:
        raise KemUnavailableError("this build of `cryptography` (its OpenSSL) does not offer ML-KEM-768") from error
    return mlkem
