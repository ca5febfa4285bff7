"""Login by signed challenge and rotating refresh tokens."""

from __future__ import annotations

import base64
import dataclasses
import secrets
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nacl.hash
from nacl.encoding import RawEncoder

from parley.api.v1 import errors_pb2
from parley.crypto import identity as proofs
from services.identity.accounts import require_active_device
from services.identity.storage import ChallengeRow, IdentityStorage, IdentityTransaction, RefreshTokenRow
from services.identity.token_signing import TokenSigner
from services.runtime.config import AuthConfig
from services.runtime.errors import ServiceError, not_found, rate_limited, unauthenticated
from services.runtime.ratelimit import RateLimiter

NONCE_BYTES = 32
T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class IssuedSession:
    access_token: str
    access_expires_at: float
    refresh_token: str
    refresh_expires_at: float


def hash_refresh_token(token: str) -> bytes:
    return nacl.hash.blake2b(token.encode(), digest_size=32, encoder=RawEncoder)


class SessionIssuer:
    def __init__(
        self,
        storage: IdentityStorage,
        signer: TokenSigner,
        auth: AuthConfig,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._storage = storage
        self._signer = signer
        self._auth = auth
        self._clock = clock
        self._challenge_limit = RateLimiter(auth.challenges_per_minute, 60.0)

    async def create_challenge(self, username: str, device_id: str, client_address: str) -> ChallengeRow:
        # Keyed by name and address, so a stranger elsewhere cannot lock a user out.
        wait = self._challenge_limit.try_acquire(f"{username}@{client_address}")
        if wait:
            raise rate_limited(f"too many login attempts for {username!r}; retry in {wait:.1f}s", wait)
        now = self._clock()
        async with self._storage.transaction() as tx:
            user = await tx.user_by_name(username)
            if user is None:
                raise not_found(errors_pb2.ERROR_REASON_USER_NOT_FOUND, f"no user named {username!r}")
            device = await tx.device_by_id(device_id)
            if device is None or device.user_id != user.user_id:
                raise not_found(errors_pb2.ERROR_REASON_DEVICE_NOT_FOUND, f"{username!r} has no device {device_id!r}")
            if device.revoked_at is not None:
                raise unauthenticated(errors_pb2.ERROR_REASON_DEVICE_REVOKED, f"device {device_id} was revoked")
            challenge = ChallengeRow(
                challenge_id=uuid.uuid4().hex,
                user_id=user.user_id,
                device_id=device_id,
                nonce=secrets.token_bytes(NONCE_BYTES),
                expires_at=now + self._auth.challenge_ttl_seconds,
            )
            await tx.insert_challenge(challenge, now)
        return challenge

    async def login(self, challenge_id: str, signature: bytes) -> tuple[ChallengeRow, IssuedSession]:
        now = self._clock()

        async def check(tx: IdentityTransaction) -> tuple[ChallengeRow, str, RefreshTokenRow]:
            # Taking the challenge commits even when the signature is wrong:
            # a nonce is spent by its first presentation.
            challenge = await tx.take_challenge(challenge_id)
            if challenge is None:
                raise unauthenticated(
                    errors_pb2.ERROR_REASON_CHALLENGE_INVALID, "unknown or already used login challenge"
                )
            if challenge.expires_at <= now:
                raise unauthenticated(errors_pb2.ERROR_REASON_CHALLENGE_EXPIRED, "login challenge has expired")
            device = await tx.device_by_id(challenge.device_id)
            if device is None or device.revoked_at is not None:
                raise unauthenticated(errors_pb2.ERROR_REASON_DEVICE_REVOKED, "device was revoked")
            message = proofs.login_challenge_bytes(
                challenge.challenge_id, challenge.nonce, challenge.user_id, challenge.device_id
            )
            if not proofs.verify_signature(device.signing_key, message, signature):
                raise unauthenticated(
                    errors_pb2.ERROR_REASON_BAD_SIGNATURE, "signature does not verify under the device key"
                )
            token, row = self._new_refresh_token(challenge.user_id, challenge.device_id, uuid.uuid4().hex, now)
            await tx.insert_refresh_token(row)
            return challenge, token, row

        challenge, token, row = await self._deferring_errors(check)
        return challenge, self._issue(row, token)

    async def refresh(self, refresh_token: str) -> IssuedSession:
        now = self._clock()
        token_hash = hash_refresh_token(refresh_token)

        async def rotate(tx: IdentityTransaction) -> tuple[str, RefreshTokenRow]:
            # Locked: a second use racing this one waits, then finds the token spent.
            row = await tx.lock_refresh_token(token_hash)
            if row is None or row.revoked_at is not None:
                raise unauthenticated(
                    errors_pb2.ERROR_REASON_REFRESH_TOKEN_INVALID, "refresh token is unknown or revoked"
                )
            if row.spent_at is not None:
                # Reuse means the token leaked: end the whole session.
                await tx.revoke_family(row.family_id, now)
                raise unauthenticated(
                    errors_pb2.ERROR_REASON_REFRESH_TOKEN_REUSED,
                    "refresh token was already used; the session has been revoked, log in again",
                )
            if row.expires_at <= now:
                raise unauthenticated(errors_pb2.ERROR_REASON_REFRESH_TOKEN_INVALID, "refresh token has expired")
            device = await tx.device_by_id(row.device_id)
            if device is None or device.revoked_at is not None:
                raise unauthenticated(errors_pb2.ERROR_REASON_DEVICE_REVOKED, "device was revoked")
            await tx.spend_refresh_token(token_hash, now)
            token, successor = self._new_refresh_token(row.user_id, row.device_id, row.family_id, now)
            await tx.insert_refresh_token(successor)
            return token, successor

        token, row = await self._deferring_errors(rotate)
        return self._issue(row, token)

    async def logout(self, user_id: str, device_id: str, refresh_token: str) -> int:
        now = self._clock()
        async with self._storage.transaction() as tx:
            await require_active_device(tx, user_id, device_id)
            if not refresh_token:
                return await tx.revoke_device_sessions(device_id, now)
            row = await tx.refresh_token(hash_refresh_token(refresh_token))
            if row is None or row.device_id != device_id:
                raise unauthenticated(
                    errors_pb2.ERROR_REASON_REFRESH_TOKEN_INVALID, "refresh token does not belong to this device"
                )
            return await tx.revoke_family(row.family_id, now)

    def _new_refresh_token(
        self, user_id: str, device_id: str, family_id: str, now: float
    ) -> tuple[str, RefreshTokenRow]:
        token = base64.urlsafe_b64encode(secrets.token_bytes(32)).rstrip(b"=").decode()
        row = RefreshTokenRow(
            token_hash=hash_refresh_token(token),
            family_id=family_id,
            user_id=user_id,
            device_id=device_id,
            created_at=now,
            expires_at=now + self._auth.refresh_token_ttl_seconds,
            spent_at=None,
            revoked_at=None,
        )
        return token, row

    def _issue(self, row: RefreshTokenRow, refresh_token: str) -> IssuedSession:
        access, access_expires_at = self._signer.issue_access_token(row.user_id, row.device_id)
        return IssuedSession(access, access_expires_at, refresh_token, row.expires_at)

    async def _deferring_errors(self, work: Callable[[IdentityTransaction], Awaitable[T]]) -> T:
        """Runs `work` in a transaction that commits even when it rejects the request.

        Spending a nonce or revoking a reused token family must stick although
        the call fails, so the error is raised only after the commit.
        """
        async with self._storage.transaction() as tx:
            try:
                outcome: T | ServiceError = await work(tx)
            except ServiceError as exc:
                outcome = exc
        if isinstance(outcome, ServiceError):
            raise outcome
        return outcome
