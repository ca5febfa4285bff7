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

from parley.auth import Auth
from parley.backoff import Backoff
from parley.errors import ParleyError, UnavailableError, is_final
from parley.gateway.v1 import gateway_pb2
from parley.handlers import HandlerRunner
from parley.stream import ConnectStream, FrameHandler

log = logging.getLogger("parley.client")
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
        # Failed attempts since the last stream opened (the attempt limit counts these) ...
        self._failed_in_row = 0
        # ... and how far the backoff has grown: only a stream that held for a while resets it.
        self._backoff_step = 0
        # A draining gateway's hint: the next reconnection waits this long instead of backing off.
        self._drain_wait: float | None = None
        self._opened_at = 0.0
        self._keepers: list[asyncio.Task[None]] = []
        self._open_hooks: list[OpenHook] = []
        self._connected_hooks: list[Callable[[ConnectStream], None]] = []
        self._end_hooks: list[EndHook] = []
        self._waiting_checks: list[Callable[[], bool]] = []

    # Hooks for the parts that live on a stream

    def on_open(self, hook: OpenHook) -> None:
        """`await hook(stream)` on every new stream before the state is `connected` (in registration order)."""
        self._open_hooks.append(hook)

    def on_connected(self, hook: Callable[[ConnectStream], None]) -> None:
        """`hook(stream)` once a stream is `connected`."""
        self._connected_hooks.append(hook)

    def on_end(self, hook: EndHook) -> None:
        """`hook(error, reconnecting)` when a stream ends, or when no stream is coming any more."""
        self._end_hooks.append(hook)

    def on_waiting(self, check: Callable[[], bool]) -> None:
        """`check()` says whether something waits for a stream (queued sends, rooms to join again):
        then a failed attempt to open one is followed by more in the background."""
        self._waiting_checks.append(check)

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

    def _reconnecting(self) -> bool:
        return self.state is ConnectionState.RECONNECTING

    def _tell_ended(self, error: ParleyError | None, reconnecting: bool) -> None:
        for hook in self._end_hooks:
            hook(error, reconnecting)

    # Opening

    async def stream(self) -> ConnectStream:
        """The connected stream: opened now when there is none, awaited while reconnecting."""
        while True:
            if self.state is ConnectionState.RECONNECTING:
                await self._wait_for_connection()
                continue
            async with self._lock:
                if self._stream is not None and self.state is ConnectionState.CONNECTED:
                    return self._stream
                if self._reconnecting():
                    continue  # the reconnector had the lock: wait for it above
                self._closing = False
                try:
                    return await self._open(ConnectionState.CONNECTING)
                except ParleyError as exc:
                    self._after_failed_open(exc)
                    raise

    def _after_failed_open(self, error: ParleyError) -> None:
        """An attempt the application asked for failed: back off and retry in the background if something
        waits for a stream, otherwise stay disconnected."""
        if self.state is not ConnectionState.CONNECTING:
            return  # the stream ended while it was set up: that ending decided
        if self._reconnect and not self._closing and not is_final(error) and any(c() for c in self._waiting_checks):
            self._set_state(ConnectionState.RECONNECTING, error)
            self._start_reconnector(first_delay=True)
        else:
            self._set_state(ConnectionState.DISCONNECTED, error)

    async def _wait_for_connection(self) -> None:
        """Returns once the state is `connected`; raises once no connection is coming."""
        while self.state is not ConnectionState.CONNECTED:
            if self.state in (ConnectionState.FAILED, ConnectionState.DISCONNECTED) or self._closing:
                raise self.failure or UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "not connected")
            await self._state_changed.wait()

    def open_soon(self) -> None:
        """Opens a stream in the background if there is none and none is on the way (for queued sends)."""
        if self.state is ConnectionState.DISCONNECTED and not self._closing:
            self._start_reconnector(first_delay=False)

    async def _open(self, opening: ConnectionState) -> ConnectStream:
        """Opens a stream and makes it whole (the caller holds the lock and decides the state on failure)."""
        self._set_state(opening)
        stream: ConnectStream | None = None
        try:
            stream = ConnectStream(
                self._auth.channel(),
                await self._auth.access_token(),
                self._on_frame,
                lambda error: self._ended(stream, error),
                self._runner.backlog,
            )
            welcome = await stream.open()
            self._stream, self._opened_at = stream, time.monotonic()
            for hook in self._open_hooks:
                await hook(stream)
            if self._stream is not stream:
                raise UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "the stream ended while it was set up")
        except BaseException as exc:
            if stream is not None and self._stream is stream:
                # Set up in part (some rooms joined again): undone as if it had ended.
                self._stream = None
                await stream.close()
                failure = exc if isinstance(exc, ParleyError) else None
                self._tell_ended(failure, self._reconnect and not self._closing)
            raise
        self.failure, self._failed_in_row, self._drain_wait = None, 0, None
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
        if go_away.reconnect_within_ms and self._reconnect:
            self._drain_wait = random.uniform(0.0, go_away.reconnect_within_ms / 1000)

    def _ended(self, stream: ConnectStream | None, error: ParleyError | None) -> None:
        if stream is None or self._stream is not stream:
            return
        self._stop_keepers()
        if time.monotonic() - self._opened_at >= STABLE_STREAM_SECONDS:
            self._backoff_step = 0  # it held: the next reconnection starts with a short wait again
        self._stream = None
        reconnecting = self._reconnect and not self._closing and not is_final(error)
        self._tell_ended(error, reconnecting)
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
        """Ends the stream without reopening it; nothing waits for a stream any more (rooms end, pending
        sends fail or stay in the outbox file). A later `stream()` opens a new one."""
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
            self._tell_ended(None, False)
            self._drain_wait = None
            self._set_state(ConnectionState.DISCONNECTED)
            self._closing = False

    # Reconnecting

    def _start_reconnector(self, *, first_delay: bool) -> None:
        if not self._closing and (self._reconnector is None or self._reconnector.done()):
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect_loop(first_delay))

    async def _reconnect_loop(self, first_delay: bool) -> None:
        delay = first_delay
        while not self._closing:
            if delay:
                wait, self._drain_wait = self._drain_wait, None
                await self._sleep(self.backoff.delay(self._backoff_step) if wait is None else wait)
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
                self._failed_in_row += 1
                self._backoff_step += 1
                if not self._reconnect or is_final(error) or self.backoff.gives_up_after(self._failed_in_row):
                    self._give_up(error)
                    return
                self._set_state(ConnectionState.RECONNECTING, error)

    def _give_up(self, error: ParleyError) -> None:
        """No more attempts: what waited for a stream is told. A client that does not reconnect made
        its one attempt (for queued sends) and is disconnected; any other has failed."""
        self._tell_ended(error, False)
        if self._reconnect or is_final(error):
            self.failure = error
            self._set_state(ConnectionState.FAILED, error)
            self._runner.fire("error", error)
        else:
            self._set_state(ConnectionState.DISCONNECTED, error)

    # While connected

    async def _keep_alive(self, stream: ConnectStream) -> None:
        """Pings every `heartbeat.interval`; the link is dead, and the stream ended, when a ping goes
        unanswered for `heartbeat.timeout` with no frame at all received meanwhile and the reader not
        paused for the application's handlers (a paused reader reads no answers: that says nothing
        about the link)."""
        while self._stream is stream:
            await asyncio.sleep(self.heartbeat.interval)
            frames, pauses = stream.frames_received, stream.pauses
            reply = stream.send(ping=gateway_pb2.PingCommand())
            try:
                await asyncio.wait_for(asyncio.shield(reply), self.heartbeat.timeout)
            except TimeoutError:
                reply.cancel()  # nobody waits for it any more
                if stream.frames_received != frames or stream.pauses != pauses or stream.waiting_for_handlers:
                    continue  # frames came (the answer waits behind them), or the reader paused for handlers
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
