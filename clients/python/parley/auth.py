"""A device's channel to Parley and its session: keys, registration, login, access tokens, unary calls.

The key file is written once the server has accepted the registration. Until
then the new keys wait in `<key file>.pending`, so a registration whose reply
was lost can be completed with the same keys, and one the server refused
(name taken, invalid) leaves no key file behind to trip over.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import grpc

from parley.device_identity import DeviceIdentity
from parley.errors import (
    AlreadyExistsError,
    NotFoundError,
    ParleyError,
    UnauthenticatedError,
    error_from_rpc,
)
from parley.identity.v1 import identity_pb2, identity_pb2_grpc

T = TypeVar("T")
# Refresh the access token when it has less than this many seconds left.
REFRESH_MARGIN_SECONDS = 30.0
DEFAULT_TIMEOUT_SECONDS = 10.0
# Failures that say nothing about whether the server acted: the pending keys are kept for the next attempt.
_OUTCOME_UNKNOWN = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.CANCELLED,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.INTERNAL,
    }
)
# gRPC's words for a call that never left this machine.
_NEVER_CONNECTED = ("failed to connect to all addresses", "DNS resolution failed")


def outcome_unknown(error: ParleyError) -> bool:
    """Whether the server may have acted on a call that failed (the connection broke after it went out)."""
    if error.code not in _OUTCOME_UNKNOWN or error.reason:
        return False
    return not any(words in error.message for words in _NEVER_CONNECTED)


def pending_key_file(key_file: Path) -> Path:
    """Where a new device's keys wait until the server has accepted its registration."""
    return key_file.with_name(key_file.name + ".pending")


def _retrieve_failure(task: asyncio.Task[Any]) -> None:
    """Marks a background task's failure as seen: whoever waited for it was told, or had gone."""
    if not task.cancelled():
        task.exception()


