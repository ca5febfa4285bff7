"""The client's connection: one realtime stream at a time, its states, reconnection and heartbeat.

States: `disconnected` (no stream; one opens on first use), `connecting`,
`connected`, `reconnecting` (the stream ended; backing off before the next
attempt) and `failed` (gave up after the attempt limit, or the server refused
the credentials). Every change reaches `on_state` handlers in order.

Each new stream is made whole before the state says `connected`: the hooks
given to `on_open` (rooms joined again and resumed, subjects subscribed
again) run first, then the outbox sends what waited.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import random
import time
from collections.abc import Awaitable, Callable

import grpc

from parley.api.v1 import errors_pb2
from parley.auth import Auth
from parley.backoff import Backoff
from parley.errors import ParleyError, UnavailableError
from parley.gateway.v1 import gateway_pb2
from parley.handlers import HandlerRunner
from parley.reasons import reason_name
from parley.stream import ConnectStream, FrameHandler

log = logging.getLogger("parley.client")
# A stream that ended with one of these is not reopened by itself.
FINAL_ENDINGS = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}
)
# Ends a stream whose token expired: a new stream with a fresh token carries on.
TOKEN_EXPIRED = reason_name(errors_pb2.ERROR_REASON_TOKEN_EXPIRED)
# A stream that stayed up this long resets the backoff.
STABLE_STREAM_SECONDS = 10.0
# The token keeper hands the stream a fresh token this long before its own expires, and retries this often.
TOKEN_KEEPER_LEAD_SECONDS = 25.0
TOKEN_KEEPER_RETRY_SECONDS = 2.0


class ConnectionState(enum.Enum):
    DISCONNECTED = "disconnected"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    FAILED = "failed"


@dataclasses.dataclass(frozen=True)
class Heartbeat:
    """An application ping every `interval` seconds; no reply within `timeout` means the link is dead.

    A dead link is noticed within `interval + timeout` seconds, also when no
    packet says so (a cable pulled, a NAT entry gone). The channel's HTTP/2
    keepalive runs alongside at the same pace (never under the server's
    10 s minimum).
    """

    interval: float = 10.0
    timeout: float = 10.0

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.timeout <= 0:
            raise ValueError("heartbeat: interval and timeout must be positive")

    def channel_options(self) -> list[tuple[str, int]]:
        return [
            ("grpc.keepalive_time_ms", int(max(10.0, self.interval) * 1000)),
            ("grpc.keepalive_timeout_ms", int(self.timeout * 1000)),
        ]


def is_final(error: ParleyError | None) -> bool:
    """A stream ending the client does not recover from by opening another one."""
    return error is not None and error.code in FINAL_ENDINGS and error.reason != TOKEN_EXPIRED


OpenHook = Callable[[ConnectStream], Awaitable[None]]
EndHook = Callable[[ParleyError | None, bool], None]


class Connection:
    """Opens the realtime stream, keeps it alive, and reopens it with backoff when it ends."""

    def __init__(
        self,
        auth: Auth,
        runner: HandlerRunner,
        on_frame: FrameHandler,
        *,
        reconnect: bool,
        backoff: Backoff,
        heartbeat: Heartbeat,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._auth = auth
        self._runner = runner
        self._on_frame = on_frame
        self._reconnect = reconnect
        self.backoff = backoff
        self.heartbeat = heartbeat
        self._sleep = sleep
        self.state = ConnectionState.DISCONNECTED
        self.failure: ParleyError | None = None
        self._stream: ConnectStream | None = None
        self._lock = asyncio.Lock()
        self._state_changed = asyncio.Event()
        self._closing = False
        self._reconnector: asyncio.Task[None] | None = None
        self._failures = 0
        # A draining gateway's hint: the next reconnection waits this long instead of backing off.
        self._drain_wait: float | None = None
        self._opened_at = 0.0
        self._keepers: list[asyncio.Task[None]] = []
        self._open_hooks: list[OpenHook] = []
        self._connected_hooks: list[Callable[[ConnectStream], None]] = []
        self._end_hooks: list[EndHook] = []

    # Hooks for the parts that live on a stream

    def on_open(self, hook: OpenHook) -> None:
        """`await hook(stream)` on every new stream before the state is `connected` (in registration order)."""
        self._open_hooks.append(hook)

    def on_connected(self, hook: Callable[[ConnectStream], None]) -> None:
        """`hook(stream)` once a stream is `connected`."""
        self._connected_hooks.append(hook)

    def on_end(self, hook: EndHook) -> None:
        """`hook(error, reconnecting)` when a stream ends."""
        self._end_hooks.append(hook)

    # State

    @property
    def live_stream(self) -> ConnectStream | None:
        """The stream, when the state is `connected`."""
        return self._stream if self.state is ConnectionState.CONNECTED else None

    @property
    def closing(self) -> bool:
        return self._closing

    def _set_state(self, state: ConnectionState, error: ParleyError | None = None) -> None:
        if state is self.state:
            return
        self.state = state
        changed, self._state_changed = self._state_changed, asyncio.Event()
        changed.set()
        self._runner.fire("state", state, error)

    # Opening

    async def stream(self) -> ConnectStream:
        """The connected stream: opened now when there is none, awaited while reconnecting."""
        while True:
            if self.state is ConnectionState.RECONNECTING and not self._closing:
                await self._wait_for_connection()
                continue
            async with self._lock:
                if self._stream is not None and self.state is ConnectionState.CONNECTED:
                    return self._stream
                if self.state is ConnectionState.RECONNECTING:
                    continue
                self._closing = False
                return await self._open(ConnectionState.CONNECTING)

    async def _wait_for_connection(self) -> None:
        """Returns once the state is `connected`; raises if it becomes `failed` or the client closes."""
        while self.state is not ConnectionState.CONNECTED:
            if self.state is ConnectionState.FAILED or self._closing:
                raise self.failure or UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "the client is closed")
            await self._state_changed.wait()

    def open_soon(self) -> None:
        """Opens a stream in the background if there is none and none is on the way (for queued sends)."""
        if self.state is ConnectionState.DISCONNECTED and not self._closing:
            self._start_reconnector(first_delay=False)

    async def _open(self, opening: ConnectionState) -> ConnectStream:
        """Opens a stream and makes it whole (the caller holds the lock)."""
        self._set_state(opening)
        stream: ConnectStream | None = None
        try:
            stream = ConnectStream(
                self._auth.channel(),
                await self._auth.access_token(),
                self._on_frame,
                lambda error: self._ended(stream, error),
                self._runner.backlog.caught_up,
            )
            welcome = await stream.open()
            self._stream, self._opened_at = stream, time.monotonic()
            for hook in self._open_hooks:
                await hook(stream)
            if self._stream is not stream:
                raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "the stream ended while it was set up")
        except BaseException:
            if stream is not None and self._stream is stream:
                self._stream = None
                await stream.close()
            if self.state is ConnectionState.CONNECTING:
                self._set_state(ConnectionState.DISCONNECTED)
            raise
        self.failure = None
        loop = asyncio.get_running_loop()
        self._keepers = [
            loop.create_task(self._keep_token_fresh(stream, welcome)),
            loop.create_task(self._keep_alive(stream)),
        ]
        self._set_state(ConnectionState.CONNECTED)
        self._runner.fire("connect", welcome)
        for connected in self._connected_hooks:
            connected(stream)
        return stream

    # Ending

    def going_away(self, go_away: gateway_pb2.GoAway) -> None:
        """The server ends the stream; a draining gateway says within how long to come back (spread at random)."""
        if go_away.reconnect_within_ms:
            self._drain_wait = random.uniform(0.0, go_away.reconnect_within_ms / 1000)

    def _ended(self, stream: ConnectStream | None, error: ParleyError | None) -> None:
        if stream is None or self._stream is not stream:
            return
        self._stop_keepers()
        if time.monotonic() - self._opened_at >= STABLE_STREAM_SECONDS:
            self._failures = 0  # it held: the next reconnection starts with a short wait again
        self._stream = None
        reconnecting = self._reconnect and not self._closing and not is_final(error)
        for hook in self._end_hooks:
            hook(error, reconnecting)
        if reconnecting:
            self._set_state(ConnectionState.RECONNECTING, error)
            self._start_reconnector(first_delay=True)
        elif is_final(error):
            self.failure = error
            self._set_state(ConnectionState.FAILED, error)
        else:
            self._set_state(ConnectionState.DISCONNECTED, error)
        self._runner.fire("disconnect", error)

    def _stop_keepers(self) -> None:
        for keeper in self._keepers:
            keeper.cancel()
        self._keepers = []

    async def close(self) -> None:
        """Ends the stream without reopening it; `stream()` opens a new one later."""
        self._closing = True
        if self._reconnector is not None:  # it may hold the lock while it opens a stream
            self._reconnector.cancel()
            await asyncio.gather(self._reconnector, return_exceptions=True)
        self._stop_keepers()
        async with self._lock:  # no stream opens while this one closes
            self._closing = True
            stream, self._stream = self._stream, None
            if stream is not None:
                await stream.close()
                self._runner.fire("disconnect", None)
            if stream is not None or self.state is ConnectionState.RECONNECTING:
                for hook in self._end_hooks:
                    hook(None, False)
            self._set_state(ConnectionState.DISCONNECTED)

    # Reconnecting

    def _start_reconnector(self, *, first_delay: bool) -> None:
        if not self._closing and (self._reconnector is None or self._reconnector.done()):
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect_loop(first_delay))

    async def _reconnect_loop(self, first_delay: bool) -> None:
        delay = first_delay
        while not self._closing:
            if delay:
                wait, self._drain_wait = self._drain_wait, None
                await self._sleep(self.backoff.delay(self._failures) if wait is None else wait)
            delay = True
            async with self._lock:
                if self._closing or self.state is ConnectionState.CONNECTED:
                    return
                try:
                    await self._open(
                        ConnectionState.RECONNECTING
                        if self.state is ConnectionState.RECONNECTING
                        else ConnectionState.CONNECTING
                    )
                    return
                except ParleyError as exc:
                    error = exc
                except Exception as exc:
                    log.exception("reconnecting failed; trying again")
                    error = UnavailableError(grpc.StatusCode.UNAVAILABLE, "", f"reconnecting failed: {exc}")
                self._failures += 1
                if not self._reconnect and not is_final(error):
                    # Opened for queued sends on a client that does not reconnect: one attempt.
                    for hook in self._end_hooks:
                        hook(error, False)
                    self._set_state(ConnectionState.DISCONNECTED, error)
                    return
                if is_final(error) or self.backoff.gives_up_after(self._failures):
                    self.failure = error
                    for hook in self._end_hooks:
                        hook(error, False)
                    self._set_state(ConnectionState.FAILED, error)
                    self._runner.fire("error", error)
                    return
                self._set_state(ConnectionState.RECONNECTING, error)

    # While connected

    async def _keep_alive(self, stream: ConnectStream) -> None:
        """Pings every `heartbeat.interval`; a ping unanswered for `heartbeat.timeout` ends the stream as dead.

        A reader paused for the application's handlers reads no replies: that
        says nothing about the link, so the wait starts again.
        """
        while self._stream is stream:
            await asyncio.sleep(self.heartbeat.interval)
            reply = stream.send(ping=gateway_pb2.PingCommand())
            try:
                await asyncio.wait_for(asyncio.shield(reply), self.heartbeat.timeout)
            except TimeoutError:
                reply.cancel()  # nobody waits for it any more
                if stream.waiting_for_handlers:
                    continue
                stream.abort(
                    UnavailableError(
                        grpc.StatusCode.UNAVAILABLE,
                        "",
                        f"no heartbeat reply within {self.heartbeat.timeout:g}s; the link is dead",
                    )
                )
                return
            except ParleyError:
                return  # the stream ended

    async def _keep_token_fresh(self, stream: ConnectStream, welcome: gateway_pb2.Welcome) -> None:
        """Sends the stream a RefreshCommand shortly before its token expires, for as long as it is open.

        Expiry times are the server's; `welcome.server_time_ms` tells how far
        this machine's clock is from it. The server ends a stream whose token
        expired (TOKEN_EXPIRED); a failed refresh is tried again until then,
        and a stream that ends anyway is reopened like after any other ending.
        """
        server_ahead = welcome.server_time_ms / 1000 - time.time()
        expires_at = welcome.token_expire_time_ms / 1000  # server clock; 0: never
        while expires_at and self._stream is stream:
            left = expires_at - (time.time() + server_ahead)
            # Halfway through a short-lived token, rather than refreshing at once again and again.
            await asyncio.sleep(max(0.0, left - TOKEN_KEEPER_LEAD_SECONDS, left / 2))
            if self._stream is not stream:
                return
            try:
                token = await self._auth.token_expiring_after(expires_at)
                if token is None:
                    return  # logged out, or the session was revoked: not the keeper's to log in again
                reply = await stream.command(refresh=gateway_pb2.RefreshCommand(access_token=token))
                expires_at = reply.refresh.token_expire_time_ms / 1000
            except ParleyError as exc:
                if self._stream is not stream:
                    return
                log.warning("could not hand the stream a fresh token: %s", exc)
                await asyncio.sleep(TOKEN_KEEPER_RETRY_SECONDS)
