"""Limits of the history service's API that its callers plan around."""

# Events in one AppendEvents request.
MAX_EVENTS_PER_APPEND = 1000
