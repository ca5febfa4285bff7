"""The commands of a Connect stream, each answered by a Reply."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence

import grpc

from parley.api.v1 import errors_pb2, status_pb2
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from parley.hooks import JoinContext
from parley.room.v1 import room_pb2
from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.catch_up import CatchUp, history_frames, sync_selection
from services.gateway.changes import EventChanges
from services.gateway.client_questions import ClientQuestions
from services.gateway.command_lanes import Answer
from services.gateway.connections import EXCLUDED_PREFIX, Connection, Interest
from services.gateway.direct import DirectMessages
from services.gateway.directory import RoomDirectory
from services.gateway.ephemerals import EphemeralSignals
from services.gateway.feeds import RoomFeed, RoomFeeds
from services.gateway.history_client import HistoryAppender
from services.gateway.publishing import Publisher, payload_too_large
from services.gateway.recovery import (
    LogRead,
    ResumePoint,
    read_log,
    read_log_end,
    read_on,
    stream_recovered,
)
from services.gateway.room_client import RoomClient
from services.gateway.subjects import SubjectRouter
from services.room.definitions import EVENT_NAME, check_room_id
from services.room.registry import room_not_found
from services.room.rules import ANY_EVENT, EventRules
from services.runtime import room_stream
from services.runtime.bus import Bus
from services.runtime.config import GatewayConfig
from services.runtime.errors import ServiceError, invalid_field, not_found, rate_limited
from services.runtime.hooks import Hooks
from services.runtime.ratelimit import RateLimiter
from services.runtime.request_checks import check_json, check_request, null_if_unset
from services.runtime.room_stream import event_changed


def status_of(error: ServiceError) -> status_pb2.Status:
    return status_pb2.Status(
        code=error.code.value[0], message=error.message, reason=error.reason, metadata=error.metadata
    )


# Moves a stream onto a fresh access token (the stream's token life is the Connect stream's own business).
Refresh = Callable[[Connection, gateway_pb2.RefreshCommand], Awaitable[gateway_pb2.RefreshResult]]

# Commands whose handler checks their values (the request rules) itself, after
# the command's cheap limits (count, size, rate): a flood of big commands is then
# refused before any payload is walked. Every other command is checked whole first.
CHECKED_AFTER_LIMITS = frozenset({"publish", "edit", "ephemeral", "subject_publish"})


def _resuming(command: gateway_pb2.JoinCommand) -> bool:
    return command.resume or bool(command.since_seq or command.epoch)


def not_in_room(room_id: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_NOT_IN_ROOM,
        f"join room {room_id!r} first",
        room_id=room_id,
    )


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
        questions: ClientQuestions,
        direct: DirectMessages,
    ) -> None:
        self._config = config
        self._refresh = refresh
        self._questions = questions
        self._direct = direct
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

    async def start(self, connection: Connection, request: gateway_pb2.ConnectRequest) -> Answer:
        """Runs a command; a publish is answered later, once its append is durable (see CommandLanes)."""
        if request.WhichOneof("command") != "publish":
            return await self.handle(connection, request)
        reply = gateway_pb2.Reply(request_id=request.request_id)
        try:
            published = await self.start_publish(connection, request.publish)
        except ServiceError as error:
            reply.status.CopyFrom(status_of(error))
            return reply
        answer: asyncio.Future[gateway_pb2.Reply] = asyncio.get_running_loop().create_future()

        def answered(published: asyncio.Future[gateway_pb2.PublishResult]) -> None:
            error = None if published.cancelled() else published.exception()
            if published.cancelled():
                answer.cancel()
            elif isinstance(error, ServiceError):
                reply.status.CopyFrom(status_of(error))
                answer.set_result(reply)
            elif error is not None:
                answer.set_exception(error)
            else:
                reply.publish.CopyFrom(published.result())
                answer.set_result(reply)

        published.add_done_callback(answered)
        return answer

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
            reply.publish.CopyFrom(await (await self.start_publish(connection, request.publish)))
        elif command == "subject_subscribe":
            await self._subjects.subscribe(connection, request.subject_subscribe.subject)
        elif command == "subject_unsubscribe":
            await self._subjects.unsubscribe(connection, request.subject_unsubscribe.subject)
        elif command == "subject_publish":
            await self._subject_publish(connection, request.subject_publish)
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
        elif command == "send_direct":
            reply.direct.CopyFrom(await self._direct.send(connection, request.send_direct))
        elif command == "ack_direct":
            await self._direct.ack(connection, request.ack_direct)
        elif command == "answer":
            if not self._questions.answered(connection.session_id, request.answer):
                raise not_found(
                    errors_pb2.ERROR_REASON_UNSPECIFIED,
                    f"no question {request.answer.question_id!r} waits for this connection's answer (too late?)",
                )
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
        if len(connection.rooms.keys() | connection.joining) >= self._config.max_rooms_per_connection:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                errors_pb2.ERROR_REASON_TOO_MANY_ROOMS,
                f"a connection may be in at most {self._config.max_rooms_per_connection} rooms",
            )
        connection.joining |= {room_id}
        try:
            return await self._join(connection, command)
        finally:
            connection.joining -= {room_id}

    async def _join(self, connection: Connection, command: gateway_pb2.JoinCommand) -> gateway_pb2.JoinResult:
        room_id = command.room_id
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
        try:
            # Subscribed first, then the log read: nothing falls between the two.
            feed = await self._feeds.add(room_id, connection)
            catch_up = await self._read_catch_up(feed, connection, command, joined.room)
            if room_id not in connection.rooms:
                raise not_in_room(room_id)  # taken out (removed by a backend, room deleted) while it read
        except BaseException:
            connection.held.pop(room_id, None)
            self.drop(connection, room_id)
            await self._rooms.leave(room_id, connection.user_id, connection.session_id)
            raise
        result = gateway_pb2.JoinResult(
            room=joined.room,
            subscriptions=interest.names(),
            epoch=catch_up.read.epoch,
            last_seq=catch_up.read.through,
            recovered=catch_up.recovered,
            unrecovered_reason=catch_up.unrecovered_reason,
        )
        await self._deliver_catch_up(connection, joined.room, catch_up)
        if joined.first_connection:
            await self._bus.publish(room_stream.presence_message(room_id, connection.user_id, True))
            await self._hooks.notify(
                "on_joined", JoinContext(session_id=connection.session_id, user_id=connection.user_id, room_id=room_id)
            )
        return result

    async def _read_catch_up(
        self, feed: RoomFeed, connection: Connection, command: gateway_pb2.JoinCommand, room: room_pb2.Room
    ) -> CatchUp:
        """The history read a join makes: the missed events (resume), the recent ones
        (sync on join), or just the log's epoch and newest sequence; read on until it
        meets the live stream."""
        cap = self._config.replay_cap
        room_id = room.room_id
        sync = room.sync_history_on_join
        if _resuming(command):
            read = await read_log(self._history, room_id, command.since_seq, cap)
            recovered, reason = stream_recovered(ResumePoint(command.epoch, command.since_seq), read, cap)
            if not recovered:
                read = await read_log_end(self._history, room_id)  # the client reloads; live from here
            catch_up = CatchUp(read, gateway_pb2.HistoryBatch.KIND_REPLAY, recovered, unrecovered_reason=reason)
        elif sync.all or sync.last:
            end = await read_log_end(self._history, room_id)
            # Kept events among the last `replay_cap` positions; newer ones come live.
            read = await read_log(self._history, room_id, max(0, end.last_seq - cap), cap)
            catch_up = CatchUp(read, gateway_pb2.HistoryBatch.KIND_SYNC)
        else:
            live = feed.live_position(connection)
            if live is not None:
                # Other members started the room's sequence: this one is live from where it joined, no read needed.
                epoch, live_from = live
                return CatchUp(LogRead(live_from, epoch, live_from, live_from, pages=1))
            end = await read_log_end(self._history, room_id)
            feed.start(end.epoch, end.through)
            # Live from where this connection subscribed: what came since then is held for it.
            live_from = feed.live_from.get(connection.session_id, end.through)
            return CatchUp(LogRead(live_from, end.epoch, end.last_seq, live_from, end.pruned_seq, pages=1))
        feed.start(catch_up.read.epoch, catch_up.read.through)
        # Another join may have started the room's sequence further on: read up to it.
        live_from = feed.live_from.get(connection.session_id, 0)
        await read_on(self._history, room_id, catch_up.read, live_from, cap)
        return catch_up

    async def _deliver_catch_up(self, connection: Connection, room: room_pb2.Room, catch_up: CatchUp) -> None:
        """The replay or sync (in frames within the frame limit), then what was held live meanwhile."""
        room_id = room.room_id
        interest = connection.rooms[room_id]
        read = catch_up.read
        events: list[history_pb2.LoggedEvent] = []
        changes: list[gateway_pb2.EventChanged] = []
        if catch_up.kind == gateway_pb2.HistoryBatch.KIND_REPLAY and catch_up.recovered:
            events = read.events
            changes = [event_changed(room_id, e) for e in read.changes if interest.wants(e.event)]
        elif catch_up.kind == gateway_pb2.HistoryBatch.KIND_SYNC:
            events = sync_selection(read.events, room.sync_history_on_join.last)
        replayed = [
            room_stream.room_event(room_id, e, read.epoch) for e in events if not e.deleted and interest.wants(e.event)
        ]
        if catch_up.kind:
            for frame in history_frames(room_id, catch_up, replayed, changes, self._config.max_frame_bytes):
                await connection.outbox.room_for(len(frame))
                connection.outbox.put(kinds.FRAME, frame, urgent=True)
        # Held live messages the read covered are older news; later ones follow in order.
        held = connection.held.pop(room_id, [])
        connection.caught_up[room_id] = read.through
        for seq, data, whole_frame in held:
            if seq <= read.through:
                continue
            if whole_frame:
                connection.outbox.put(kinds.FRAME, data)
            else:
                connection.outbox.put(kinds.EVENT, wire.batch_item(data))

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

    async def announce_left(self, user_id: str, session_id: str, room_ids: list[str], *, ended: bool = False) -> None:
        """Tells each room that the user is gone (no connection of theirs is left in it); `ended`: because
        this connection ended, which members hear as the peer going offline (PresenceChange.ended_session_id)."""
        ended_session_id = session_id if ended else ""
        for room_id in room_ids:
            await self._bus.publish(room_stream.presence_message(room_id, user_id, False, ended_session_id))
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

    async def start_publish(
        self, connection: Connection, command: gateway_pb2.PublishCommand
    ) -> asyncio.Future[gateway_pb2.PublishResult]:
        """Checks a publish and queues its append behind the connection's earlier ones to the room."""
        check_room_id(command.room_id)
        if command.room_id not in connection.rooms:
            raise not_in_room(command.room_id)
        rules = await self.rules(command.room_id)
        return await self._publisher.start_from_client(
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

    async def _subject_publish(self, connection: Connection, command: gateway_pb2.SubjectPublishCommand) -> None:
        size = command.data.ByteSize()
        if size > self._config.max_payload_bytes:
            raise payload_too_large(size, self._config.max_payload_bytes)
        wait = self._subject_limit.try_acquire(connection.user_id)
        if wait:
            raise rate_limited("too many subject messages", wait)
        check_json(command.data, "subject_publish.data")
        await self._subjects.publish(command.subject, connection.user_id, null_if_unset(command.data))


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
