"""Pub/sub subjects: plaintext, never stored, with prefix wildcards.

`user:<id>` subjects reach only that user: subscribing to another user's
subject is refused, and a wildcard that covers `user:` subjects delivers only
the subscriber's own. Subscriptions are capped per connection and per user.
"""

from __future__ import annotations

import re
from collections import Counter

import grpc

from parley.api.v1 import errors_pb2
from parley.gateway.v1 import gateway_pb2
from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.bus import Bus, BusMessage, Subscription
from services.gateway.connections import Connection
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


def bus_routes(pattern: str, user_id: str) -> tuple[list[str], list[str]]:
    """What `user_id`'s subscription to `pattern` listens to on the bus: (exact subjects, prefixes).

    A wildcard covers the subscriber's own `user:` subject, if it matches, and
    no other user's.
    """
    if not pattern.endswith("*"):
        return [bus_subject(pattern)], []
    stem = pattern[:-1]
    own = f"{USER_PREFIX}{user_id}"
    exact = [bus_subject(own)] if own.startswith(stem) else []
    prefixes = [] if stem.startswith(USER_PREFIX) else [BUS_PREFIX + stem]
    return exact, prefixes


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
        self._subscriptions: dict[tuple[str, str], list[Subscription]] = {}
        # Subscriptions per user over all their connections on this gateway.
        self._held: Counter[str] = Counter()

    def subscribe(self, connection: Connection, pattern: str) -> None:
        check_subject(pattern, pattern=True)
        check_subscription_owner(pattern, connection.user_id)
        key = (connection.session_id, pattern)
        if key in self._subscriptions:
            return
        if len(connection.subjects) >= MAX_SUBJECTS_PER_CONNECTION:
            raise too_many_subscriptions(
                f"a connection may hold at most {MAX_SUBJECTS_PER_CONNECTION} subject subscriptions"
            )
        if self._held[connection.user_id] >= self._max_per_user:
            raise too_many_subscriptions(
                f"a user may hold at most {self._max_per_user} subject subscriptions over all their connections"
            )
        outbox = connection.outbox

        def deliver(message: BusMessage) -> None:
            # Overlapping patterns of one connection deliver a message once.
            if connection.last_subject_message is message:
                return
            connection.last_subject_message = message
            outbox.put(kinds.SUBJECT, message.data)

        exact, prefixes = bus_routes(pattern, connection.user_id)
        self._subscriptions[key] = [
            *(self._bus.subscribe(subject, deliver) for subject in exact),
            *(self._bus.subscribe_prefix(prefix, deliver) for prefix in prefixes),
        ]
        self._held[connection.user_id] += 1
        connection.subjects.add(pattern)

    def unsubscribe(self, connection: Connection, pattern: str) -> None:
        subscriptions = self._subscriptions.pop((connection.session_id, pattern), None)
        if subscriptions is not None:
            for subscription in subscriptions:
                subscription.cancel()
            self._held[connection.user_id] -= 1
            if not self._held[connection.user_id]:
                del self._held[connection.user_id]
        connection.subjects.discard(pattern)

    def unsubscribe_all(self, connection: Connection) -> None:
        for pattern in list(connection.subjects):
            self.unsubscribe(connection, pattern)

    def publish(self, subject: str, sender: str, data: object) -> None:
        check_subject(subject, pattern=False)
        event = gateway_pb2.SubjectEvent(subject=subject, sender=sender)
        event.data.CopyFrom(data)  # type: ignore[arg-type]
        self._bus.publish(BusMessage(bus_subject(subject), wire.batch_item(event.SerializeToString()), {}))
