"""The message bus between publishers and the connections that listen.

An interface with (for now) one implementation, in process. Subjects are
dotted names ("room.chat", "subject.presence:lobby"); a subscription is to
one subject or to every subject starting with a prefix.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Protocol

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


class _InProcessSubscription:
    def __init__(self, registry: dict[str, dict[int, Handler]], key: str, handler: Handler) -> None:
        self._registry = registry
        self._key = key
        self._id = id(self)
        registry.setdefault(key, {})[self._id] = handler

    def cancel(self) -> None:
        handlers = self._registry.get(self._key)
        if handlers is not None and handlers.pop(self._id, None) is not None and not handlers:
            del self._registry[self._key]


def _namespace(subject: str) -> str:
    return subject.partition(".")[0]


class InProcessBus:
    """Delivers synchronously to handlers in this process; a handler that raises is logged.

    Prefix subscriptions are indexed by the subject's namespace (the part
    before the first "."), so room events never scan subject wildcards.
    """

    def __init__(self) -> None:
        self._exact: dict[str, dict[int, Handler]] = {}
        self._prefixes: dict[str, dict[str, dict[int, Handler]]] = {}

    def publish(self, message: BusMessage) -> None:
        exact = self._exact.get(message.subject)
        if exact:
            for handler in tuple(exact.values()):
                self._deliver(handler, message)
        by_prefix = self._prefixes.get(_namespace(message.subject))
        if by_prefix:
            for prefix, handlers in tuple(by_prefix.items()):
                if message.subject.startswith(prefix):
                    for handler in tuple(handlers.values()):
                        self._deliver(handler, message)

    def subscribe(self, subject: str, handler: Handler) -> Subscription:
        return _InProcessSubscription(self._exact, subject, handler)

    def subscribe_prefix(self, prefix: str, handler: Handler) -> Subscription:
        namespace = _namespace(prefix)
        if "." not in prefix:
            raise ValueError(f"a prefix subscription names its namespace first: {prefix!r}")
        return _InProcessSubscription(self._prefixes.setdefault(namespace, {}), prefix, handler)

    @staticmethod
    def _deliver(handler: Handler, message: BusMessage) -> None:
        try:
            handler(message)
        except Exception:
            log.exception("bus handler failed", extra={"subject": message.subject})
