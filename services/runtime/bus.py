"""The message bus between the processes that write and the connections that listen.

A protocol with two implementations chosen by `bus.url`: in process (empty,
the embedded default) and NATS (`nats://host:port`, services/runtime/nats_bus.py).
Subjects are dotted names whose first token is a namespace ("room.chat",
"subject.presence:lobby"); the rest of a subject is a name that may itself
contain dots. A subscription is to one subject or to every subject starting
with a prefix (which names its namespace first).

`subscribe` returns once the subscription is in place: a message published
after that reaches it. A bus that may drop messages (a NATS client that fell
behind, or reconnected) calls the subscription's `on_gap`, so the subscriber
can fetch what it may have missed.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from services.runtime.prefix_tree import PrefixTree

log = logging.getLogger("parley.bus")


@dataclasses.dataclass(frozen=True)
class BusMessage:
    subject: str
    # Encoded once by the publisher; receivers pass it on as it is.
    data: bytes
    # Routing facts receivers need without decoding `data`.
    headers: Mapping[str, str]


Handler = Callable[[BusMessage], None]
# Called when messages for a subscription may have been lost.
GapHandler = Callable[[], None]


class Subscription(Protocol):
    def cancel(self) -> None:
        """Stops delivery at once (a remote unsubscription may finish later)."""


class Bus(Protocol):
    async def publish(self, message: BusMessage) -> None: ...

    async def subscribe(self, subject: str, handler: Handler, on_gap: GapHandler | None = None) -> Subscription: ...

    async def subscribe_prefix(
        self, prefix: str, handler: Handler, on_gap: GapHandler | None = None
    ) -> Subscription: ...

    @property
    def healthy(self) -> bool:
        """False while messages cannot be exchanged (a NATS connection that is down)."""

    def on_health(self, handler: Callable[[bool], None]) -> None:
        """Calls `handler(healthy)` whenever health changes."""

    async def close(self) -> None: ...


_publishing: set[asyncio.Task[None]] = set()


def publish_soon(bus: Bus, message: BusMessage) -> None:
    """Publishes from code that cannot await (a timer); messages published so keep their order."""
    task = asyncio.ensure_future(bus.publish(message))
    _publishing.add(task)
    task.add_done_callback(_published)


def _published(task: asyncio.Task[None]) -> None:
    _publishing.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("a bus message could not be published", exc_info=task.exception())


def check_prefix(prefix: str) -> None:
    # A namespace first keeps prefixes expressible on a token-based bus (NATS `ns.>`).
    if "." not in prefix:
        raise ValueError(f"a prefix subscription names its namespace first: {prefix!r}")


class _ExactSubscription:
    def __init__(self, registry: dict[str, dict[int, Handler]], subject: str, token: int, handler: Handler) -> None:
        self._registry = registry
        self._subject = subject
        self._token = token
        registry.setdefault(subject, {})[token] = handler

    def cancel(self) -> None:
        handlers = self._registry.get(self._subject)
        if handlers is not None and handlers.pop(self._token, None) is not None and not handlers:
            del self._registry[self._subject]


class _PrefixSubscription:
    def __init__(self, tree: PrefixTree[Handler], prefix: str, token: int, handler: Handler) -> None:
        self._tree = tree
        self._prefix = prefix
        self._token = token
        tree.add(prefix, token, handler)

    def cancel(self) -> None:
        self._tree.remove(self._prefix, self._token)


class LocalRouter:
    """Handlers by exact subject and by prefix, in this process.

    Prefix subscriptions live in a prefix tree, so a message costs the length
    of its subject plus its deliveries, not the number of wildcards held.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[int, Handler]] = {}
        # Public so that its size can be inspected (nothing outlives its cancel).
        self.prefixes: PrefixTree[Handler] = PrefixTree()
        self._tokens = itertools.count()

    def deliver(self, message: BusMessage) -> None:
        """Hands the message to every handler that matches it; a handler that raises is logged."""
        exact = self._exact.get(message.subject)
        # Gathered first: a handler may subscribe or cancel while we deliver.
        handlers = [*exact.values()] if exact else []
        handlers += self.prefixes.matching(message.subject)
        for handler in handlers:
            self._deliver(handler, message)

    def deliver_exact(self, message: BusMessage) -> None:
        """Only to the handlers of exactly this subject."""
        exact = self._exact.get(message.subject)
        for handler in [*exact.values()] if exact else []:
            self._deliver(handler, message)

    def deliver_prefixes(self, message: BusMessage) -> None:
        """Only to the handlers of prefixes the subject starts with."""
        for handler in self.prefixes.matching(message.subject):
            self._deliver(handler, message)

    def has_exact(self, subject: str) -> bool:
        return subject in self._exact

    def subscription_count(self) -> int:
        """Subscriptions not yet cancelled, exact and prefix."""
        return sum(map(len, self._exact.values())) + self.prefixes.value_count()

    def add(self, subject: str, handler: Handler) -> _ExactSubscription:
        return _ExactSubscription(self._exact, subject, next(self._tokens), handler)

    def add_prefix(self, prefix: str, handler: Handler) -> _PrefixSubscription:
        check_prefix(prefix)
        return _PrefixSubscription(self.prefixes, prefix, next(self._tokens), handler)

    @staticmethod
    def _deliver(handler: Handler, message: BusMessage) -> None:
        try:
            handler(message)
        except Exception:
            log.exception("bus handler failed", extra={"subject": message.subject})


class InProcessBus(LocalRouter):
    """Delivers to handlers in this process before `publish` returns; it never drops a message."""

    async def publish(self, message: BusMessage) -> None:
        self.deliver(message)

    async def subscribe(self, subject: str, handler: Handler, on_gap: GapHandler | None = None) -> Subscription:
        return self.add(subject, handler)

    async def subscribe_prefix(self, prefix: str, handler: Handler, on_gap: GapHandler | None = None) -> Subscription:
        return self.add_prefix(prefix, handler)

    @property
    def healthy(self) -> bool:
        return True

    def on_health(self, handler: Callable[[bool], None]) -> None:
        """An in-process bus is always up: the handler is never called."""

    async def close(self) -> None:
        """Nothing to close: handlers go with their subscriptions."""
