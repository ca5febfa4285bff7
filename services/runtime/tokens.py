"""Local verification of bearer tokens: Parley JWTs, service credentials, app JWTs."""

from __future__ import annotations

import asyncio
import hmac
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from parley.api.v1 import errors_pb2
from services.runtime.config import AuthConfig
from services.runtime.errors import unauthenticated
from services.runtime.principal import Principal

SERVICE_TOKEN_PREFIX = "svc:"
PARLEY_CLAIMS = ("sub", "dev", "iat", "exp", "jti")


def service_token(name: str, secret: str) -> str:
    """The bearer value for service credentials: `svc:<name>:<secret>`."""
    return f"{SERVICE_TOKEN_PREFIX}{name}:{secret}"


class KeySource(Protocol):
    """Supplies the identity service's token verification keys by key id."""

    async def fetch(self) -> Mapping[str, bytes]: ...


class TokenVerifier:
    """Verifies tokens without calling anyone per request.

    Parley's keys are fetched from the identity service and cached; an unknown
    `kid` triggers one refetch at most every `key_refresh_interval_seconds`,
    which is how key rotation reaches every service.
    """

    def __init__(self, auth: AuthConfig, keys: KeySource, clock: Callable[[], float] = time.time) -> None:
        self._auth = auth
        self._source = keys
        self._clock = clock
        self._keys: dict[str, Ed25519PublicKey] = {}
        self._fetched_at = float("-inf")
        self._lock = asyncio.Lock()
        self._external_key = _load_external_key(auth)

    async def verify(self, token: str) -> Principal:
        if token.startswith(SERVICE_TOKEN_PREFIX):
            return self._verify_service(token)
        try:
            unverified = jwt.api_jwt.decode_complete(token, options={"verify_signature": False})
            header, issuer = unverified["header"], unverified["payload"].get("iss")
        except jwt.PyJWTError as exc:
            raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, f"malformed token: {exc}") from exc
        if issuer == self._auth.issuer:
            key = await self._key(str(header.get("kid", "")))
            claims = self._decode(token, key, ["EdDSA"], issuer, audience=None, required=PARLEY_CLAIMS)
            return self._principal(claims, issuer)
        external = self._auth.external_jwt
        if external.enabled and issuer == external.issuer:
            claims = self._decode(
                token,
                self._external_key,
                external.algorithms,
                issuer,
                audience=external.audience or None,
                required=("sub", "exp"),
            )
            return self._principal(claims, issuer)
        raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, f"token issuer {issuer!r} is not trusted")

    def _verify_service(self, token: str) -> Principal:
        name, _, secret = token[len(SERVICE_TOKEN_PREFIX) :].partition(":")
        expected = self._auth.service_credentials.get(name, "")
        # Compare even when the name is unknown so timing does not reveal names.
        if not hmac.compare_digest(secret.encode(), expected.encode()) or not expected:
            raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, "service credentials rejected")
        return Principal(service_name=name, issuer="service")

    async def _key(self, kid: str) -> Ed25519PublicKey:
        key = self._keys.get(kid)
        if key is not None:
            return key
        async with self._lock:
            key = self._keys.get(kid)
            if key is None and self._clock() - self._fetched_at >= self._auth.key_refresh_interval_seconds:
                fetched = await self._source.fetch()
                self._fetched_at = self._clock()
                self._keys = {k: Ed25519PublicKey.from_public_bytes(raw) for k, raw in fetched.items()}
                key = self._keys.get(kid)
        if key is None:
            raise unauthenticated(errors_pb2.ERROR_REASON_TOKEN_INVALID, f"token signed by unknown key {kid!r}")
        return key

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
