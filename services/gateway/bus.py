"""The message bus between publishers and the connections that listen.

An interface with (for now) one implementation, in process. Subjects are
dotted names ("room.chat", "subject.presence:lobby"); a subscription is to
one subject or to every subject starting with a prefix.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
from collections.abc import Callable
from typing import Protocol

from services.gateway.prefix_tree import PrefixTree

log = logging.getLogger("parley.bus")


@dataclasses.dataclass(frozen=True)
class BusMessage:
    subject: str
    # Encoded once by the publisher; receivers pass it on as it is.
    data: bytes
    # Routing facts receivers need without decoding `data`.
    headers: dict[str, str]


Handler = Callable[[BusMessage], None]


class Subscription(Protocol):
    def cancel(self) -> None: ...


class Bus(Protocol):
    def publish(self, message: BusMessage) -> None: ...

    def subscribe(self, subject: str, handler: Handler) -> Subscription: ...

    def subscribe_prefix(self, prefix: str, handler: Handler) -> Subscription: ...


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


class InProcessBus:
    """Delivers synchronously to handlers in this process; a handler that raises is logged.

    Prefix subscriptions live in a prefix tree, so a publish costs the length
    of its subject plus its deliveries, not the number of wildcards held.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[int, Handler]] = {}
        # Public so that its size can be inspected (nothing outlives its cancel).
        self.prefixes: PrefixTree[Handler] = PrefixTree()
        self._tokens = itertools.count()

    def publish(self, message: BusMessage) -> None:
        exact = self._exact.get(message.subject)
        # Gathered first: a handler may subscribe or cancel while we deliver.
        handlers = [*exact.values()] if exact else []
        handlers += self.prefixes.matching(message.subject)
        for handler in handlers:
            self._deliver(handler, message)

    def subscription_count(self) -> int:
        """Subscriptions not yet cancelled, exact and prefix."""
        return sum(map(len, self._exact.values())) + self.prefixes.value_count()

    def subscribe(self, subject: str, handler: Handler) -> Subscription:
        return _ExactSubscription(self._exact, subject, next(self._tokens), handler)

    def subscribe_prefix(self, prefix: str, handler: Handler) -> Subscription:
        # A namespace first keeps prefixes expressible on a token-based bus (NATS `ns.>`).
        if "." not in prefix:
            raise ValueError(f"a prefix subscription names its namespace first: {prefix!r}")
        return _PrefixSubscription(self.prefixes, prefix, next(self._tokens), handler)

    @staticmethod
    def _deliver(handler: Handler, message: BusMessage) -> None:
        try:
            handler(message)
        except Exception:
            log.exception("bus handler failed", extra={"subject": message.subject})
