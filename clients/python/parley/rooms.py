"""Room handles: events in, events out, subscriptions, presence."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections import defaultdict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from parley.errors import UnavailableError
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from parley.room.v1 import room_pb2
from parley.values import to_struct, to_value

if TYPE_CHECKING:
    from parley.handlers import HandlerRunner
    from parley.outbox import Send
    from parley.room_calls import RoomCalls
    from parley.sender import Sender

BACKLOG_LIMIT = 1000


@dataclasses.dataclass(frozen=True)
class RoomEvent:
    """An event as delivered: the envelope and the JSON payload as Python values."""

    room_id: str
    event: str
    data: Any
    sender: str
    time_ms: int
    seq: int
    handle: str
    meta: dict[str, Any]
    epoch: str = ""
    # From the history log only: when the payload was last edited (ms), and
    # whether the event was deleted (then data is None and meta empty).
    edit_time_ms: int = 0
    deleted: bool = False


@dataclasses.dataclass(frozen=True)
class Published:
    """Where a published event landed."""

    seq: int
    handle: str


@dataclasses.dataclass(frozen=True)
class EventChange:
    """A kept event its sender edited (`data` is the new payload) or deleted (`data` is None)."""

    room_id: str
    handle: str
    seq: int
    event: str
    sender: str
    deleted: bool
    data: Any
    time_ms: int
    # The change's own place in the room's log (after `seq`).
    change_seq: int = 0


@dataclasses.dataclass(frozen=True)
class Signal:
    """An ephemeral signal from another member (typing, a cursor), or its end (`expired`)."""

    room_id: str
    subject: str
    sender: str
    data: Any
    expired: bool
    # Until it expires unless renewed (0 when expired).
    ttl_ms: int
    # The sender's connection (one user may signal from several).
    session_id: str = ""


Handler = Callable[[RoomEvent], Awaitable[None] | None]
SignalHandler = Callable[[Signal], Awaitable[None] | None]
ChangeHandler = Callable[[EventChange], Awaitable[None] | None]
PresenceHandler = Callable[[str, bool], Awaitable[None] | None]


def room_event(event: gateway_pb2.Event) -> RoomEvent:
    return RoomEvent(
        room_id=event.room_id,
        event=event.event,
        data=json_format.MessageToDict(event.payload) if event.HasField("payload") else None,
        sender=event.sender,
        time_ms=event.time_ms,
        seq=event.seq,
        handle=event.handle,
        meta=json_format.MessageToDict(event.meta) if event.HasField("meta") else {},
        epoch=event.epoch,
    )


def logged_event(room_id: str, epoch: str, event: history_pb2.LoggedEvent) -> RoomEvent:
    return RoomEvent(
        room_id=room_id,
        event=event.event,
        data=json_format.MessageToDict(event.payload) if event.HasField("payload") else None,
        sender=event.sender,
        time_ms=event.time_ms,
        seq=event.seq,
        handle=event.handle,
        meta=json_format.MessageToDict(event.meta) if event.HasField("meta") else {},
        epoch=epoch,
        edit_time_ms=event.edit_time_ms,
        deleted=event.deleted,
    )


def event_change(change: gateway_pb2.EventChanged) -> EventChange:
    return EventChange(
        room_id=change.room_id,
        handle=change.handle,
        seq=change.seq,
        event=change.event,
        sender=change.sender,
        deleted=change.kind == gateway_pb2.EventChanged.KIND_DELETED,
        data=json_format.MessageToDict(change.payload) if change.HasField("payload") else None,
        time_ms=change.change_time_ms,
        change_seq=change.change_seq,
    )


class Room:
    """A room this client has joined. Get one with `await client.join(room_id)`."""

    def __init__(
        self,
        info: room_pb2.Room,
        subscriptions: Sequence[str],
        sender: Sender,
        calls: RoomCalls,
        runner: HandlerRunner,
        forget: Callable[[str], None],
    ) -> None:
        self._sender = sender
        self._calls = calls
        self._runner = runner
        self._forget = forget
        self.info = info
        self.subscriptions = list(subscriptions)
        self._handlers: dict[str, list[Handler]] = defaultdict(list)
        self._any: list[Handler] = []
        self._presence: list[PresenceHandler] = []
        self._changes: dict[bool, list[ChangeHandler]] = defaultdict(list)
        self._signals: list[SignalHandler] = []
        self._queues: list[asyncio.Queue[RoomEvent | None]] = []
        # Events that arrive before the first `events()` iterator starts (e.g.
        # the echo of a trigger) are kept for it, up to a bound.
        self._backlog: deque[RoomEvent] | None = deque(maxlen=BACKLOG_LIMIT)
        # Until the join has returned to its caller, handler calls wait here: what
        # arrives with the join reaches handlers registered right after it.
        self._held: list[tuple[Callable[[], Sequence[Callable[..., Any]]], tuple[Any, ...]]] | None = []
        self.joined = True
        # Left for good (or the stream ended and the client does not reconnect): iterators have ended.
        self.closed = False
        # Where this client is in the room's log: a later join resumes from here.
        self.epoch = ""
        self.last_seq = 0
        # After a resume: True when every missed kept event was replayed.
        self.recovered = False

    def continue_from(self, before: Room) -> None:
        """A resumed room: the same place in the log and the same handlers as before the stream ended."""
        self.epoch, self.last_seq = before.epoch, before.last_seq
        self._handlers, self._any, self._presence = before._handlers, before._any, before._presence
        self._changes, self._signals = before._changes, before._signals

    @property
    def id(self) -> str:
        return self.info.room_id

    def on(self, event: str, handler: Handler) -> None:
        """Calls `handler(event)` for each event of this name (plain or async function)."""
        self._handlers[event].append(handler)

    def on_any(self, handler: Handler) -> None:
        """Calls `handler(event)` for every event of the room."""
        self._any.append(handler)

    def on_presence(self, handler: PresenceHandler) -> None:
        """Calls `handler(user_id, joined)` when someone joins or leaves."""
        self._presence.append(handler)

    def on_edited(self, handler: ChangeHandler) -> None:
        """Calls `handler(change)` when a kept event you are subscribed to is edited."""
        self._changes[False].append(handler)

    def on_deleted(self, handler: ChangeHandler) -> None:
        """Calls `handler(change)` when a kept event you are subscribed to is deleted."""
        self._changes[True].append(handler)

    def on_ephemeral(self, handler: SignalHandler) -> None:
        """Calls `handler(signal)` for each ephemeral signal of another member, and when one expires."""
        self._signals.append(handler)

    async def events(self) -> AsyncIterator[RoomEvent]:
        """Events until the room is left: `async for ev in room.events()`.

        The first iterator also gets the events that arrived since the join
        (up to 1,000); later ones start from now. Iterators carry on across
        the client's reconnections.
        """
        if self.closed:
            return
        queue: asyncio.Queue[RoomEvent | None] = asyncio.Queue()
        if self._backlog is not None:
            for early in self._backlog:
                queue.put_nowait(early)
            self._backlog = None
        self._queues.append(queue)
        try:
            while (event := await queue.get()) is not None:
                yield event
        finally:
            self._queues.remove(queue)

    async def trigger(
        self, event: str, data: Any, *, meta: dict[str, Any] | None = None, echo: bool = True, key: str = ""
    ) -> Published:
        """Publishes one event and waits until the server has it; returns its sequence number and handle.

        While the client is reconnecting the event waits in the outbox and goes
        out once the room has been joined again; `key` (an idempotency key,
        generated when empty) makes sure it is stored once however often it is
        sent. Raises the server's error if it refused the event.
        """
        (published,) = await self.trigger_batch([(event, data, meta)], echo=echo, keys=[key] if key else None)
        return published

    async def trigger_batch(
        self,
        events: Sequence[tuple[str, Any, dict[str, Any] | None]],
        *,
        echo: bool = True,
        keys: Sequence[str] | None = None,
    ) -> list[Published]:
        """Publishes several events in one command, in order, all or none."""
        reply = await self.send_batch(events, echo=echo, keys=keys)
        return [Published(seq, handle) for seq, handle in zip(reply.publish.seqs, reply.publish.handles, strict=True)]

    def send(
        self, event: str, data: Any, *, meta: dict[str, Any] | None = None, echo: bool = True, key: str = ""
    ) -> Send:
        """Queues one event without waiting: the returned `Send` tells its status (pending, sent,
        failed) and retries; `await` it for the server's answer. See also `client.on_message_sent`."""
        return self.send_batch([(event, data, meta)], echo=echo, keys=[key] if key else None)

    def send_batch(
        self,
        events: Sequence[tuple[str, Any, dict[str, Any] | None]],
        *,
        echo: bool = True,
        keys: Sequence[str] | None = None,
    ) -> Send:
        outgoing = [
            gateway_pb2.OutgoingEvent(event=name, payload=to_value(data), meta=to_struct(meta))
            for name, data, meta in events
        ]
        for event, key in zip(outgoing, keys or (), strict=False):
            event.idempotency_key = key
        return self._sender.send(
            self.id, publish=gateway_pb2.PublishCommand(room_id=self.id, events=outgoing, no_echo=not echo)
        )

    async def edit(self, handle: str, data: Any) -> EventChange:
        """Replaces the payload of a kept event you sent (it must pass the event's schema)."""
        reply = await self._sender.send(
            self.id, edit=gateway_pb2.EditCommand(room_id=self.id, handle=handle, payload=to_value(data))
        )
        return event_change(reply.changed)

    async def delete(self, handle: str) -> EventChange:
        """Deletes a kept event you sent; the log keeps a tombstone in its place."""
        reply = await self._sender.send(self.id, delete=gateway_pb2.DeleteCommand(room_id=self.id, handle=handle))
        return event_change(reply.changed)

    async def send_ephemeral(self, subject: str, data: Any = None) -> None:
        """Signals the other members (e.g. subject "typing"); never stored, never queued (fails at once
        while the client is not connected). It expires after the server's ephemeral_ttl_seconds (5 by
        default) unless sent again."""
        await self._sender.command(
            wait=False, ephemeral=gateway_pb2.EphemeralCommand(room_id=self.id, subject=subject, data=to_value(data))
        )

    async def subscribe(self, *events: str) -> list[str]:
        """Receives these events too; returns the subscriptions now in force."""
        reply = await self._sender.command(
            wait=False, subscribe=gateway_pb2.SubscribeCommand(room_id=self.id, events=events)
        )
        self.subscriptions = list(reply.subscription.subscriptions)
        return self.subscriptions

    async def subscribe_all(self) -> list[str]:
        """Receives every event of the room."""
        reply = await self._sender.command(
            wait=False, subscribe=gateway_pb2.SubscribeCommand(room_id=self.id, all=True)
        )
        self.subscriptions = list(reply.subscription.subscriptions)
        return self.subscriptions

    async def unsubscribe(self, *events: str) -> list[str]:
        """Stops receiving these events (all of them when none are named)."""
        command = gateway_pb2.UnsubscribeCommand(room_id=self.id, events=events, all=not events)
        reply = await self._sender.command(wait=False, unsubscribe=command)
        self.subscriptions = list(reply.subscription.subscriptions)
        return self.subscriptions

    async def participants(self) -> dict[str, list[str]]:
        """Who is in the room: user id -> their connections (session ids)."""
        return await self._calls.participants(self.id)

    async def history(self, *, limit: int = 50, before: int = 0, event: str = "") -> list[RoomEvent]:
        """Kept events newest first: up to `limit`, below sequence `before` (0: from the newest)."""
        return await self._calls.history(self.id, limit=limit, before=before, event=event)

    async def get_history(self, event: str = "", start: int = 0, end: int = 50) -> list[RoomEvent]:
        """Kept events by offset, newest first: `start` 0 is the newest (of `event`, or of all)."""
        return await self._calls.get_history(self.id, event, start, end)

    async def leave(self) -> None:
        """Leaves the room; `events()` iterators end (also while reconnecting: it is not joined again)."""
        if self.joined:
            with contextlib.suppress(UnavailableError):  # the stream ended meanwhile, and the membership with it
                await self._sender.command(wait=False, leave=gateway_pb2.LeaveCommand(room_id=self.id))
        self._forget(self.id)
        self.close()

    def suspend(self) -> None:
        """The stream ended and the client is joining again: `joined` is False until it has."""
        self.joined = False

    def close(self) -> None:
        self.joined = False
        self.closed = True
        for queue in self._queues:
            queue.put_nowait(None)

    def dispatch(self, event: gateway_pb2.Event) -> None:
        delivered = room_event(event)
        if delivered.seq > self.last_seq:
            self.last_seq, self.epoch = delivered.seq, delivered.epoch or self.epoch
        if self._backlog is not None:
            self._backlog.append(delivered)
        for queue in self._queues:
            queue.put_nowait(delivered)
        self._notify(lambda: [*self._handlers.get(delivered.event, ()), *self._any], delivered)

    def dispatch_change(self, change: gateway_pb2.EventChanged) -> None:
        if change.change_seq > self.last_seq:
            self.last_seq = change.change_seq
        changed = event_change(change)
        self._notify(lambda: self._changes[changed.deleted], changed)

    def dispatch_signal(self, signal: gateway_pb2.Ephemeral) -> None:
        received = Signal(
            room_id=signal.room_id,
            subject=signal.subject,
            sender=signal.sender,
            data=json_format.MessageToDict(signal.data) if signal.HasField("data") else None,
            expired=signal.expired,
            ttl_ms=signal.ttl_ms,
            session_id=signal.session_id,
        )
        self._notify(lambda: self._signals, received)

    def dispatch_presence(self, user_id: str, joined: bool) -> None:
        self._notify(lambda: self._presence, user_id, joined)

    def _notify(self, handlers: Callable[[], Sequence[Callable[..., Any]]], *args: Any) -> None:
        """Calls the handlers registered by now, or, while the join is returning, by the time it has."""
        if self._held is not None:
            self._held.append((handlers, args))
            return
        self._runner.call(handlers(), *args)

    def release_held(self) -> None:
        """Once the code that joined has registered its handlers, they get what arrived with the join."""
        held, self._held = self._held or [], None
        for handlers, args in held:
            self._notify(handlers, *args)
