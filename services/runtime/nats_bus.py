"""The bus on core NATS (nats-py): several processes, one bus.

Our subjects ("room.chat.2024", "subject.presence:lobby") become NATS subjects
`<subject_prefix>.<namespace>.<name as one token>`, and headers travel in the
payload (services/runtime/nats_wire.py says how).

Each exact subject is one NATS subscription per process, however many local
handlers share it; a prefix subscription listens to its whole namespace
(`<prefix>.<namespace>.>`), once per namespace, and prefixes are matched here.
Messages NATS drops for this process (a handler that fell behind: a slow
consumer; or everything published while the connection was down) are gaps:
the subscriptions concerned are told through `on_gap`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable, Iterable
from typing import Any

from nats.aio.client import PING_PROTO
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import SlowConsumerError

from services.runtime.bus import BusMessage, GapHandler, Handler, LocalRouter, Subscription, check_prefix
from services.runtime.nats_wire import check_subject_prefix, decode_name, encode_name, pack, split_subject, unpack

log = logging.getLogger("parley.bus")

# What one NATS subscription may hold, waiting for its handlers, before this
# process counts as a slow consumer and NATS drops for it (nats-py's defaults
# are 524,288 messages and 128 MiB).
PENDING_MESSAGES = 1_000_000
PENDING_BYTES = 512 * 1024 * 1024
# The first connection must succeed within this; later losses are retried forever.
CONNECT_WAIT_SECONDS = 10.0
RECONNECT_WAIT_SECONDS = 1


class OrderedFlushClient(NatsClient):
    """nats-py 2.16 with two fixes, so that `flush` means what it says.

    - Its PING is written to the socket at once, ahead of commands still
      buffered (a SUB just made): the PONG could come back before the server
      had the subscription, and a message published right after was lost to
      it. Here the PING goes through the buffer, after them.
    - A PONG answering a flush nobody awaits any more (its caller was
      cancelled, or it timed out) had its result set on a cancelled future:
      the InvalidStateError ended the read loop, and the connection went
      silent (no messages, no disconnect) until the server found it stale.
    """

    async def _send_ping(self, future: asyncio.Future[bool] | None = None) -> None:
        self._pongs.append(future if future is not None else asyncio.get_running_loop().create_future())
        await self._send_command(PING_PROTO)
        await self._flush_pending()

    async def _process_pong(self) -> None:
        if self._pongs:
            future = self._pongs.pop(0)
            if not future.done():
                future.set_result(True)
            self._pongs_received += 1
            self._pings_outstanding = 0


class _Shared:
    """One NATS subscription and the local subscriptions that use it."""

    def __init__(self, key: str) -> None:
        # The NATS subject ("<prefix>.room.chat" or "<prefix>.subject.>").
        self.key = key
        self.users = 0
        self.gap_handlers: dict[int, GapHandler] = {}
        self.nats: NatsSubscription | None = None
        # True once the server has the subscription, False if it failed (then it is gone).
        self.ready: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        # Released: what its NATS subscription still delivers goes nowhere.
        self.released = False
        # A slow-consumer gap is being told (one telling per burst of drops).
        self.telling_gap = False


class _NatsSubscription:
    def __init__(self, bus: NatsBus, shared: _Shared, local: Subscription, token: int) -> None:
        self._bus = bus
        self._shared = shared
        self._local: Subscription | None = local
        self._token = token

    def cancel(self) -> None:
        if self._local is None:
            return
        self._local.cancel()
        self._local = None
        self._shared.gap_handlers.pop(self._token, None)
        self._shared.users -= 1
        if self._shared.users == 0:
            self._bus.release(self._shared)


class NatsBus:
    def __init__(self, subject_prefix: str) -> None:
        check_subject_prefix(subject_prefix)
        self._prefix = subject_prefix
        self._router = LocalRouter()
        self._nc: NatsClient | None = None
        # By key (NATS subject).
        self._shared: dict[str, _Shared] = {}
        self._healthy = False
        self._health_handlers: list[Callable[[bool], None]] = []
        self._tokens = itertools.count()
        self._unsubscribing: set[asyncio.Task[None]] = set()
        self._closing = False

    @classmethod
    async def connect(cls, url: str, subject_prefix: str) -> NatsBus:
        """Connected to one of the comma-separated servers, or ConnectionError within CONNECT_WAIT_SECONDS."""
        bus = cls(subject_prefix)
        nc = OrderedFlushClient()
        try:
            await asyncio.wait_for(
                nc.connect(
                    [server.strip() for server in url.split(",")],
                    error_cb=bus._on_error,
                    disconnected_cb=bus._on_disconnected,
                    reconnected_cb=bus._on_reconnected,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RECONNECT_WAIT_SECONDS,
                    connect_timeout=5,
                    name="parley",
                ),
                CONNECT_WAIT_SECONDS,
            )
        except (TimeoutError, OSError) as exc:
            bus._closing = True
            await nc.close()
            raise ConnectionError(
                f"bus.url: no NATS server answered at {url} within {CONNECT_WAIT_SECONDS:g} s"
            ) from exc
        bus._nc = nc
        bus._healthy = True
        return bus

    # The Bus protocol

    async def publish(self, message: BusMessage) -> None:
        await self._client().publish(self.nats_subject(message.subject), pack(message.headers, message.data))

    async def subscribe(self, subject: str, handler: Handler, on_gap: GapHandler | None = None) -> Subscription:
        key = self.nats_subject(subject)
        local = self._router.add(subject, handler)
        return await self._attach(key, local, on_gap, exact=True)

    async def subscribe_prefix(self, prefix: str, handler: Handler, on_gap: GapHandler | None = None) -> Subscription:
        check_prefix(prefix)
        namespace, _ = split_subject(prefix)
        key = f"{self._prefix}.{namespace}.>"
        local = self._router.add_prefix(prefix, handler)
        return await self._attach(key, local, on_gap, exact=False)

    @property
    def healthy(self) -> bool:
        return self._healthy

    def on_health(self, handler: Callable[[bool], None]) -> None:
        self._health_handlers.append(handler)

    async def close(self) -> None:
        """Sends what was published and closes the connection (messages still arriving are not delivered)."""
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        for task in list(self._unsubscribing):
            task.cancel()

    # Beyond the protocol

    async def flush(self) -> None:
        """Returns once the server has everything published and subscribed so far."""
        await self._client().flush()

    def nats_subscription_count(self) -> int:
        """NATS subscriptions this process holds (shared by its local subscriptions)."""
        return len(self._shared)

    def nats_subject(self, subject: str) -> str:
        namespace, name = split_subject(subject)
        return f"{self._prefix}.{namespace}.{encode_name(name)}"

    def our_subject(self, nats_subject: str) -> str:
        _, namespace, token = nats_subject.split(".", 2)
        return f"{namespace}.{decode_name(token)}"

    # Shared NATS subscriptions

    async def _attach(self, key: str, local: Subscription, on_gap: GapHandler | None, *, exact: bool) -> Subscription:
        try:
            shared = await self._shared_subscription(key, exact)
        except BaseException:
            local.cancel()
            raise
        token = next(self._tokens)
        if on_gap is not None:
            shared.gap_handlers[token] = on_gap
        return _NatsSubscription(self, shared, local, token)

    async def _shared_subscription(self, key: str, exact: bool) -> _Shared:
        """The live NATS subscription to `key` (made if there is none), with one more user."""
        while True:
            shared = self._shared.get(key)
            if shared is None:
                shared = self._shared[key] = _Shared(key)
                try:
                    shared.nats = await self._client().subscribe(
                        key,
                        cb=self._exact_callback(key, shared) if exact else self._namespace_callback(shared),
                        pending_msgs_limit=PENDING_MESSAGES,
                        pending_bytes_limit=PENDING_BYTES,
                    )
                    await self._client().flush()  # the server has it: what is published from now on arrives
                except BaseException:
                    self.release(shared)
                    shared.ready.set_result(False)
                    raise
                shared.ready.set_result(True)
            # Those waiting for another's subscription try again if it failed or went meanwhile.
            elif not await asyncio.shield(shared.ready):
                continue
            if self._shared.get(key) is shared:
                shared.users += 1
                return shared

    def release(self, shared: _Shared) -> None:
        """Its last user went: NATS stops sending (soon); until then what arrives is dropped."""
        shared.released = True
        if self._shared.get(shared.key) is shared:
            del self._shared[shared.key]
        if shared.nats is not None and self._nc is not None and not self._nc.is_closed:
            task = asyncio.ensure_future(self._unsubscribe(shared.nats))
            self._unsubscribing.add(task)
            task.add_done_callback(self._unsubscribing.discard)

    @staticmethod
    async def _unsubscribe(subscription: NatsSubscription) -> None:
        try:
            await subscription.unsubscribe()
        except Exception:
            log.debug("a NATS unsubscription failed (the connection is going)", exc_info=True)

    def _exact_callback(self, key: str, shared: _Shared) -> Callable[[Msg], Any]:
        subject = self.our_subject(key)

        async def deliver(msg: Msg) -> None:
            if shared.released:
                return
            try:
                headers, data = unpack(msg.data)
            except ValueError:
                log.warning("a NATS message Parley did not write was ignored", extra={"subject": msg.subject})
                return
            self._router.deliver_exact(BusMessage(subject, data, headers))

        return deliver

    def _namespace_callback(self, shared: _Shared) -> Callable[[Msg], Any]:
        async def deliver(msg: Msg) -> None:
            if shared.released:
                return
            try:
                subject = self.our_subject(msg.subject)
                headers, data = unpack(msg.data)
            except ValueError:
                log.warning("a NATS message Parley did not write was ignored", extra={"subject": msg.subject})
                return
            self._router.deliver_prefixes(BusMessage(subject, data, headers))

        return deliver

    # Connection events

    async def _on_error(self, error: Exception) -> None:
        if not isinstance(error, SlowConsumerError):
            log.warning("NATS error: %s", error)
            return
        # nats-py reports each dropped message: the first of a burst tells the subscribers.
        shared = self._shared.get(error.sub.subject)
        if shared is not None and shared.nats is error.sub and not shared.telling_gap:
            shared.telling_gap = True
            log.warning("NATS dropped messages for a slow subscription", extra={"subject": error.subject})
            asyncio.get_running_loop().call_soon(self._tell_slow_consumer_gap, shared)

    def _tell_slow_consumer_gap(self, shared: _Shared) -> None:
        shared.telling_gap = False
        if not shared.released:
            _tell(shared.gap_handlers.values())

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("the NATS connection is down; reconnecting")
            self._set_health(False)

    async def _on_reconnected(self) -> None:
        # nats-py has subscribed again and flushed: what is published from now on arrives.
        log.warning("the NATS connection is back")
        self._set_health(True)
        # Whatever was published meanwhile was not delivered here.
        for shared in list(self._shared.values()):
            _tell(shared.gap_handlers.values())

    def _set_health(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        for handler in list(self._health_handlers):
            try:
                handler(healthy)
            except Exception:
                log.exception("a bus health handler failed")

    def _client(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("the NATS bus is not connected")
        return self._nc


def _tell(handlers: Iterable[GapHandler]) -> None:
    for on_gap in list(handlers):
        try:
            on_gap()
        except Exception:
            log.exception("a bus gap handler failed")
