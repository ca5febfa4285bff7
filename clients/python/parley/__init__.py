"""Parley: the Python client for the Parley realtime messaging backend.

Start with `Client`; errors raised by it derive from `ParleyError`.
"""

from parley.accounts import Device, Me, User
from parley.backoff import Backoff
from parley.client import Client
from parley.connection import ConnectionState, Heartbeat
from parley.device_identity import DeviceIdentity
from parley.errors import (
    AlreadyExistsError,
    FileLostError,
    NotFoundError,
    ParleyError,
    PayloadTooLargeError,
    PermissionDeniedError,
    QuotaExceededError,
    RateLimitedError,
    RoomFullError,
    SlowConsumerError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
)
from parley.files import FileRef
from parley.messages import SubjectMessage
from parley.outbox import OutboxFullError, Send, SendStatus
from parley.peers import Peer
from parley.questions import Question
from parley.rooms import EventChange, Published, Room, RoomEvent, Signal

__all__ = [
    "AlreadyExistsError",
    "Backoff",
    "Client",
    "ConnectionState",
    "Device",
    "DeviceIdentity",
    "EventChange",
    "FileLostError",
    "FileRef",
    "Heartbeat",
    "Me",
    "NotFoundError",
    "OutboxFullError",
    "ParleyError",
    "PayloadTooLargeError",
    "Peer",
    "PermissionDeniedError",
    "Published",
    "Question",
    "QuotaExceededError",
    "RateLimitedError",
    "Room",
    "RoomEvent",
    "RoomFullError",
    "Send",
    "SendStatus",
    "Signal",
    "SlowConsumerError",
    "SubjectMessage",
    "UnauthenticatedError",
    "UnavailableError",
    "User",
    "ValidationError",
]
