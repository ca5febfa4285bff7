"""Pub/sub subjects: plaintext, never stored, with prefix wildcards.

`user:<id>` subjects reach only that user: subscribing to another user's
subject is refused, and a wildcard that covers `user:` subjects delivers only
the subscriber's own.
"""

from __future__ import annotations

import re

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


class SubjectRouter:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._subscriptions: dict[tuple[str, str], Subscription] = {}

    def subscribe(self, connection: Connection, pattern: str) -> None:
        check_subject(pattern, pattern=True)
        check_subscription_owner(pattern, connection.user_id)
        key = (connection.session_id, pattern)
        if key in self._subscriptions:
            return
        if len(connection.subjects) >= MAX_SUBJECTS_PER_CONNECTION:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                errors_pb2.ERROR_REASON_RATE_LIMITED,
                f"at most {MAX_SUBJECTS_PER_CONNECTION} subject subscriptions per connection",
            )
        own = f"{USER_PREFIX}{connection.user_id}"
        outbox = connection.outbox

        def deliver(message: BusMessage) -> None:
            # Overlapping patterns of one connection deliver a message once.
            if connection.last_subject_message is message:
                return
            connection.last_subject_message = message
            subject = message.subject[len(BUS_PREFIX) :]
            if subject.startswith(USER_PREFIX) and subject != own:
                return
            outbox.put(kinds.SUBJECT, message.data)

        if pattern.endswith("*"):
            subscription = self._bus.subscribe_prefix(BUS_PREFIX + pattern[:-1], deliver)
        else:
            subscription = self._bus.subscribe(BUS_PREFIX + pattern, deliver)
        self._subscriptions[key] = subscription
        connection.subjects.add(pattern)

    def unsubscribe(self, connection: Connection, pattern: str) -> None:
        subscription = self._subscriptions.pop((connection.session_id, pattern), None)
        if subscription is not None:
            subscription.cancel()
        connection.subjects.discard(pattern)

    def unsubscribe_all(self, connection: Connection) -> None:
        for pattern in list(connection.subjects):
            self.unsubscribe(connection, pattern)

    def publish(self, subject: str, sender: str, data: object) -> None:
        check_subject(subject, pattern=False)
        event = gateway_pb2.SubjectEvent(subject=subject, sender=sender)
        event.data.CopyFrom(data)  # type: ignore[arg-type]
        self._bus.publish(BusMessage(BUS_PREFIX + subject, wire.batch_item(event.SerializeToString()), {}))
