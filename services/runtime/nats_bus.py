"""The bus on core NATS (nats-py): several processes, one bus.

Our subjects ("room.chat.2024", "subject.presence:lobby") become NATS subjects
`<subject_prefix>.<namespace>.<name as one token>`: the name is kept as it is
when it is made of [A-Za-z0-9_:@-] only, and otherwise written `~` + base32
of its UTF-8 (a kept name never starts with `~`, so the two cannot meet).

Each exact subject is one NATS subscription per process, however many local
handlers share it; a prefix subscription listens to its whole namespace
(`<prefix>.<namespace>.>`), once per namespace, and prefixes are matched here.
Messages NATS drops for this process (a handler that fell behind: a slow
consumer; or everything published while the connection was down) are gaps:
the subscriptions concerned are told through `on_gap`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import re
from collections.abc import Callable
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription as NatsSubscription
from nats.errors import SlowConsumerError

from services.runtime.bus import BusMessage, GapHandler, Handler, LocalRouter, Subscription, check_prefix

log = logging.getLogger("parley.bus")

_PLAIN = re.compile(r"[A-Za-z0-9_:@-]+")
# What a NATS subscription may hold before this process counts as a slow consumer.
PENDING_MESSAGES = 1_000_000
PENDING_BYTES = 512 * 1024 * 1024


def encode_name(name: str) -> str:
    """A subject name as one NATS token (injective)."""
    if _PLAIN.fullmatch(name):
        return name
    return "~" + base64.b32encode(name.encode()).decode().rstrip("=").lower()


def decode_name(token: str) -> str:
    if not token.startswith("~"):
        return token
    body = token[1:].upper()
    return base64.b32decode(body + "=" * (-len(body) % 8)).decode()


def split_subject(subject: str) -> tuple[str, str]:
    namespace, dot, name = subject.partition(".")
    if not dot or not _PLAIN.fullmatch(namespace):
        raise ValueError(f"a bus subject is <namespace>.<name>: {subject!r}")
    return namespace, name


class _Shared:
    """One NATS subscription and the local subscriptions that use it."""

    def __init__(self) -> None:
        self.users = 0
        self.gap_handlers: dict[int, GapHandler] = {}
        self.nats: NatsSubscription | None = None
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class _NatsSubscription:
    def __init__(self, bus: NatsBus, key: str, local: Subscription, token: int) -> None:
        self._bus = bus
        self._key = key
        self._local: Subscription | None = local
        self._token = token

    def cancel(self) -> None:
        if self._local is None:
            return
        self._local.cancel()
        self._local = None
        self._bus.release(self._key, self._token)


class NatsBus:
    def __init__(self, subject_prefix: str) -> None:
        if not _PLAIN.fullmatch(subject_prefix) or ":" in subject_prefix:
            raise ValueError(f"bus.subject_prefix must be letters, digits, '_' or '-': {subject_prefix!r}")
        self._prefix = subject_prefix
        self._router = LocalRouter()
        self._nc: NatsClient | None = None
        # By NATS subject ("<prefix>.room.chat" or "<prefix>.subject.>").
        self._shared: dict[str, _Shared] = {}
        self._healthy = False
        self._health_handlers: list[Callable[[bool], None]] = []
        self._tokens = 0
        self._unsubscribing: set[asyncio.Task[None]] = set()
        self._closing = False

    @classmethod
    async def connect(cls, url: str, subject_prefix: str) -> NatsBus:
        bus = cls(subject_prefix)
        bus._nc = await nats.connect(
            url.split(","),
            error_cb=bus._on_error,
            disconnected_cb=bus._on_disconnected,
            reconnected_cb=bus._on_reconnected,
            allow_reconnect=True,
            max_reconnect_attempts=-1,
            reconnect_time_wait=0.5,
            connect_timeout=5,
            name="parley",
        )
        bus._healthy = True
        return bus

    # The Bus protocol

    async def publish(self, message: BusMessage) -> None:
        headers = dict(message.headers) if message.headers else None
        await self._client().publish(self.nats_subject(message.subject), message.data, headers=headers)

    async def subscribe(self, subject: str, handler: Handler, on_gap: GapHandler | None = None) -> Subscription:
        split_subject(subject)
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
        self._closing = True
        if self._nc is not None and not self._nc.is_closed:
            await self._nc.close()
        for task in list(self._unsubscribing):
            task.cancel()

    # Subjects

    def nats_subject(self, subject: str) -> str:
        namespace, name = split_subject(subject)
        return f"{self._prefix}.{namespace}.{encode_name(name)}"

    def our_subject(self, nats_subject: str) -> str:
        _, namespace, token = nats_subject.split(".", 2)
        return f"{namespace}.{decode_name(token)}"

    # Shared NATS subscriptions

    async def _attach(self, key: str, local: Subscription, on_gap: GapHandler | None, *, exact: bool) -> Subscription:
        self._tokens += 1
        token = self._tokens
        shared = self._shared.get(key)
        if shared is None:
            shared = self._shared[key] = _Shared()
            shared.users += 1
            try:
                cb = self._exact_callback(key) if exact else self._namespace_callback
                shared.nats = await self._client().subscribe(
                    key, cb=cb, pending_msgs_limit=PENDING_MESSAGES, pending_bytes_limit=PENDING_BYTES
                )
                await self._client().flush()  # the server has it: what is published from now on arrives
            except BaseException as exc:
                local.cancel()
                self._release_shared(key, shared)
                shared.ready.set_exception(exc)
                shared.ready.exception()
                raise
            shared.ready.set_result(None)
        else:
            shared.users += 1
            try:
                await asyncio.shield(shared.ready)
            except BaseException:
                local.cancel()
                self._release_shared(key, shared)
                raise
        if on_gap is not None:
            shared.gap_handlers[token] = on_gap
        return _NatsSubscription(self, key, local, token)

    def release(self, key: str, token: int) -> None:
        shared = self._shared.get(key)
        if shared is not None:
            shared.gap_handlers.pop(token, None)
            self._release_shared(key, shared)

    def _release_shared(self, key: str, shared: _Shared) -> None:
        shared.users -= 1
        if shared.users > 0 or self._shared.get(key) is not shared:
            return
        del self._shared[key]
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

    def _exact_callback(self, key: str) -> Callable[[Msg], Any]:
        subject = self.our_subject(key)

        async def deliver(msg: Msg) -> None:
            self._router.deliver_exact(BusMessage(subject, msg.data, msg.headers or {}))

        return deliver

    async def _namespace_callback(self, msg: Msg) -> None:
        self._router.deliver_prefixes(BusMessage(self.our_subject(msg.subject), msg.data, msg.headers or {}))

    # Connection events

    async def _on_error(self, error: Exception) -> None:
        if isinstance(error, SlowConsumerError):
            for shared in self._shared.values():
                if shared.nats is error.sub or (shared.nats is not None and shared.nats._id == error.sid):
                    log.warning("NATS dropped messages for a slow subscription", extra={"subject": error.subject})
                    _tell(shared.gap_handlers.values())
            return
        log.warning("NATS error: %s", error)

    async def _on_disconnected(self) -> None:
        if not self._closing:
            log.warning("the NATS connection is down; reconnecting")
            self._set_health(False)

    async def _on_reconnected(self) -> None:
        log.warning("the NATS connection is back")
        self._set_health(True)
        # Whatever was published meanwhile was not delivered here.
        for shared in list(self._shared.values()):
            _tell(shared.gap_handlers.values())

    def _set_health(self, healthy: bool) -> None:
        if healthy == self._healthy:
            return
        self._healthy = healthy
        for handler in self._health_handlers:
            handler(healthy)

    def _client(self) -> NatsClient:
        if self._nc is None:
            raise RuntimeError("the NATS bus is not connected")
        return self._nc


def _tell(handlers: Any) -> None:
    for on_gap in list(handlers):
        try:
            on_gap()
        except Exception:
            log.exception("a bus gap handler failed")
