"""gRPC face of the history service."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from parley.api.v1 import errors_pb2
from parley.history.v1 import history_pb2
from services.history.announcer import LogAnnouncer
from services.history.appender import GroupCommitter
from services.history.hot import HotBuffer
from services.history.limits import MAX_EVENTS_PER_APPEND, check_idempotency_key
from services.history.log_readers import LogReaders
from services.history.mailboxes import Mailboxes
from services.history.storage import (
    Appended,
    EventRow,
    HistoryStorage,
    LogClosed,
    NewEventRow,
    Page,
    RoomRetention,
)
from services.runtime import protowire, room_stream
from services.runtime.bus import Bus, BusMessage
from services.runtime.change_feed import ChangeFeed
from services.runtime.config import HistoryConfig
from services.runtime.errors import ServiceError, event_not_found, invalid_field, not_author, not_found
from services.runtime.grpc_types import Context
from services.runtime.principal import current_principal
from services.runtime.request_checks import null_if_unset
from services.runtime.timestamps import to_timestamp
from services.runtime.uncancellable import uncancellable

MAX_ROOM_ID = 128
MAX_ROOMS_PER_RETENTION = 1000


def check_room_id(room_id: str, field: str = "room_id") -> None:
    if not room_id:
        raise invalid_field(field, "is required")
    if len(room_id) > MAX_ROOM_ID:
        raise invalid_field(field, f"must be at most {MAX_ROOM_ID} characters")


def log_closed(room_id: str) -> ServiceError:
    """The room was deleted: its log refuses appends and changes (the reason a publisher racing the deletion gets)."""
    return not_found(errors_pb2.ERROR_REASON_ROOM_NOT_FOUND, f"room {room_id!r} was deleted", room_id=room_id)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"before:{seq}".encode()).decode()


def decode_cursor(token: str) -> int:
    try:
        kind, _, seq = base64.urlsafe_b64decode(token.encode()).decode().partition(":")
        if kind != "before":
            raise ValueError(kind)
        before = int(seq)
        if not 0 <= before < 2**63:
            raise ValueError(seq)
        return before
    except (ValueError, UnicodeDecodeError) as exc:
        raise invalid_field("page_token", "is not a token this server issued") from exc


_EVENTS_FIELD = history_pb2.ListEventsResponse.EVENTS_FIELD_NUMBER
_SEQ_FIELD = history_pb2.LoggedEvent.SEQ_FIELD_NUMBER


def page_item(row: EventRow) -> bytes:
    """One `events` element of a ListEventsResponse: the stored body with its seq in front."""
    return protowire.length_delimited(_EVENTS_FIELD, protowire.uint_field(_SEQ_FIELD, row.seq) + row.body)


class HistoryServicer:
    """HistoryService; registered with `passthrough_handler` (pages are pre-encoded bytes)."""

    def __init__(
        self,
        storage: HistoryStorage,
        committer: GroupCommitter,
        config: HistoryConfig,
        hot: HotBuffer,
        bus: Bus,
        mailboxes: Mailboxes,
        readers: LogReaders,
    ) -> None:
        self._readers = readers
        # The mailbox RPCs are another part's (sealed envelopes, not logs).
        self.mailboxes = mailboxes
        self.DepositEnvelopes = mailboxes.DepositEnvelopes
        self.ListEnvelopes = mailboxes.ListEnvelopes
        self.AckEnvelopes = mailboxes.AckEnvelopes
        self._storage = storage
        self._bus = bus
        self._announcer = LogAnnouncer(bus)
        self._committer = committer
        self._config = config
        self._hot = hot
        # Set by the first SetRetention: the pruner waits for it (see Pruner).
        self.retention_received = asyncio.Event()

    async def GetLogState(
        self, request: history_pb2.GetLogStateRequest, context: Context
    ) -> history_pb2.GetLogStateResponse:
        check_room_id(request.room_id)
        self._readers.check(request.room_id, current_principal())
        row = await self._storage.log_state(request.room_id)
        if row is None:
            return history_pb2.GetLogStateResponse(state=history_pb2.LogState(room_id=request.room_id))
        return history_pb2.GetLogStateResponse(
            state=history_pb2.LogState(
                room_id=row.room_id, epoch=row.epoch, last_seq=row.last_seq, create_time=to_timestamp(row.created_at)
            )
        )

    async def AppendEvents(
        self, request: history_pb2.AppendEventsRequest, context: Context
    ) -> history_pb2.AppendEventsResponse:
        return await self.append(request)

    async def append(self, request: history_pb2.AppendEventsRequest) -> history_pb2.AppendEventsResponse:
        """AppendEvents itself; the all-in-one gateway calls it in process."""
        check_room_id(request.room_id)
        if not request.events:
            raise invalid_field("events", "is empty")
        if len(request.events) > MAX_EVENTS_PER_APPEND:
            raise invalid_field("events", f"at most {MAX_EVENTS_PER_APPEND} in one append")
        rows = []
        announced: list[tuple[str, bytes]] = []
        for i, event in enumerate(request.events):
            if not event.event:
                raise invalid_field(f"events[{i}].event", "is required")
            if not event.handle:
                raise invalid_field(f"events[{i}].handle", "is required")
            check_idempotency_key(event.idempotency_key, f"events[{i}].idempotency_key")
            time_ms = event.time_ms or int(time.time() * 1000)
            logged = history_pb2.LoggedEvent(
                event=event.event,
                payload=null_if_unset(event.payload),
                sender=event.sender,
                time_ms=time_ms,
                handle=event.handle,
                meta=event.meta,
            )
            body = logged.SerializeToString()
            announced.append((event.event, room_stream.unsequenced_event(request.room_id, logged)))
            rows.append(
                NewEventRow(
                    event=event.event,
                    sender=event.sender,
                    handle=event.handle,
                    body=body,
                    idempotency_key=event.idempotency_key,
                    transient=event.transient,
                    time_ms=time_ms,
                    keep_last=event.keep_last,
                    keep_seconds=event.keep_seconds,
                )
            )

        async def announce(epoch: str, appended: list[Appended]) -> None:
            await self._announcer.appended(request.room_id, epoch, announced, appended, request.no_echo_session)

        try:
            epoch, appended = await self._committer.append(request.room_id, rows, announce)
        except LogClosed:
            raise log_closed(request.room_id) from None
        return history_pb2.AppendEventsResponse(
            epoch=epoch,
            appended=[history_pb2.AppendedEvent(seq=a.seq, handle=a.handle, duplicate=a.duplicate) for a in appended],
        )

    async def EditEvent(self, request: history_pb2.EditEventRequest, context: Context) -> history_pb2.EditEventResponse:
        return await self.edit(request)

    async def edit(self, request: history_pb2.EditEventRequest) -> history_pb2.EditEventResponse:
        """EditEvent itself; the all-in-one gateway calls it in process."""

        def change(event: history_pb2.LoggedEvent, now_ms: int) -> None:
            event.payload.CopyFrom(null_if_unset(request.payload))
            event.edit_time_ms = now_ms

        return history_pb2.EditEventResponse(
            event=await self._rewrite(request.room_id, request.handle, request.editor, change)
        )

    async def DeleteEvent(
        self, request: history_pb2.DeleteEventRequest, context: Context
    ) -> history_pb2.DeleteEventResponse:
        return await self.delete(request)

    async def delete(self, request: history_pb2.DeleteEventRequest) -> history_pb2.DeleteEventResponse:
        """DeleteEvent itself; the all-in-one gateway calls it in process."""

        def tombstone(event: history_pb2.LoggedEvent, now_ms: int) -> None:
            event.ClearField("payload")
            event.ClearField("meta")
            event.deleted = True
            event.edit_time_ms = now_ms

        return history_pb2.DeleteEventResponse(
            event=await self._rewrite(request.room_id, request.handle, request.editor, tombstone)
        )

    async def SetRetention(
        self, request: history_pb2.SetRetentionRequest, context: Context
    ) -> history_pb2.SetRetentionResponse:
        return await self.set_retention(request)

    async def set_retention(self, request: history_pb2.SetRetentionRequest) -> history_pb2.SetRetentionResponse:
        """SetRetention itself; the all-in-one gateway calls it in process."""
        if len(request.rooms) > MAX_ROOMS_PER_RETENTION:
            raise invalid_field("rooms", f"at most {MAX_ROOMS_PER_RETENTION} in one call")
        policies = []
        for i, room in enumerate(request.rooms):
            check_room_id(room.room_id, f"rooms[{i}].room_id")
            named = {}
            for j, event in enumerate(room.events):
                if not event.event:
                    raise invalid_field(f"rooms[{i}].events[{j}].event", "is required")
                named[event.event] = (event.keep_last, event.keep_seconds)
            policies.append(RoomRetention(room.room_id, named, (room.other.keep_last, room.other.keep_seconds)))
        await self._storage.set_retention(policies)
        self.retention_received.set()
        return history_pb2.SetRetentionResponse()

    async def DropLog(self, request: history_pb2.DropLogRequest, context: Context) -> history_pb2.DropLogResponse:
        return await self.drop_log(request)

    async def drop_log(self, request: history_pb2.DropLogRequest) -> history_pb2.DropLogResponse:
        """DropLog itself: the room's log is erased, and then closed, or open for a new epoch."""
        check_room_id(request.room_id)
        if request.close and request.reopen_only:
            raise invalid_field("reopen_only", "cannot be combined with close")
        room_id, close, reopen_only = request.room_id, request.close, request.reopen_only

        async def commit() -> int:
            # Appends and changes take turns with the drop: those committed before it
            # are erased with it, later ones start the new log or, once it is closed,
            # are refused. The hot buffer follows in commit order, as it does for them
            # (a reopened log held nothing to forget).
            async with self._hot.commit_order:
                if reopen_only:
                    return await self._storage.reopen_log(room_id)
                dropped = await self._storage.drop_log(room_id, close=close)
                self._hot.forget(room_id)
                return dropped

        # A caller that stops waiting does not stop the drop, nor the hot buffer's forgetting.
        return history_pb2.DropLogResponse(dropped_events=await uncancellable(commit()))

    async def GetEvent(self, request: history_pb2.GetEventRequest, context: Context) -> history_pb2.GetEventResponse:
        check_room_id(request.room_id)
        self._readers.check(request.room_id, current_principal())
        return await self.get(request)

    async def SetLogReaders(
        self, request: history_pb2.SetLogReadersRequest, context: Context
    ) -> history_pb2.SetLogReadersResponse:
        check_room_id(request.room_id)
        await uncancellable(self._readers.set(request.room_id, request.restricted, list(request.user_ids)))
        return history_pb2.SetLogReadersResponse()

    async def get(self, request: history_pb2.GetEventRequest) -> history_pb2.GetEventResponse:
        """GetEvent itself; the all-in-one gateway calls it in process."""
        check_room_id(request.room_id)
        if not request.handle:
            raise invalid_field("handle", "is required")
        room_id, handle = request.room_id, request.handle
        row, epoch = await self._storage.event_by_handle(room_id, handle)
        if row is None:
            raise event_not_found(room_id, handle)
        return history_pb2.GetEventResponse(event=_logged(row), epoch=epoch)

    async def _rewrite(
        self, room_id: str, handle: str, editor: str, change: Callable[[history_pb2.LoggedEvent, int], None]
    ) -> history_pb2.LoggedEvent:
        """Changes one event in place, as its sender (or as the calling service); returns it as now stored."""
        check_room_id(room_id)
        if not handle:
            raise invalid_field("handle", "is required")
        now_ms = int(time.time() * 1000)

        def rewrite(row: EventRow, change_seq: int) -> bytes:
            # Inside the transaction: a refusal here changes nothing.
            event = history_pb2.LoggedEvent.FromString(row.body)
            if event.deleted:
                raise event_not_found(room_id, handle, " (it was deleted)")
            if editor and row.sender != editor:  # no editor: the calling service itself
                raise not_author()
            change(event, now_ms)
            event.change_seq = change_seq
            return event.SerializeToString()

        async def commit() -> history_pb2.LoggedEvent:
            async with self._hot.commit_order:
                try:
                    rewritten = await self._storage.rewrite_event(room_id, handle, rewrite)
                except LogClosed:
                    raise log_closed(room_id) from None
                if rewritten is None:
                    raise event_not_found(room_id, handle)
                self._hot.apply(room_id, lambda: self._hot.changed(room_id, rewritten.row, rewritten.change_seq))
            event = _logged(rewritten.row)
            await self._announcer.changed(room_id, rewritten.epoch, event)
            return event

        # A caller that stops waiting does not stop the change, nor its mirroring in the hot buffer.
        return await uncancellable(commit())

    async def WatchLogs(
        self, request: history_pb2.WatchLogsRequest, context: Context
    ) -> AsyncIterator[history_pb2.WatchLogsResponse]:
        feed: ChangeFeed[BusMessage] = ChangeFeed("a log watcher")
        async with feed.watching() as batches:
            subscription = await self._bus.subscribe_prefix(room_stream.NAMESPACE + ".", feed.announce)
            try:
                yield history_pb2.WatchLogsResponse()  # watching: every write from now on follows
                async for batch in batches:
                    for message in batch:
                        yield history_pb2.WatchLogsResponse(
                            subject=message.subject, headers=message.headers, data=message.data
                        )
            finally:
                subscription.cancel()

    async def ListEventsSince(
        self, request: history_pb2.ListEventsSinceRequest, context: Context
    ) -> history_pb2.ListEventsSinceResponse:
        check_room_id(request.room_id)
        self._readers.check(request.room_id, current_principal())
        return await self.since(request)

    async def since(self, request: history_pb2.ListEventsSinceRequest) -> history_pb2.ListEventsSinceResponse:
        """ListEventsSince itself; the all-in-one gateway calls it in process."""
        check_room_id(request.room_id)
        if request.limit < 0:
            raise invalid_field("limit", "must not be negative")
        limit = min(request.limit or self._config.max_page_size, self._config.max_page_size)
        # One more of each than the page holds tells whether the read is complete.
        read = await self._storage.since(request.room_id, request.after_seq, limit + 1)
        state = read.state
        response = history_pb2.ListEventsSinceResponse(
            epoch=state.epoch if state else "",
            last_seq=state.last_seq if state else 0,
            pruned_seq=state.pruned_seq if state else 0,
        )
        events, changes, response.read_through = since_page(
            [_logged(row) for row in read.events], [_logged(row) for row in read.changed], response.last_seq, limit
        )
        response.events.extend(events)
        response.changed.extend(changes)
        return response

    async def ListEvents(self, request: history_pb2.ListEventsRequest, context: Context) -> bytes:
        """A ListEventsResponse encoded by joining the stored event bodies (no decoding)."""
        check_room_id(request.room_id)
        self._readers.check(request.room_id, current_principal())
        room_id, event = request.room_id, request.event
        if request.HasField("range"):
            start, end = request.range.start, request.range.end
            if start < 0 or end <= start:
                raise invalid_field("range", "needs 0 <= start < end")
            if end - start > self._config.max_page_size:
                raise invalid_field("range", f"spans at most {self._config.max_page_size} events")
            page = self._hot.page_by_offset(room_id, start, end, event) or await self._read(
                room_id, lambda: self._storage.page_by_offset(room_id, start, end, event)
            )
            return _page(page, next_token="")
        if request.page_size < 0:
            raise invalid_field("page_size", "must not be negative")
        size = min(request.page_size or self._config.default_page_size, self._config.max_page_size)
        before = decode_cursor(request.page_token) if request.page_token else request.before_seq
        page = self._hot.page_before(room_id, before, size + 1, event) or await self._read(
            room_id, lambda: self._storage.page_before(room_id, before, size + 1, event)
        )
        more = len(page.rows) > size
        page = dataclasses.replace(page, rows=page.rows[:size])
        return _page(page, next_token=encode_cursor(page.rows[-1].seq) if more else "")

    async def _read(self, room_id: str, read_page: Callable[[], Awaitable[Page]]) -> Page:
        """A page from the store; a room the hot buffer does not hold is read for it first."""
        if self._hot.begin_load(room_id):
            snapshot = None
            try:
                # No write commits between this read and its install, so none is mirrored twice.
                async with self._hot.commit_order:
                    snapshot = await self._storage.read_snapshot(room_id, self._hot.events_per_name)
            finally:
                self._hot.install(room_id, snapshot)
        return await read_page()


Logged = list[history_pb2.LoggedEvent]


def since_page(events: Logged, changes: Logged, last_seq: int, limit: int) -> tuple[Logged, Logged, int]:
    """A ListEventsSince page from up to `limit + 1` events and changes read after a position.

    Returns the events and changes it carries and how far they cover: where
    either list overflows, the page ends at its last position that fits, and
    what lies past that comes with the next read, which starts there.
    """
    through = last_seq
    if len(events) > limit:
        through = min(through, events[limit - 1].seq)
    if len(changes) > limit:
        through = min(through, changes[limit - 1].change_seq)
    return (
        [e for e in events[:limit] if e.seq <= through],
        [c for c in changes[:limit] if c.change_seq <= through],
        through,
    )


def _logged(row: EventRow) -> history_pb2.LoggedEvent:
    event = history_pb2.LoggedEvent.FromString(row.body)
    event.seq = row.seq
    return event


def _page(page: Page, next_token: str) -> bytes:
    tail = history_pb2.ListEventsResponse(next_page_token=next_token, epoch=page.epoch, last_seq=page.last_seq)
    return b"".join(page_item(row) for row in page.rows) + tail.SerializeToString()
