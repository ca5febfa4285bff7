"""The commands of a Connect stream, each answered by a Reply."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Sequence

import grpc

from parley.api.v1 import errors_pb2, status_pb2
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from parley.hooks import JoinContext
from parley.room.v1 import room_pb2
from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.bus import Bus, BusMessage
from services.gateway.changes import EventChanges, event_changed
from services.gateway.connections import EXCLUDED_PREFIX, Connection, Interest
from services.gateway.directory import RoomDirectory
from services.gateway.ephemerals import EphemeralSignals
from services.gateway.feeds import KIND, KIND_FRAME, RoomFeeds, room_subject
from services.gateway.history_client import HistoryAppender
from services.gateway.publishing import Publisher, payload_too_large
from services.gateway.room_client import RoomClient
from services.gateway.subjects import SubjectRouter
from services.room.definitions import EVENT_NAME, check_room_id
from services.room.registry import room_not_found
from services.room.rules import ANY_EVENT, EventRules
from services.runtime.config import GatewayConfig
from services.runtime.errors import ServiceError, invalid_field, rate_limited
from services.runtime.hooks import Hooks
from services.runtime.ratelimit import RateLimiter
from services.runtime.request_checks import check_json, check_request, null_if_unset


def status_of(error: ServiceError) -> status_pb2.Status:
    return status_pb2.Status(
        code=error.code.value[0], message=error.message, reason=error.reason, metadata=error.metadata
    )


# A history read that returns no events, only the log's epoch and newest sequence.
NOTHING_AFTER = 2**62

# Moves a stream onto a fresh access token (the stream's token life is the Connect stream's own business).
Refresh = Callable[[Connection, gateway_pb2.RefreshCommand], Awaitable[gateway_pb2.RefreshResult]]

# Commands whose handler checks their values (the request rules) itself, after
# the command's cheap limits (count, size, rate): a flood of big commands is then
# refused before any payload is walked. Every other command is checked whole first.
CHECKED_AFTER_LIMITS = frozenset({"publish", "edit", "ephemeral", "subject_publish"})


def _room_event(room_id: str, epoch: str, logged: history_pb2.LoggedEvent) -> gateway_pb2.Event:
    return gateway_pb2.Event(
        room_id=room_id,
        event=logged.event,
        payload=logged.payload,
        sender=logged.sender,
        time_ms=logged.time_ms,
        seq=logged.seq,
        handle=logged.handle,
        meta=logged.meta,
        epoch=epoch,
    )


def _resuming(command: gateway_pb2.JoinCommand) -> bool:
    return command.resume or bool(command.since_seq or command.epoch)


def _sync_selection(events: list[history_pb2.LoggedEvent], last: int) -> list[history_pb2.LoggedEvent]:
    """All of them, or the newest `last` of each event name, oldest first."""
    if not last:
        return events
    chosen: list[history_pb2.LoggedEvent] = []
    counts: dict[str, int] = {}
    for event in reversed(events):
        if counts.get(event.event, 0) < last:
            counts[event.event] = counts.get(event.event, 0) + 1
            chosen.append(event)
    return chosen[::-1]


def not_in_room(room_id: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_NOT_IN_ROOM,
        f"join room {room_id!r} first",
        room_id=room_id,
    )


def presence_frame(room_id: str, user_id: str, joined: bool) -> BusMessage:
    frame = gateway_pb2.ConnectResponse(presence=gateway_pb2.Presence(room_id=room_id, user_id=user_id, joined=joined))
    return BusMessage(room_subject(room_id), frame.SerializeToString(), {KIND: KIND_FRAME})


class CommandHandler:
    def __init__(
        self,
        config: GatewayConfig,
        bus: Bus,
        feeds: RoomFeeds,
        directory: RoomDirectory,
        rooms: RoomClient,
        history: HistoryAppender,
        publisher: Publisher,
        changes: EventChanges,
        signals: EphemeralSignals,
        subjects: SubjectRouter,
        hooks: Hooks,
        refresh: Refresh,
    ) -> None:
        self._config = config
        self._refresh = refresh
        self._bus = bus
        self._feeds = feeds
        self._directory = directory
        self._rooms = rooms
        self._history = history
        self._publisher = publisher
        self._changes = changes
        self._signals = signals
        self._subjects = subjects
        self._hooks = hooks
        self._subject_limit = RateLimiter(config.events_per_window, float(config.window_seconds))

    async def handle(self, connection: Connection, request: gateway_pb2.ConnectRequest) -> gateway_pb2.Reply:
        reply = gateway_pb2.Reply(request_id=request.request_id)
        try:
            if request.WhichOneof("command") not in CHECKED_AFTER_LIMITS:
                check_request(request)
            await self._dispatch(connection, request, reply)
        except ServiceError as error:
            reply.ClearField("result")
            reply.status.CopyFrom(status_of(error))
        return reply

    async def _dispatch(
        self, connection: Connection, request: gateway_pb2.ConnectRequest, reply: gateway_pb2.Reply
    ) -> None:
        command = request.WhichOneof("command")
        if command == "join":
            reply.join.CopyFrom(await self.join(connection, request.join))
        elif command == "leave":
            await self.leave(connection, request.leave.room_id)
        elif command == "subscribe":
            reply.subscription.CopyFrom(self.subscribe(connection, request.subscribe))
        elif command == "unsubscribe":
            reply.subscription.CopyFrom(self.unsubscribe(connection, request.unsubscribe))
        elif command == "publish":
            reply.publish.CopyFrom(await self.publish(connection, request.publish))
        elif command == "subject_subscribe":
            self._subjects.subscribe(connection, request.subject_subscribe.subject)
        elif command == "subject_unsubscribe":
            self._subjects.unsubscribe(connection, request.subject_unsubscribe.subject)
        elif command == "subject_publish":
            self._subject_publish(connection, request.subject_publish)
        elif command == "edit":
            reply.changed.CopyFrom(await self.edit(connection, request.edit))
        elif command == "delete":
            reply.changed.CopyFrom(await self.delete(connection, request.delete))
        elif command == "ephemeral":
            self.ephemeral(connection, request.ephemeral)
        elif command == "refresh":
            reply.refresh.CopyFrom(await self._refresh(connection, request.refresh))
        elif command == "ping":
            return
        else:
            raise ServiceError(
                grpc.StatusCode.UNIMPLEMENTED, errors_pb2.ERROR_REASON_VALIDATION_FAILED, "unknown or missing command"
            )

    async def join(self, connection: Connection, command: gateway_pb2.JoinCommand) -> gateway_pb2.JoinResult:
        room_id = command.room_id
        check_room_id(room_id)
        if room_id in connection.rooms:
            room = self._directory.room(room_id) or await self._rooms.get(room_id)
            return gateway_pb2.JoinResult(room=room, subscriptions=connection.rooms[room_id].names())
        if len(connection.rooms) >= self._config.max_rooms_per_connection:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                errors_pb2.ERROR_REASON_TOO_MANY_ROOMS,
                f"a connection may be in at most {self._config.max_rooms_per_connection} rooms",
            )
        chosen = _chosen_interest(command.subscriptions)
        await self._hooks.decide(
            "before_join",
            errors_pb2.ERROR_REASON_JOIN_DENIED,
            JoinContext(session_id=connection.session_id, user_id=connection.user_id, room_id=room_id),
        )
        deletions = self._directory.deletions(room_id)
        joined = await self._rooms.join(room_id, connection.user_id, connection.session_id)
        if self._directory.deletions(room_id) != deletions:
            # The room was deleted while the join was under way: do not keep a ghost member.
            await self._rooms.leave(room_id, connection.user_id, connection.session_id)
            raise room_not_found(room_id)
        self._directory.remember(joined.room)
        interest = chosen or Interest(list(joined.room.default_subscriptions))
        connection.rooms[room_id] = interest
        # Live events are held while the log is read, then merged with it by sequence.
        connection.held[room_id] = []
        self._feeds.add(room_id, connection)
        try:
            catch_up = await self._read_history(command, joined.room)
        except BaseException:
            connection.held.pop(room_id, None)
            self.drop(connection, room_id)
            await self._rooms.leave(room_id, connection.user_id, connection.session_id)
            raise
        result = gateway_pb2.JoinResult(
            room=joined.room, subscriptions=interest.names(), epoch=catch_up.epoch, last_seq=catch_up.last_seq
        )
        self._deliver_catch_up(connection, joined.room, command, catch_up, result)
        if joined.first_connection:
            self._bus.publish(presence_frame(room_id, connection.user_id, True))
            await self._hooks.notify(
                "on_joined", JoinContext(session_id=connection.session_id, user_id=connection.user_id, room_id=room_id)
            )
        return result

    async def _read_history(
        self, command: gateway_pb2.JoinCommand, room: room_pb2.Room
    ) -> history_pb2.ListEventsSinceResponse:
        """The history read a join makes: the missed events (resume), the recent ones
        (sync on join), or just the log's epoch and newest sequence."""
        cap = self._config.replay_cap
        if _resuming(command):
            return await self._history.since(room.room_id, command.since_seq, cap + 1)
        state = await self._history.since(room.room_id, NOTHING_AFTER, 1)
        if not (room.sync_history_on_join.all or room.sync_history_on_join.last):
            return state
        # Kept events among the last `replay_cap` sequence numbers; newer ones are held live.
        return await self._history.since(room.room_id, max(0, state.last_seq - cap), cap)

    def _deliver_catch_up(
        self,
        connection: Connection,
        room: room_pb2.Room,
        command: gateway_pb2.JoinCommand,
        catch_up: history_pb2.ListEventsSinceResponse,
        result: gateway_pb2.JoinResult,
    ) -> None:
        """One HistoryBatch (replay or sync, merged with live events held meanwhile), then live again."""
        room_id = room.room_id
        interest = connection.rooms[room_id]
        held = connection.held.pop(room_id, [])
        resuming = _resuming(command)
        replayed: list[history_pb2.LoggedEvent] = []
        kind = gateway_pb2.HistoryBatch.KIND_SYNC
        if resuming:
            kind = gateway_pb2.HistoryBatch.KIND_REPLAY
            gap = catch_up.last_seq - command.since_seq
            # An empty epoch at 0: the log did not exist yet, so any epoch now continues it.
            same_log = command.epoch == catch_up.epoch or (not command.epoch and not command.since_seq)
            # Retention removed events after the client's position: they are gone.
            nothing_pruned = catch_up.pruned_seq <= command.since_seq
            result.recovered = same_log and nothing_pruned and 0 <= gap <= self._config.replay_cap
            if result.recovered:
                replayed = list(catch_up.events)
        elif room.sync_history_on_join.all or room.sync_history_on_join.last:
            replayed = _sync_selection(list(catch_up.events), room.sync_history_on_join.last)
        merged = {
            e.seq: _room_event(room_id, catch_up.epoch, e)
            for e in replayed
            if not e.deleted and interest.wants(e.event)
        }
        # The read has these events as they were when it ran (tombstones included):
        # a held copy of one of them, or of a change to it made before the read, is older news.
        covered = {e.seq for e in catch_up.events}
        covered.update(e.seq for e in catch_up.changed if result.recovered)
        late_changes = []
        for seq, data, change in held:
            if not change:
                if seq not in covered:
                    merged.setdefault(seq, gateway_pb2.Event.FromString(data))
            elif (
                seq > catch_up.last_seq or gateway_pb2.ConnectResponse.FromString(data).event_changed.seq not in covered
            ):
                late_changes.append(data)
        # Live deliveries at or below this were in the read; later ones come from the feed.
        connection.caught_up[room_id] = catch_up.last_seq
        if not resuming and not replayed:
            for seq in sorted(merged):
                connection.outbox.put(kinds.EVENT, wire.batch_item(merged[seq].SerializeToString()))
        else:
            changes = [
                event_changed(room_id, e) for e in catch_up.changed if result.recovered and interest.wants(e.event)
            ]
            batch = gateway_pb2.HistoryBatch(
                room_id=room_id,
                kind=kind,
                events=[merged[seq] for seq in sorted(merged)],
                recovered=result.recovered,
                epoch=catch_up.epoch,
                changes=changes,
            )
            connection.outbox.put(kinds.FRAME, wire.frame(gateway_pb2.ConnectResponse(history=batch)), urgent=True)
        for late in late_changes:
            connection.outbox.put(kinds.FRAME, late)

    async def leave(self, connection: Connection, room_id: str) -> None:
        check_room_id(room_id)
        if room_id not in connection.rooms:
            raise not_in_room(room_id)
        self.drop(connection, room_id)
        left = await self._rooms.leave(room_id, connection.user_id, connection.session_id)
        await self.announce_left(connection.user_id, connection.session_id, left)

    def drop(self, connection: Connection, room_id: str) -> None:
        """Takes the connection out of a room locally (the room service is told separately)."""
        self._signals.end_all(connection, room_id)
        connection.rooms.pop(room_id, None)
        connection.caught_up.pop(room_id, None)
        self._feeds.remove(room_id, connection)

    async def announce_left(self, user_id: str, session_id: str, room_ids: list[str]) -> None:
        """Tells each room that the user is gone (no connection of theirs is left in it)."""
        for room_id in room_ids:
            self._bus.publish(presence_frame(room_id, user_id, False))
            await self._hooks.notify("on_left", JoinContext(session_id=session_id, user_id=user_id, room_id=room_id))

    def subscribe(
        self, connection: Connection, command: gateway_pb2.SubscribeCommand
    ) -> gateway_pb2.SubscriptionResult:
        interest = self._interest(connection, command.room_id)
        if command.all:
            interest.set_all(True)
        else:
            try:
                interest.add(_event_names(command.events), MAX_SUBSCRIPTION_NAMES)
            except ValueError as exc:
                raise invalid_field("events", str(exc)) from None
        return gateway_pb2.SubscriptionResult(subscriptions=interest.names())

    def unsubscribe(
        self, connection: Connection, command: gateway_pb2.UnsubscribeCommand
    ) -> gateway_pb2.SubscriptionResult:
        interest = self._interest(connection, command.room_id)
        if command.all:
            interest.set_all(False)
        else:
            try:
                interest.remove(_event_names(command.events), MAX_SUBSCRIPTION_NAMES)
            except ValueError as exc:
                raise invalid_field("events", str(exc)) from None
        return gateway_pb2.SubscriptionResult(subscriptions=interest.names())

    def _interest(self, connection: Connection, room_id: str) -> Interest:
        check_room_id(room_id)
        interest = connection.rooms.get(room_id)
        if interest is None:
            raise not_in_room(room_id)
        return interest

    async def publish(self, connection: Connection, command: gateway_pb2.PublishCommand) -> gateway_pb2.PublishResult:
        check_room_id(command.room_id)
        if command.room_id not in connection.rooms:
            raise not_in_room(command.room_id)
        rules = await self.rules(command.room_id)
        return await self._publisher.publish_from_client(
            rules,
            command.room_id,
            command.events,
            connection.user_id,
            connection.session_id,
            command.no_echo,
            within="publish.events",
        )

    async def edit(self, connection: Connection, command: gateway_pb2.EditCommand) -> gateway_pb2.EventChanged:
        self._interest(connection, command.room_id)
        rules = await self.rules(command.room_id)
        return await self._changes.edit(
            rules,
            command.room_id,
            command.handle,
            command.payload,
            connection.user_id,
            connection.session_id,
            field="edit.payload",
        )

    async def delete(self, connection: Connection, command: gateway_pb2.DeleteCommand) -> gateway_pb2.EventChanged:
        self._interest(connection, command.room_id)
        return await self._changes.delete(command.room_id, command.handle, connection.user_id)

    def ephemeral(self, connection: Connection, command: gateway_pb2.EphemeralCommand) -> None:
        self._interest(connection, command.room_id)
        self._signals.send(connection, command.room_id, command.subject, command.data, field="ephemeral.data")

    async def rules(self, room_id: str) -> EventRules:
        rules = self._directory.rules(room_id)
        if rules is None:
            rules = self._directory.remember(await self._rooms.get(room_id))
        # The room's schemas compile on first use, off the event loop (each distinct one once).
        return await rules.compile()

    def _subject_publish(self, connection: Connection, command: gateway_pb2.SubjectPublishCommand) -> None:
        size = command.data.ByteSize()
        if size > self._config.max_payload_bytes:
            raise payload_too_large(size, self._config.max_payload_bytes)
        wait = self._subject_limit.try_acquire(connection.user_id)
        if wait:
            raise rate_limited("too many subject messages", wait)
        check_json(command.data, "subject_publish.data")
        self._subjects.publish(command.subject, connection.user_id, null_if_unset(command.data))


