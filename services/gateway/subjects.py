"""Pub/sub subjects: plaintext, never stored, with prefix wildcards.

`user:<id>` subjects reach only that user: subscribing to another user's
subject is refused, and a wildcard that covers `user:` subjects delivers only
the subscriber's own. Subscriptions are capped per connection and per user,
counting the patterns asked for; on the bus a connection holds only the ones
its other patterns do not cover (subject_cover.py).
"""

from __future__ import annotations

import re
from collections import Counter

import grpc

from parley.api.v1 import errors_pb2
from parley.gateway.v1 import gateway_pb2
from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.connections import Connection
from services.gateway.subject_cover import Route, SubjectListener
from services.runtime.bus import Bus, BusMessage, Handler
from services.runtime.errors import ServiceError, invalid_field, permission_denied

SUBJECT = re.compile(r"[A-Za-z0-9_.:@-]{1,128}")
USER_PREFIX = "user:"
BUS_PREFIX = "subject."
# `user:` subjects travel apart from the rest, as exact bus subjects only
# their owner subscribes to: publishing one never runs through other users'
# wildcards.
OWNED_BUS_PREFIX = "owned."
MAX_SUBJECTS_PER_CONNECTION = 100


def check_subject(subject: str, *, pattern: bool) -> None:
    name = subject[:-1] if pattern and subject.endswith("*") else subject
    if subject == "*" and pattern:
        return
    if not SUBJECT.fullmatch(name):
        raise invalid_field(
            "subject", "must be 1–128 characters of letters, digits and '_.:@-', optionally ending in '*'"
        )


def check_subscription_owner(pattern: str, user_id: str) -> None:
    """An exact `user:<id>` subject is its owner's alone; wildcards are filtered on delivery."""
    if pattern.startswith(USER_PREFIX) and not pattern.endswith("*") and pattern != f"{USER_PREFIX}{user_id}":
        raise permission_denied(
            errors_pb2.ERROR_REASON_NOT_OWNER, f"only user {pattern[len(USER_PREFIX) :]!r} may subscribe to {pattern!r}"
        )


def bus_subject(subject: str) -> str:
    return (OWNED_BUS_PREFIX if subject.startswith(USER_PREFIX) else BUS_PREFIX) + subject


def bus_routes(pattern: str, user_id: str) -> list[Route]:
    """What `user_id`'s subscription to `pattern` listens to on the bus.

    A wildcard covers the subscriber's own `user:` subject, if it matches, and
    no other user's.
    """
    if not pattern.endswith("*"):
        return [Route(bus_subject(pattern), prefix=False)]
    stem = pattern[:-1]
    own = f"{USER_PREFIX}{user_id}"
    exact = [Route(bus_subject(own), prefix=False)] if own.startswith(stem) else []
    prefixes = [] if stem.startswith(USER_PREFIX) else [Route(BUS_PREFIX + stem, prefix=True)]
    return exact + prefixes


def too_many_subscriptions(message: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors_pb2.ERROR_REASON_TOO_MANY_SUBSCRIPTIONS,
        f"{message}; unsubscribe from a subject first",
    )


class SubjectRouter:
    def __init__(self, bus: Bus, max_per_user: int) -> None:
        self._bus = bus
        self._max_per_user = max_per_user
        # By session id: each connection's patterns and its bus subscriptions.
        self._listeners: dict[str, SubjectListener] = {}
        # Patterns per user over all their connections on this gateway.
        self._held: Counter[str] = Counter()

    async def subscribe(self, connection: Connection, pattern: str) -> None:
        check_subject(pattern, pattern=True)
        check_subscription_owner(pattern, connection.user_id)
        listener = self._listeners.get(connection.session_id)
        if listener is not None and pattern in listener:
            return
        if len(connection.subjects) >= MAX_SUBJECTS_PER_CONNECTION:
            raise too_many_subscriptions(
                f"a connection may hold at most {MAX_SUBJECTS_PER_CONNECTION} subject subscriptions"
            )
        if self._held[connection.user_id] >= self._max_per_user:
            raise too_many_subscriptions(
                f"a user may hold at most {self._max_per_user} subject subscriptions over all their connections"
            )
        if listener is None:
            listener = SubjectListener(self._bus, _deliverer(connection))
            self._listeners[connection.session_id] = listener
        self._held[connection.user_id] += 1
        connection.subjects.add(pattern)
        await listener.listen(pattern, bus_routes(pattern, connection.user_id))

    async def unsubscribe(self, connection: Connection, pattern: str) -> None:
        listener = self._listeners.get(connection.session_id)
        if listener is not None and await listener.stop(pattern):
            self._release(connection.user_id, 1)
            if not listener:
                del self._listeners[connection.session_id]
        connection.subjects.discard(pattern)

    def unsubscribe_all(self, connection: Connection) -> None:
        # At once: one by one, each outer pattern would hand its place to the ones it covers first.
        listener = self._listeners.pop(connection.session_id, None)
        if listener is not None:
            self._release(connection.user_id, len(listener))
            listener.close()
        connection.subjects.clear()

    def _release(self, user_id: str, count: int) -> None:
        self._held[user_id] -= count
        if self._held[user_id] <= 0:
            del self._held[user_id]

    async def publish(self, subject: str, sender: str, data: object) -> None:
        check_subject(subject, pattern=False)
        event = gateway_pb2.SubjectEvent(subject=subject, sender=sender)
        event.data.CopyFrom(data)  # type: ignore[arg-type]
        await self._bus.publish(BusMessage(bus_subject(subject), wire.batch_item(event.SerializeToString()), {}))


def _deliverer(connection: Connection) -> Handler:
    """The connection's one bus handler: its covering routes never both match a message."""
    outbox = connection.outbox

    def deliver(message: BusMessage) -> None:
        outbox.put(kinds.SUBJECT, message.data)

    return deliver
