"""Types for server-side hooks (named in the config's [hooks] table).

A hook is a Python callable, plain or async, given as "module:function".
Deny hooks (authenticate, before_join, before_publish) fail closed: if one
raises, the request is refused with reason HOOK_FAILED. Notification hooks
(after_publish, on_connected, on_disconnected, on_joined, on_left,
on_room_created, on_room_deleted) that raise are logged and ignored.

    # myapp/hooks.py
    from parley.hooks import Deny, PublishContext, Transform

    def before_publish(ctx: PublishContext):
        if "spam" in str(ctx.payload):
            return Deny("SPAM", "no spam here")
        if ctx.event == "message":
            return Transform(payload={**ctx.payload, "text": ctx.payload["text"].strip()})
        return None  # allow as is
"""

from __future__ import annotations

import dataclasses
from typing import Any


@dataclasses.dataclass(frozen=True)
class Deny:
    """Refuse the join or publish. `reason` becomes the ErrorInfo reason (e.g. "BANNED")."""

    reason: str = ""
    message: str = ""


@dataclasses.dataclass(frozen=True)
class Transform:
    """Publish with this payload (and meta, if given) instead of the client's."""

    payload: Any
    meta: dict[str, Any] | None = None


@dataclasses.dataclass(frozen=True)
class Identity:
    """What an authenticate hook returns for an accepted token."""

    user_id: str
    device_id: str = ""


@dataclasses.dataclass(frozen=True)
class SessionContext:
    session_id: str
    user_id: str
    device_id: str


@dataclasses.dataclass(frozen=True)
class JoinContext:
    session_id: str
    user_id: str
    room_id: str


@dataclasses.dataclass(frozen=True)
class PublishContext:
    session_id: str
    user_id: str
    room_id: str
    event: str
    # The JSON payload and meta as Python values.
    payload: Any
    meta: dict[str, Any]
    # Set when this is an edit's new payload: the handle of the event being edited.
    edit_of: str = ""


@dataclasses.dataclass(frozen=True)
class RoomContext:
    room_id: str
    name: str
    creator: str
