"""Limits of the history service's API that its callers plan around."""

from services.runtime.errors import invalid_field

# Events in one AppendEvents request.
MAX_EVENTS_PER_APPEND = 1000
# Characters in an idempotency key (the SDKs' are 32).
MAX_IDEMPOTENCY_KEY = 128


def check_idempotency_key(key: str, field: str) -> None:
    """At most MAX_IDEMPOTENCY_KEY printable characters: every store keeps and indexes it."""
    if len(key) > MAX_IDEMPOTENCY_KEY or not key.isprintable():
        raise invalid_field(field, f"must be at most {MAX_IDEMPOTENCY_KEY} printable characters")
