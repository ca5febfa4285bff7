"""Local verification of bearer tokens: Parley JWTs, service credentials, app JWTs."""

from __future__ import annotations

import asyncio
import dataclasses
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from parley.api.v1 import errors_pb2
from parley.hooks import Identity
from services.runtime.config import AuthConfig
from services.runtime.errors import ServiceError, unauthenticated
from services.runtime.principal import Principal
from services.runtime.revocations import RevokedDevices, token_life_after_revocation

SERVICE_TOKEN_PREFIX = "svc:"
log = logging.getLogger("parley.auth")
PARLEY_CLAIMS = ("sub", "dev", "iat", "exp", "jti")


def service_token(name: str, secret: str) -> str:
    """The bearer value for service credentials: `svc:<name>:<secret>`."""
    return f"{SERVICE_TOKEN_PREFIX}{name}:{secret}"


@dataclasses.dataclass(frozen=True)
class PublishedKey:
    """A token verification key as the identity service publishes it."""

    public_key: bytes
    # Tokens this key signed must expire by then; None for the current key.
    expires_at: float | None = None


class KeySource(Protocol):
    """Supplies the identity service's token verification keys by key id."""

    async def fetch(self) -> Mapping[str, PublishedKey]: ...


@dataclasses.dataclass(frozen=True)
class _CachedKey:
    key: Ed25519PublicKey
    expires_at: float | None


class TokenVerifier:
    """Verifies tokens without calling anyone per request.

    Parley's keys are fetched from the identity service and cached. The cache
    is refreshed every `key_cache_seconds`, and an unknown `kid` triggers one
    refetch at most every `key_refresh_interval_seconds`: that is how key
    rotation reaches every service. A retired key only verifies tokens that
    expire before the key does.
    """

    def __init__(
        self,
        auth: AuthConfig,
        keys: KeySource,
        clock: Callable[[], float] = time.time,
        authenticate: Callable[[str], Awaitable[Any]] | None = None,
    ) -> None:
        self._auth = auth
        self._authenticate = authenticate
        self._source = keys
        self._clock = clock
        self._keys: dict[str, _CachedKey] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._external_key = _load_external_key(auth)
        # A token lives at most its lifetime after the revocation of its device.
        self.revoked_devices = RevokedDevices(token_life_after_revocation(auth), clock)

    async def verify(self, token: str) -> Principal:
        if token.startswith(SERVICE_TOKEN_PREFIX):
            return self._verify_service(token)
        try:
            unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
            header, issuer = unverified["header"], unverified["payload"].get("iss")
        except jwt.PyJWTError as exc:
            if self._authenticate is not None:
                return await self._by_hook(token)
            raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, f"malformed token: {exc}") from exc
        if issuer == self._auth.issuer:
            cached = await self._key(str(header.get("kid", "")))
            claims = self._decode(token, cached.key, ["EdDSA"], issuer, audience=None, required=PARLEY_CLAIMS)
            if cached.expires_at is not None and float(claims["exp"]) > cached.expires_at:
                raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, "token outlives its (retired) signing key")
            if str(claims.get("dev", "")) in self.revoked_devices:
                raise unauthenticated(errors_pb2.ERROR_REASON_DEVICE_REVOKED, "the device of this token was revoked")
            return self._principal(claims, issuer)
        external = self._auth.external_jwt
        if external.enabled and issuer == external.issuer:
            claims = self._decode(
                token,
                self._external_key,
                external.algorithms,
                issuer,
                audience=external.audience,
                required=("sub", "exp"),
            )
            return self._principal(claims, issuer)
        if self._authenticate is not None:
            return await self._by_hook(token)
        raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, f"token issuer {issuer!r} is not trusted")

    async def _by_hook(self, token: str) -> Principal:
        """The app's authenticate hook: an Identity or a user id, or None to refuse."""
        assert self._authenticate is not None
        accepted = await self._authenticate(token)
        if isinstance(accepted, Identity) and accepted.user_id:
            return Principal(user_id=accepted.user_id, device_id=accepted.device_id, issuer="hook")
        if isinstance(accepted, str) and accepted:
            return Principal(user_id=accepted, issuer="hook")
        raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, "token refused by the authenticate hook")

    def _verify_service(self, token: str) -> Principal:
        name, _, secret = token[len(SERVICE_TOKEN_PREFIX) :].partition(":")
        expected = self._auth.service_credentials.get(name, "")
        # Compare even when the name is unknown so timing does not reveal names.
        if not hmac.compare_digest(secret.encode(), expected.encode()) or not expected:
            raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, "service credentials rejected")
        return Principal(service_name=name, issuer="service")

    async def _key(self, kid: str) -> _CachedKey:
        age = self._clock() - self._fetched_at
        cached = self._keys.get(kid)
        if cached is not None and age < self._auth.key_cache_seconds:
            return cached
        async with self._lock:
            age = self._clock() - self._fetched_at
            stale = age >= self._auth.key_cache_seconds
            unknown = kid not in self._keys and age >= self._auth.key_refresh_interval_seconds
            if stale or unknown:
                await self._refresh(must_succeed=kid not in self._keys)
        cached = self._keys.get(kid)
        if cached is None:
            raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, f"token signed by unknown key {kid!r}")
        return cached

    async def _refresh(self, must_succeed: bool) -> None:
        # Stamped before fetching: a failing identity service is asked again
        # only after the interval, not by every request that arrives meanwhile.
        self._fetched_at = self._clock()
        try:
            fetched = await self._source.fetch()
        except ServiceError:
            if must_succeed:
                raise
            log.warning("cannot refresh token verification keys; using the cached ones", exc_info=True)
            return
        self._keys = {
            kid: _CachedKey(Ed25519PublicKey.from_public_bytes(k.public_key), k.expires_at)
            for kid, k in fetched.items()
        }

    def _decode(
        self,
        token: str,
        key: Any,
        algorithms: list[str],
        issuer: str,
        audience: str | None,
        required: tuple[str, ...],
    ) -> dict[str, Any]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=issuer,
                audience=audience,
                leeway=self._auth.clock_skew_seconds,
                options={"require": list(required), "verify_aud": audience is not None},
            )
        except jwt.ExpiredSignatureError as exc:
            raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_EXPIRED, "token has expired") from exc
        except jwt.PyJWTError as exc:
            raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, f"token rejected: {exc}") from exc
        return claims

    @staticmethod
    def _principal(claims: Mapping[str, Any], issuer: str) -> Principal:
        return Principal(
            user_id=str(claims["sub"]),
            device_id=str(claims.get("dev", "")),
            issuer=issuer,
            token_id=str(claims.get("jti", "")),
            expires_at=float(claims["exp"]),
        )


def _load_external_key(auth: AuthConfig) -> Any:
    external = auth.external_jwt
    if not external.enabled:
        return None
    if external.key_file:
        with open(external.key_file) as handle:
            return handle.read()
    return external.key
