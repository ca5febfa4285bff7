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
    def __init__(self, registry: dict[str, list[Handler]], key: str, handler: Handler) -> None:
        self._registry = registry
        self._key = key
        self._handler = handler

    def cancel(self) -> None:
        handlers = self._registry.get(self._key)
        if handlers and self._handler in handlers:
            handlers.remove(self._handler)
            if not handlers:
                del self._registry[self._key]


class InProcessBus:
    """Delivers synchronously to handlers in this process; a handler that raises is logged."""

    def __init__(self) -> None:
        self._exact: dict[str, list[Handler]] = {}
        self._prefixes: dict[str, list[Handler]] = {}

    def publish(self, message: BusMessage) -> None:
        for handler in list(self._exact.get(message.subject, ())):
            self._deliver(handler, message)
        for prefix, handlers in list(self._prefixes.items()):
            if message.subject.startswith(prefix):
                for handler in list(handlers):
                    self._deliver(handler, message)

    def subscribe(self, subject: str, handler: Handler) -> Subscription:
        self._exact.setdefault(subject, []).append(handler)
        return _InProcessSubscription(self._exact, subject, handler)

    def subscribe_prefix(self, prefix: str, handler: Handler) -> Subscription:
        self._prefixes.setdefault(prefix, []).append(handler)
        return _InProcessSubscription(self._prefixes, prefix, handler)

    @staticmethod
    def _deliver(handler: Handler, message: BusMessage) -> None:
        try:
            handler(message)
        except Exception:
            log.exception("bus handler failed", extra={"subject": message.subject})
