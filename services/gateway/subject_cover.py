"""One connection's subject patterns, heard through the fewest bus subscriptions.

A connection's patterns may nest (`p*`, `pr*`, `presence:lobby`). Only the
routes that no other route of the same connection covers are subscribed on
the bus, so a publish calls each connection's handler at most once, however
many of its patterns match: in a set of prefixes none of which starts
another, at most one starts a given subject, and an exact subject a prefix
covers has no subscription of its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable
from typing import NamedTuple

from services.runtime.bus import Bus, Handler, Subscription


class Route(NamedTuple):
    """What a pattern listens to on the bus: one subject, or every subject starting with `name`."""

    name: str
    prefix: bool


def covering(routes: Iterable[Route]) -> set[Route]:
    """The routes that hear everything `routes` hear, none of them covered by another."""
    prefixes: set[str] = set()
    exact: set[str] = set()
    for route in routes:
        (prefixes if route.prefix else exact).add(route.name)
    # Sorted, a prefix comes before everything it starts, and only what it starts comes in between.
    kept: list[str] = []
    for prefix in sorted(prefixes):
        if not kept or not prefix.startswith(kept[-1]):
            kept.append(prefix)
    return {Route(name, True) for name in kept} | {Route(name, False) for name in exact if not _starts(kept, name)}


def _starts(kept: list[str], subject: str) -> bool:
    """Whether one of `kept` (sorted, none starting another) starts `subject`: only the last one not after it can."""
    at = bisect.bisect_right(kept, subject)
    return at > 0 and subject.startswith(kept[at - 1])


class SubjectListener:
    """A connection's patterns with the routes each needs, and the bus subscriptions that cover them all."""

    def __init__(self, bus: Bus, handler: Handler) -> None:
        self._bus = bus
        self._handler = handler
        self._routes: dict[str, tuple[Route, ...]] = {}
        self._subscribed: dict[Route, Subscription] = {}
        self._closed = False

    def __contains__(self, pattern: str) -> bool:
        return pattern in self._routes

    def __len__(self) -> int:
        return len(self._routes)

    async def listen(self, pattern: str, routes: Iterable[Route]) -> None:
        self._routes[pattern] = tuple(routes)
        await self._resubscribe()

    async def stop(self, pattern: str) -> bool:
        """Stops listening for `pattern` (what it covered is subscribed again); False if it was not held."""
        if self._routes.pop(pattern, None) is None:
            return False
        await self._resubscribe()
        return True

    def close(self) -> None:
        self._closed = True
        self._routes.clear()
        for subscription in self._subscribed.values():
            subscription.cancel()
        self._subscribed.clear()

    async def _resubscribe(self) -> None:
        wanted = covering(route for routes in self._routes.values() for route in routes)
        # What is new first: no message falls between two subscriptions.
        for route in wanted - self._subscribed.keys():
            subscribe = self._bus.subscribe_prefix if route.prefix else self._bus.subscribe
            subscription = await subscribe(route.name, self._handler)
            if self._closed or route in self._subscribed:
                subscription.cancel()  # closed, or subscribed by a call that overtook this one
            else:
                self._subscribed[route] = subscription
        wanted = covering(route for routes in self._routes.values() for route in routes)
        for route in self._subscribed.keys() - wanted:
            self._subscribed.pop(route).cancel()
