"""Edits and deletes of kept events by their sender (the history service announces them to the room's members)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from google.protobuf import struct_pb2

from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from services.gateway.history_client import HistoryAppender
from services.gateway.publishing import Publisher, payload_too_large
from services.room.rules import EventRules
from services.runtime.config import GatewayConfig
from services.runtime.errors import event_not_found, invalid_field, not_author, rate_limited
from services.runtime.ratelimit import RateLimiter
from services.runtime.request_checks import check_json, null_if_unset
from services.runtime.room_stream import event_changed
from services.runtime.uncancellable import uncancellable


class EventChanges:
    """Checks a change (sender, schema, size, rate), then makes it in the log.

    Clients change their own events; a backend may change any (GatewayService.EditRoomEvent).
    """

    def __init__(self, config: GatewayConfig, history: HistoryAppender, publisher: Publisher) -> None:
        self._publisher = publisher
        self._config = config
        self._history = history
        self._limit = RateLimiter(config.events_per_window, float(config.window_seconds))

    async def edit(
        self,
        rules: EventRules,
        room_id: str,
        handle: str,
        payload: struct_pb2.Value,
        user_id: str,
        session_id: str,
        field: str,
    ) -> gateway_pb2.EventChanged:
        """A client's edit of its own event: rate limited and screened by the before_publish hook.

        `payload` is walked (JSON rules) once its rate and size allow it; `field`
        names it in the request ("edit.payload"). Left unset, it is JSON null.
        """
        self._count(user_id, handle)
        payload = null_if_unset(payload)
        stored = await self._checked_edit(rules.check, room_id, handle, payload, user_id, unchecked_field=field)
        # The before_publish hook screens the new payload too (it may deny or change it).
        proposed = gateway_pb2.OutgoingEvent(event=stored.event, payload=payload, meta=stored.meta)
        payload = (await self._publisher.screen(proposed, room_id, user_id, session_id, edit_of=handle)).payload
        request = history_pb2.EditEventRequest(room_id=room_id, handle=handle, payload=payload, editor=user_id)
        return await self._change(room_id, self._history.edit(request))

    async def delete(self, room_id: str, handle: str, user_id: str) -> gateway_pb2.EventChanged:
        """A client's delete of its own event (rate limited)."""
        self._count(user_id, handle)
        return await self.delete_by_service(room_id, handle, as_user=user_id)

    async def edit_by_service(
        self, rules: EventRules, room_id: str, handle: str, payload: struct_pb2.Value, as_user: str
    ) -> gateway_pb2.EventChanged:
        """A backend's edit, as the event's sender or (as_user empty) on its own authority."""
        payload = null_if_unset(payload)
        # Like PublishToRoom: read-only rooms too, only the schema applies.
        await self._checked_edit(rules.validate, room_id, handle, payload, as_user)
        request = history_pb2.EditEventRequest(room_id=room_id, handle=handle, payload=payload, editor=as_user)
        return await self._change(room_id, self._history.edit(request))

    async def delete_by_service(self, room_id: str, handle: str, as_user: str) -> gateway_pb2.EventChanged:
        await self._stored(room_id, handle, as_user)
        request = history_pb2.DeleteEventRequest(room_id=room_id, handle=handle, editor=as_user)
        return await self._change(room_id, self._history.delete(request))

    async def _checked_edit(
        self,
        check: Callable[[str, struct_pb2.Value], None],
        room_id: str,
        handle: str,
        payload: struct_pb2.Value,
        editor: str,
        unchecked_field: str = "",
    ) -> history_pb2.LoggedEvent:
        """The event to edit, once the new payload passed its checks (the JSON rules too if `unchecked_field`)."""
        size = payload.ByteSize()
        if size > self._config.max_payload_bytes:
            raise payload_too_large(size, self._config.max_payload_bytes)
        if unchecked_field:
            check_json(payload, unchecked_field)
        stored = await self._stored(room_id, handle, editor)
        # An event keeps its name, so the schema checked here is the one that applies.
        check(stored.event, payload)
        return stored

    async def _change(
        self, room_id: str, call: Awaitable[history_pb2.EditEventResponse | history_pb2.DeleteEventResponse]
    ) -> gateway_pb2.EventChanged:
        """Makes the change in the log, whose service announces it to the room's members.

        Once asked for, the change is made even if the caller goes away meanwhile.
        """

        async def change() -> gateway_pb2.EventChanged:
            return event_changed(room_id, (await call).event)

        return await uncancellable(change())

    def _count(self, user_id: str, handle: str) -> None:
        if not handle:
            raise invalid_field("handle", "is required")
        wait = self._limit.try_acquire(user_id)
        if wait:
            raise rate_limited(
                f"more than {self._config.events_per_window} changes in {self._config.window_seconds}s", wait
            )

    async def _stored(self, room_id: str, handle: str, editor: str) -> history_pb2.LoggedEvent:
        """The event as stored, if `editor` may change it (any event when empty: a service)."""
        if not handle:
            raise invalid_field("handle", "is required")
        stored = (await self._history.get(room_id, handle)).event
        if stored.deleted:
            raise event_not_found(room_id, handle, " (it was deleted)")
        if editor and stored.sender != editor:
            raise not_author()
        return stored
