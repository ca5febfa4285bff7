"""Parley: the Python client for the Parley realtime messaging backend.

Start with `Client`; errors raised by it derive from `ParleyError`.
"""

from parley.client import Client
from parley.device_identity import DeviceIdentity
from parley.errors import (
    AlreadyExistsError,
    NotFoundError,
    ParleyError,
    PermissionDeniedError,
    RateLimitedError,
    RoomFullError,
    SlowConsumerError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)
from parley.messages import SubjectMessage
from parley.rooms import EventChange, Published, Room, RoomEvent, Signal

__all__ = [
    "AlreadyExistsError",
    "Client",
    "DeviceIdentity",
    "EventChange",
    "NotFoundError",
    "ParleyError",
    "PermissionDeniedError",
    "Published",
    "RateLimitedError",
    "Room",
    "RoomEvent",
    "RoomFullError",
    "Signal",
    "SlowConsumerError",
    "SubjectMessage",
    "UnauthenticatedError",
    "UnavailableError",
    "ValidationError",
]