MAX_SUBSCRIPTION_NAMES = 100


def _chosen_interest(names: Sequence[str]) -> Interest | None:
    """The subscriptions a join asks for (None: the room's defaults)."""
    if not names:
        return None
    if len(names) > MAX_SUBSCRIPTION_NAMES:
        raise invalid_field("subscriptions", f"at most {MAX_SUBSCRIPTION_NAMES} names")
    for i, name in enumerate(names):
        bare = name.removeprefix(EXCLUDED_PREFIX)
        if name != ANY_EVENT and not (EVENT_NAME.fullmatch(bare) and bare != ANY_EVENT):
            raise invalid_field(f"subscriptions[{i}]", f"{name!r} is not '*', an event name or '-' and an event name")
    try:
        return Interest.from_names(list(names))
    except ValueError as exc:
        raise invalid_field("subscriptions", str(exc)) from None


def _event_names(names: Iterable[str]) -> set[str]:
    events = set(names)
    if len(events) > MAX_SUBSCRIPTION_NAMES:
        raise invalid_field("events", f"at most {MAX_SUBSCRIPTION_NAMES} names at once")
    for i, name in enumerate(sorted(events)):
        if name == ANY_EVENT or not EVENT_NAME.fullmatch(name):
            raise invalid_field(f"events[{i}]", f"{name!r} is not an event name (use `all` for every event)")
    if not events:
        raise invalid_field("events", "name at least one event, or set all")
    return events
