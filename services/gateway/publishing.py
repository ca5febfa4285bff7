"""Publishing into rooms: checks, limits, hooks, then the append (the history service announces it)."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Sequence

import grpc
from google.protobuf import json_format

from parley.api.v1 import errors_pb2
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from parley.hooks import PublishContext, Transform
from parley.values import to_value
from services.gateway.append_pipeline import AppendPipeline, Placed
from services.gateway.feeds import RoomFeeds
from services.gateway.history_client import HistoryAppender
from services.history.limits import check_idempotency_key
from services.room.definitions import EVENT_NAME
from services.room.rules import ANY_EVENT, EventRules, to_json
from services.runtime.config import GatewayConfig
from services.runtime.errors import ServiceError, invalid_field, rate_limited
from services.runtime.hooks import Hooks
from services.runtime.ratelimit import RateLimiter
from services.runtime.request_checks import RequestBudget, check_json, check_request, null_if_unset
from services.runtime.uncancellable import start

log = logging.getLogger("parley.hooks")
SYSTEM_SENDER = "system"


def payload_too_large(size: int, limit: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors_pb2.ERROR_REASON_PAYLOAD_TOO_LARGE,
        f"payload is {size} bytes; the limit is {limit}",
        limit=str(limit),
    )


class Publisher:
    def __init__(self, config: GatewayConfig, feeds: RoomFeeds, hooks: Hooks, history: HistoryAppender) -> None:
        self._config = config
        self._appends = AppendPipeline(history)
        self._feeds = feeds
        self._hooks = hooks
        self._limit = RateLimiter(config.events_per_window, float(config.window_seconds))

    async def start_from_client(
        self,
        rules: EventRules,
        room_id: str,
        events: Sequence[gateway_pb2.OutgoingEvent],
        user_id: str,
        session_id: str,
        no_echo: bool,
        within: str,
    ) -> asyncio.Future[gateway_pb2.PublishResult]:
        """Checks a client's publish and queues its append; the future gives the result once it is durable.

        All of `events` or none: each is checked before any is sent. The cheap
        limits (count, names, sizes, the sender's rate) come first, so that a
        flood of big publishes is refused before any payload is walked;
        `within` names where the events sit in the request ("publish.events").
        A connection's publishes to a room take sequences in the order this is
        called, whenever their results come.
        """
        if not events:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT, errors_pb2.ERROR_REASON_VALIDATION_FAILED, "events: is empty"
            )
        if len(events) > self._config.events_per_window:
            raise ServiceError(
                grpc.StatusCode.INVALID_ARGUMENT,
                errors_pb2.ERROR_REASON_VALIDATION_FAILED,
                f"events: at most {self._config.events_per_window} in one publish",
                field="events",
            )
        for event in events:
            check_event(event)
            self._check_size(event)
        wait = self._limit.try_acquire(user_id, len(events))
        if wait:
            raise rate_limited(
                f"more than {self._config.events_per_window} events in {self._config.window_seconds}s", wait
            )
        # All the events within one request's budget: the command walks no more than any other.
        budget = RequestBudget()
        for i, event in enumerate(events):
            check_request(event, f"{within}[{i}]", budget=budget)
        for event in events:
            rules.check(event.event, event.payload)
        if self._hooks.has("before_publish"):
            events = [await self.screen(e, room_id, user_id, session_id) for e in events]
        return self.submit(rules, room_id, events, user_id, session_id=session_id, no_echo=no_echo)

    async def publish(
        self,
        rules: EventRules,
        room_id: str,
        events: Sequence[gateway_pb2.OutgoingEvent],
        sender: str,
    ) -> gateway_pb2.PublishResult:
        """A backend's publish: appended, and answered once durable; no checks (the caller made them)."""
        return await asyncio.shield(self.submit(rules, room_id, events, sender))

    def submit(
        self,
        rules: EventRules,
        room_id: str,
        events: Sequence[gateway_pb2.OutgoingEvent],
        sender: str,
        *,
        session_id: str = "",
        no_echo: bool = False,
    ) -> asyncio.Future[gateway_pb2.PublishResult]:
        """Queues the append to the room's log now; no checks (callers made them).

        The history service assigns every event its sequence and announces it
        to the room's members on every gateway; events whose definition keeps
        no history take their place as transient entries. A retry (same
        idempotency key) gets the original sequence and is not delivered
        again. Nothing is delivered unless the append succeeded. An event
        without a payload is kept and delivered with JSON null. Once queued
        the sequences are taken: after_publish is told even if nobody awaits
        the result.
        """
        events = [_with_payload(outgoing) for outgoing in events]
        now_ms = int(time.time() * 1000)
        new_events = []
        for outgoing in events:
            keep_last, keep_seconds = rules.retention(outgoing.event)
            new_events.append(
                history_pb2.NewEvent(
                    event=outgoing.event,
                    payload=outgoing.payload,
                    sender=sender,
                    time_ms=now_ms,
                    handle=secrets.token_hex(8),
                    meta=outgoing.meta,
                    idempotency_key=outgoing.idempotency_key,
                    transient=not rules.keeps_history(outgoing.event),
                    keep_last=keep_last,
                    keep_seconds=keep_seconds,
                )
            )
        # The room's feed counts deliveries while this publish waits for its append (see `_result`).
        self._feeds.expect_recipients(room_id)
        placed = self._appends.submit(room_id, new_events, no_echo_session=session_id if no_echo else "")
        if self._hooks.has("after_publish"):
            return start(self._told_after(placed, room_id, events, sender, session_id))
        result: asyncio.Future[gateway_pb2.PublishResult] = asyncio.get_running_loop().create_future()

        def finished(placed: asyncio.Future[Placed]) -> None:
            if placed.cancelled():
                self._feeds.recipients_counted(room_id)
                result.cancel()
            elif placed.exception() is not None:
                self._feeds.recipients_counted(room_id)
                result.set_exception(placed.exception())  # type: ignore[arg-type]
                result.exception()  # retrieved: a caller that went away leaves no warning behind
            else:
                result.set_result(self._result(room_id, placed.result()))

        placed.add_done_callback(finished)
        return result

    async def _told_after(
        self,
        placed: asyncio.Future[Placed],
        room_id: str,
        events: Sequence[gateway_pb2.OutgoingEvent],
        sender: str,
        session_id: str,
    ) -> gateway_pb2.PublishResult:
        try:
            appended = await placed
        except BaseException:
            self._feeds.recipients_counted(room_id)
            raise
        result = self._result(room_id, appended)
        for outgoing in events:
            context = _context(outgoing, room_id, sender, session_id)
            await self._hooks.notify("after_publish", context, result.recipients)
        return result

    def _result(self, room_id: str, placed: Placed) -> gateway_pb2.PublishResult:
        seqs = [event.seq for event in placed.appended]
        # On a bus that delivers in process, the events reached this gateway's members before the append returned.
        recipients = self._feeds.recipients(room_id, seqs)
        self._feeds.recipients_counted(room_id)
        return gateway_pb2.PublishResult(
            seqs=seqs, handles=[event.handle for event in placed.appended], recipients=recipients
        )

    def _check_size(self, event: gateway_pb2.OutgoingEvent) -> None:
        size = len(event.event) + event.payload.ByteSize() + event.meta.ByteSize()
        if size > self._config.max_payload_bytes:
            raise payload_too_large(size, self._config.max_payload_bytes)

    async def screen(
        self, event: gateway_pb2.OutgoingEvent, room_id: str, user_id: str, session_id: str, edit_of: str = ""
    ) -> gateway_pb2.OutgoingEvent:
        """The before_publish hook's verdict on an event (or on an edit's new payload): as is, changed, or denied."""
        if not self._hooks.has("before_publish"):
            return event
        decision = await self._hooks.decide(
            "before_publish",
            errors_pb2.ERROR_REASON_PUBLISH_DENIED,
            _context(event, room_id, user_id, session_id, edit_of),
        )
        if not isinstance(decision, Transform):
            return event
        changed = _transformed(event, decision)
        self._check_size(changed)
        return changed


def _with_payload(event: gateway_pb2.OutgoingEvent) -> gateway_pb2.OutgoingEvent:
    """The event, its payload JSON null if it was left unset."""
    if event.payload.WhichOneof("kind") is not None:
        return event
    filled = gateway_pb2.OutgoingEvent()
    filled.CopyFrom(event)
    filled.payload.CopyFrom(null_if_unset(event.payload))
    return filled


def _transformed(event: gateway_pb2.OutgoingEvent, decision: Transform) -> gateway_pb2.OutgoingEvent:
    """The event a Transform asks for, held to the rules a client's payload obeys (HOOK_FAILED if not)."""
    changed = gateway_pb2.OutgoingEvent(event=event.event, meta=event.meta)
    try:
        changed.payload.CopyFrom(to_value(decision.payload))
        if decision.meta is not None:
            changed.meta.Clear()
            changed.meta.update(decision.meta)
        check_json(changed.payload, "payload")
        check_json(changed.meta, "meta")
    except ServiceError as error:
        raise _bad_transform(error.message, **error.metadata) from None
    except (json_format.Error, TypeError, ValueError, AttributeError, RecursionError) as exc:
        raise _bad_transform(str(exc)) from exc
    return changed


def _bad_transform(why: str, **metadata: str) -> ServiceError:
    log.error("before_publish returned a Transform that cannot be published: %s", why)
    return ServiceError(
        grpc.StatusCode.INTERNAL,
        errors_pb2.ERROR_REASON_HOOK_FAILED,
        f"the before_publish hook returned a Transform that is not JSON a frame can carry: {why}",
        **metadata,
    )


def check_event(event: gateway_pb2.OutgoingEvent) -> None:
    check_event_name(event.event, "event")
    check_idempotency_key(event.idempotency_key, "idempotency_key")


def check_event_name(name: str, field: str) -> None:
    """A concrete event name (not "*"): what events and ephemeral subjects are called."""
    if name == ANY_EVENT or not EVENT_NAME.fullmatch(name):
        raise invalid_field(field, "must be 1–64 characters of letters, digits and '_.:-', not starting with '-'")


def _context(
    event: gateway_pb2.OutgoingEvent, room_id: str, user_id: str, session_id: str, edit_of: str = ""
) -> PublishContext:
    return PublishContext(
        edit_of=edit_of,
        session_id=session_id,
        user_id=user_id,
        room_id=room_id,
        event=event.event,
        payload=to_json(event.payload),
        meta=to_json(event.meta) if event.meta.fields else {},
    )