class Auth:
    """Owns the channel, the device identity and the session (access and refresh tokens)."""

    def __init__(
        self,
        address: str,
        *,
        username: str | None,
        key_file: Path | None,
        identity: DeviceIdentity | None,
        device_name: str,
        timeout: float,
        channel_options: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.address = address
        self._username = username
        self._key_file = key_file
        self._identity = identity
        self._device_name = device_name
        self.timeout = timeout
        # A subchannel of its own: another client's failed attempts to the same address (and their
        # backoff) do not make this one's calls fail.
        self._channel_options = [("grpc.use_local_subchannel_pool", 1), *channel_options]
        self._channel: grpc.aio.Channel | None = None
        self._session: identity_pb2.Session | None = None
        self._token_lock = asyncio.Lock()
        # The RefreshToken exchange under way, if any: see `_refresh`.
        self._refreshing: asyncio.Task[identity_pb2.Session] | None = None

    # Channel and calls

    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address, options=self._channel_options)
        return self._channel

    async def close_channel(self) -> None:
        if self._channel is not None:
            if self._refreshing is not None:  # closing the channel would lose its answer
                await asyncio.gather(self._refreshing, return_exceptions=True)
            await self._channel.close(None)
            self._channel = None

    @property
    def identity_stub(self) -> identity_pb2_grpc.IdentityServiceAsyncStub:
        return identity_pb2_grpc.IdentityServiceStub(self.channel())

    async def call(self, method: Callable[..., Awaitable[T]], request: object, *, authenticated: bool = True) -> T:
        """One unary call with this device's token, its failure raised as the typed ParleyError."""
        metadata: tuple[tuple[str, str], ...] = ()
        if authenticated:
            metadata = (("authorization", f"Bearer {await self.access_token()}"),)
        try:
            return await method(request, metadata=metadata, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    # Identity and registration

    @property
    def identity(self) -> DeviceIdentity:
        """This device's keys (created on first use, kept in memory until registered)."""
        if self._identity is not None:
            return self._identity
        if self._key_file is not None and self._key_file.exists() and not self._unfinished(self._key_file):
            self._identity = DeviceIdentity.load(self._key_file)
            if self._username and self._username != self._identity.username:
                raise ParleyError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "",
                    f"key file {self._key_file} belongs to {self._identity.username!r}, not {self._username!r}",
                )
            return self._identity
        if not self._username:
            raise ParleyError(grpc.StatusCode.INVALID_ARGUMENT, "", "no key file yet: give a username to register")
        pending = self._pending_identity()
        if pending is not None and pending.username == self._username:
            self._identity = pending  # a rerun after an unknown outcome: the same keys, so the server knows them
        else:
            self._identity = DeviceIdentity.generate(self._username, self._device_name)
        return self._identity

    @staticmethod
    def _unfinished(key_file: Path) -> bool:
        """A key file of an unfinished registration (written by earlier versions) becomes the pending file."""
        if DeviceIdentity.load(key_file).registered:
            return False
        key_file.replace(pending_key_file(key_file))
        return True

    def _pending_identity(self) -> DeviceIdentity | None:
        """The keys of an earlier registration whose outcome is unknown."""
        if self._key_file is None or not pending_key_file(self._key_file).exists():
            return None
        return DeviceIdentity.load(pending_key_file(self._key_file))

    async def ensure_registered(self) -> None:
        """Registers the user with this device as its first device, unless the key file says it is."""
        if self.identity.registered:
            return
        await self._settle_other_pending()
        try:
            await self.register()
        except AlreadyExistsError:
            await self._recover_registration()
        except ParleyError as exc:
            if not outcome_unknown(exc):
                self._forget_pending()
            raise

    async def _settle_other_pending(self) -> None:
        """An unfinished registration of another name becomes the key file if the server has it
        (this key file is then that user's), and is forgotten if it never arrived."""
        pending = self._pending_identity()
        if self._key_file is None or pending is None or pending.username == self.identity.username:
            return
        probe = Auth(self.address, username=None, key_file=None, identity=pending, device_name="", timeout=self.timeout)
        try:
            await probe.login()
        except (NotFoundError, UnauthenticatedError):
            pending_key_file(self._key_file).unlink(missing_ok=True)
            return
        finally:
            await probe.close_channel()
        wanted, self._identity = self.identity.username, pending
        self._accepted(pending)
        raise ParleyError(
            grpc.StatusCode.INVALID_ARGUMENT,
            "",
            f"key file {self._key_file} belongs to {pending.username!r} (registered earlier), not {wanted!r}",
        )

    async def register(self) -> identity_pb2.RegisterUserResponse:
        identity = self.identity
        if self._key_file is not None:  # from here on the outcome may be unknown: keep the keys
            identity.save(pending_key_file(self._key_file))
        response = await self.call(
            self.identity_stub.RegisterUser,
            identity_pb2.RegisterUserRequest(
                username=identity.username,
                user_signing_key=identity.user_public_key,
                device=identity.certify(identity),
            ),
            authenticated=False,
        )
        identity.user_id = response.user.user_id
        self._accepted(identity)
        return response

    async def _recover_registration(self) -> None:
        """The name is taken, perhaps by our own earlier attempt whose reply was lost:
        if this device can log in, the registration did happen."""
        try:
            await self.login()
        except (NotFoundError, UnauthenticatedError):
            self._forget_pending()
            raise AlreadyExistsError(
                grpc.StatusCode.ALREADY_EXISTS,
                "USERNAME_TAKEN",
                f"username {self.identity.username!r} is taken",
            ) from None
        self._accepted(self.identity)

    def _accepted(self, identity: DeviceIdentity) -> None:
        identity.registered = True
        if self._key_file is not None:
            identity.save(self._key_file)
            pending_key_file(self._key_file).unlink(missing_ok=True)

    def _forget_pending(self) -> None:
        """The server refused the registration: nothing of it stays behind."""
        if self._key_file is not None and not self._key_file.exists():
            pending_key_file(self._key_file).unlink(missing_ok=True)
            self._identity = None

    def save(self) -> None:
        if self._key_file is not None and self._identity is not None and self._identity.registered:
            self._identity.save(self._key_file)

    # Session

    async def login(self) -> identity_pb2.Session:
        """Logs in by signing a fresh challenge with the device key."""
        identity = self.identity
        challenge = await self.call(
            self.identity_stub.CreateLoginChallenge,
            identity_pb2.CreateLoginChallengeRequest(username=identity.username, device_id=identity.device_id),
            authenticated=False,
        )
        signature = identity.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id)
        response = await self.call(
            self.identity_stub.Login,
            identity_pb2.LoginRequest(challenge_id=challenge.challenge_id, signature=signature),
            authenticated=False,
        )
        if identity.user_id != response.user_id:
            identity.user_id = response.user_id
            self.save()
        self._session = response.session
        return response.session

    async def access_token(self) -> str:
        """A valid access token, refreshed (or re-logged-in) when close to expiry."""
        async with self._token_lock:
            if self._session is not None and _expires_soon(self._session):
                try:
                    await self._refresh()
                except UnauthenticatedError:
                    # The session was revoked or has expired: prove the device key again.
                    self._session = None
            if self._session is None:
                await self.login()
            assert self._session is not None
            return self._session.access_token

    async def token_expiring_after(self, server_time: float) -> str | None:
        """An access token that outlives `server_time` (the server's clock), refreshed if the current one does not.

        None when there is no session to refresh: this never logs in.
        """
        async with self._token_lock:
            if self._session is None:
                return None
            if self._session.access_token_expire_time.ToNanoseconds() / 1e9 <= server_time:
                try:
                    await self._refresh()
                except UnauthenticatedError:
                    return None
            return None if self._session is None else self._session.access_token

    async def logout(self) -> int:
        """Revokes this device's sessions on the server; returns how many."""
        response = await self.call(self.identity_stub.Logout, identity_pb2.LogoutRequest())
        self._session = None
        return response.revoked_sessions

    async def _refresh(self) -> None:
        """Exchanges the refresh token for a new session, one exchange at a time.

        The server spends the refresh token when it answers, and a second use of
        it revokes the whole session (reuse detection). So the exchange runs as
        a task of its own that stores the answer even if every caller stopped
        waiting (a cancelled `access_token()`, the token keeper cancelled when
        its stream ends or the client closes), and a caller that comes while it
        runs waits for it rather than spending the token again.
        """
        if self._refreshing is None or self._refreshing.done():
            assert self._session is not None
            task = asyncio.get_running_loop().create_task(self._exchange_refresh_token(self._session))
            task.add_done_callback(_retrieve_failure)
            self._refreshing = task
        await asyncio.shield(self._refreshing)

    async def _exchange_refresh_token(self, spent: identity_pb2.Session) -> identity_pb2.Session:
        response = await self.call(
            self.identity_stub.RefreshToken,
            identity_pb2.RefreshTokenRequest(refresh_token=spent.refresh_token),
            authenticated=False,
        )
        if self._session is spent:  # not logged out (or in again) meanwhile
            self._session = response.session
        return response.session


def _expires_soon(session: identity_pb2.Session) -> bool:
    expires_at = session.access_token_expire_time.ToNanoseconds() / 1e9
    return expires_at - time.time() < REFRESH_MARGIN_SECONDS
