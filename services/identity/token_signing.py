"""Signs access tokens (EdDSA JWTs) and manages the rotating signing keys."""

from __future__ import annotations

import dataclasses
import secrets
import time
import uuid
from collections.abc import Callable

import jwt
import nacl.signing
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from services.identity.storage import IdentityStorage, SigningKeyRow
from services.runtime.config import AuthConfig


@dataclasses.dataclass(frozen=True)
class PublishedKey:
    key: SigningKeyRow
    # When tokens signed by a retired key stop verifying; None for the current key.
    expires_at: float | None


class TokenSigner:
    def __init__(self, storage: IdentityStorage, auth: AuthConfig, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._auth = auth
        self._clock = clock
        self._keys: list[SigningKeyRow] = []
        self._private: tuple[str, Ed25519PrivateKey] | None = None

    async def load(self) -> None:
        """Reads the keys, creating the first one on a new database."""
        async with self._storage.transaction() as tx:
            self._keys = await tx.signing_keys()
        if all(key.retired_at is not None for key in self._keys):
            await self.rotate()

    async def rotate(self) -> SigningKeyRow:
        seed = nacl.signing.SigningKey.generate()
        now = self._clock()
        row = SigningKeyRow(
            key_id=f"k{secrets.token_hex(8)}",
            seed=bytes(seed),
            public_key=seed.verify_key.encode(),
            created_at=now,
            retired_at=None,
        )
        async with self._storage.transaction() as tx:
            await tx.insert_signing_key(row, now)
            self._keys = await tx.signing_keys()
        return row

    def issue_access_token(self, user_id: str, device_id: str) -> tuple[str, float]:
        kid, private = self._current_private_key()
        now = int(self._clock())
        expires_at = now + self._auth.access_token_ttl_seconds
        claims = {
            "iss": self._auth.issuer,
            "sub": user_id,
            "dev": device_id,
            "iat": now,
            "exp": expires_at,
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, private, algorithm="EdDSA", headers={"kid": kid})
        return token, float(expires_at)

    def _current_private_key(self) -> tuple[str, Ed25519PrivateKey]:
        current = next(k for k in reversed(self._keys) if k.retired_at is None)
        if self._private is None or self._private[0] != current.key_id:
            self._private = (current.key_id, Ed25519PrivateKey.from_private_bytes(current.seed))
        return self._private

    def published_keys(self) -> list[PublishedKey]:
        """The current key plus retired ones whose tokens may still be live."""
        now = self._clock()
        lifetime = self._auth.access_token_ttl_seconds + self._auth.clock_skew_seconds
        published = []
        for key in self._keys:
            expires_at = None if key.retired_at is None else key.retired_at + lifetime
            if expires_at is None or expires_at > now:
                published.append(PublishedKey(key, expires_at))
        return published
