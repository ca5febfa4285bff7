"""The realtime half of the gateway: Connect streams and the backend API."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import Counter
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import grpc

from parley.api.v1 import errors_pb2
from parley.gateway.v1 import gateway_pb2
from parley.hooks import JoinContext, RoomContext, SessionContext
from parley.identity.v1 import identity_pb2
from parley.reasons import reason_name
from parley.room.v1 import room_pb2
from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.browser_sessions import BrowserSessions, CommandInbox
from services.gateway.changes import EventChanges
from services.gateway.client_questions import ClientQuestions
from services.gateway.command_lanes import CommandLanes, Send
from services.gateway.commands import CommandHandler, status_of
from services.gateway.connections import ANY_EVENT, Connection, ConnectionRegistry, Interest
from services.gateway.direct import DeviceLookup, DirectMessages
from services.gateway.directory import RoomDirectory, notice_of
from services.gateway.ephemerals import EphemeralSignals
from services.gateway.feeds import FeedSettings, RoomFeeds
from services.gateway.history_client import HistoryAppender
from services.gateway.mailbox_client import MailboxClient
from services.gateway.outbox import FlushScheduler, Outbox, SlowConsumer
from services.gateway.publishing import SYSTEM_SENDER, Publisher, check_event
from services.gateway.recovery import read_log_end
from services.gateway.room_client import RoomClient
from services.gateway.stream_release import StreamRelease
from services.gateway.subjects import SubjectRouter
from services.room.definitions import check_room_id
from services.runtime.bus import Bus
from services.runtime.config import GatewayConfig
from services.runtime.errors import (
    ServiceError,
    internal,
    invalid_field,
    not_found,
    permission_denied,
    unauthenticated,
)
from services.runtime.grpc_types import Context
from services.runtime.hooks import Hooks
from services.runtime.principal import require_user
from services.runtime.ratelimit import RateLimiter
from services.runtime.request_checks import null_if_unset
from services.runtime.session_ids import new_gateway_id, new_session_id
from services.runtime.tokens import TokenVerifier
from services.runtime.uncancellable import uncancellable

log = logging.getLogger("parley.gateway")


def protocol_violation(message: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT, errors_pb2.ERROR_REASON_PROTOCOL_VIOLATION, f"{message}; the stream is closed"
    )


def slow_consumer(cut: SlowConsumer) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, errors_pb2.ERROR_REASON_SLOW_CONSUMER, f"{cut}; reconnect and resume"
    )


class Realtime:
    def __init__(
        self,
        config: GatewayConfig,
        bus: Bus,
        rooms: RoomClient,
        history: HistoryAppender,
        hooks: Hooks,
        mailbox: MailboxClient,
        devices: DeviceLookup,
    ) -> None:
        self.config = config
        self.bus = bus
        # Named in this gateway's session ids, so that any gateway can route to a session.
        self.gateway_id = new_gateway_id()
        self.rooms = rooms
        self.history = history
        self.hooks = hooks
        self.connections = ConnectionRegistry()
        # The sessions opened by Subscribe, whose commands come by SendCommand.
        self.browser = BrowserSessions()
        # Connect streams per user until their handler ends: a cut stream whose client no
        # longer reads stays open (see StreamRelease), and counts against the user's limit.
        self._open_streams: Counter[str] = Counter()
        # The server's token verifier (set before it starts): in-band refreshes
        # are checked with it, and it refuses the tokens of revoked devices.
        self.verifier: TokenVerifier | None = None
        self.clock_skew_seconds = 0.0
        self.stopping = False
        # True when the room service runs in this same process (all-in-one).
        self.membership_is_local = False
        self.directory = RoomDirectory()
        feeds = FeedSettings(
            gap_wait=config.gap_wait_ms / 1000,
            cap=config.replay_cap,
            presence_window=config.presence_window_ms / 1000,
            tells_presence=self.directory.tells_presence,
        )
        self.feeds = RoomFeeds(bus, history, feeds)
        self.scheduler = FlushScheduler(config.batch_window_ms / 1000, config.max_outbound_bytes_total)
        self.publisher = Publisher(config, self.feeds, hooks, history)
        self.subjects = SubjectRouter(bus, config.max_subject_subscriptions_per_user)
        self.changes = EventChanges(config, history, self.publisher)
        self.questions = ClientQuestions()
        self.direct = DirectMessages(
            bus,
            mailbox,
            devices,
            self.connections,
            RateLimiter(config.events_per_window, float(config.window_seconds)),
        )
        self.commands = CommandHandler(
            config,
            bus,
            self.feeds,
            self.directory,
            rooms,
            history,
            self.publisher,
            self.changes,
            EphemeralSignals(config, bus),
            self.subjects,
            hooks,
            self._refresh,
            self.questions,
            self.direct,
        )

    # The Connect stream, and Subscribe (the browser path)

    async def connect(
        self,
        requests: AsyncIterator[gateway_pb2.ConnectRequest],
        context: Context,
        *,
        inbox: CommandInbox | None = None,
    ) -> AsyncGenerator[bytes, None]:
        """A session: its frames, starting with the Welcome. Its commands come on `requests`, and their
        replies go out with the frames; or, for Subscribe, they come from SendCommand calls through
        `inbox`, which takes their replies too."""
        caller = require_user()
        if self._open_streams[caller.user_id] >= self.config.max_connections_per_user:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                errors_pb2.ERROR_REASON_TOO_MANY_CONNECTIONS,
                f"a user may hold at most {self.config.max_connections_per_user} open streams on this gateway",
            )
        if self.verifier is not None and caller.device_id in self.verifier.revoked_devices:
            # Revoked after its token was checked: no await between this and `add`, so no revocation is missed.
            raise unauthenticated(errors_pb2.ERROR_REASON_DEVICE_REVOKED, "the device of this token was revoked")
        reader: asyncio.Task[None] | None = None

        async def let_go() -> None:
            connection.outbox.release()
            await self._end(connection, reader)

        # Cut or ended from outside: out of its rooms at once; the stream ends with its status (see StreamRelease).
        release = StreamRelease(let_go)
        connection = Connection(
            session_id=new_session_id(self.gateway_id),
            user_id=caller.user_id,
            device_id=caller.device_id,
            outbox=Outbox(self.scheduler, self.config.max_outbound_bytes, self.config.max_frame_bytes, release.now),
        )

        def end_with(error: ServiceError) -> None:
            if connection.ended is None:
                connection.ended = error
                # Revoked, or its token expired: nothing queued for it is sent any more.
                connection.outbox.fail(error, drop_queued=True)
                release.now()

        connection.end_with = end_with
        self.connections.add(connection)
        if inbox is not None:
            inbox.stream_pings_to(functools.partial(_reply_on_stream, connection))
            self.browser.open(connection, inbox)
        self._expire_with_token(connection, caller.expires_at)
        self._open_streams[caller.user_id] += 1
        try:
            yield wire.frame(gateway_pb2.ConnectResponse(welcome=self._welcome(connection)))
            self.direct.connected(connection)
            await self.hooks.notify("on_connected", _session(connection))
            # Commands are read only now, so on_connected comes before any join hook.
            replies = inbox.answer if inbox is not None else functools.partial(_reply_on_stream, connection)
            reader = asyncio.create_task(self._read_commands(connection, requests, replies))
            while True:
                try:
                    frames = await connection.outbox.next_frames()
                except SlowConsumer as cut:
                    ending = slow_consumer(cut)
                except ServiceError as error:
                    ending = error
                else:
                    if frames is None:
                        return
                    for frame in frames:
                        yield frame
                        connection.outbox.sent(frame)
                    continue
                yield wire.frame(gateway_pb2.ConnectResponse(go_away=gateway_pb2.GoAway(status=status_of(ending))))
                raise ending
        finally:
            self._open_streams[caller.user_id] -= 1
            if not self._open_streams[caller.user_id]:
                del self._open_streams[caller.user_id]
            await release.finished()

    async def subscribe(self, request: gateway_pb2.SubscribeRequest, context: Context) -> AsyncIterator[bytes]:
        """Yields SubscribeResponse frames: a session's frames as Connect sends them, but for the replies,
        which answer the session's SendCommand calls instead (a ping's comes on the stream too)."""
        inbox = CommandInbox(self.config.max_commands_in_flight)
        async with contextlib.aclosing(self.connect(inbox.commands(), context, inbox=inbox)) as frames:
            async for frame in frames:
                yield wire.subscribe_frame(frame)

    # Token life and revocation

    def _expire_with_token(self, connection: Connection, expires_at: float) -> None:
        """Ends the stream when its token expires (with the verifier's clock-skew leeway)."""
        if connection.token_timer is not None:
            connection.token_timer.cancel()
            connection.token_timer = None
        connection.token_expires_at = expires_at
        if not expires_at:
            return
        delay = expires_at + self.clock_skew_seconds - time.time()
        loop = asyncio.get_running_loop()
        connection.token_timer = loop.call_later(max(0.0, delay), _token_expired, connection)

    async def _refresh(self, connection: Connection, command: gateway_pb2.RefreshCommand) -> gateway_pb2.RefreshResult:
        """Moves the stream onto a fresh token of the same user and device."""
        if not command.access_token:
            raise invalid_field("refresh.access_token", "is required")
        assert self.verifier is not None, "the server hands the gateway its verifier before starting"
        principal = await self.verifier.verify(command.access_token)
        if principal.user_id != connection.user_id or principal.device_id != connection.device_id:
            raise permission_denied(
                errors_pb2.ERROR_REASON_NOT_OWNER, "the new token must be for this stream's user and device"
            )
        if connection.ended is None:
            self._expire_with_token(connection, principal.expires_at)
        return gateway_pb2.RefreshResult(token_expire_time_ms=int(principal.expires_at * 1000))

    def on_device_revoked(self, device: identity_pb2.RevokedDevice) -> None:
        """The device's tokens stop counting here, and its open streams end now."""
        assert self.verifier is not None, "the server hands the gateway its verifier before starting"
        if not self.verifier.revoked_devices.add(device.device_id):
            return  # known already (a snapshot after a reconnection repeats what was seen)
        error = unauthenticated(
            errors_pb2.ERROR_REASON_DEVICE_REVOKED, f"device {device.device_id} was revoked; this stream is closed"
        )
        for connection in self.connections.of_device(device.device_id):
            connection.end_with(error)

    async def _end(self, connection: Connection, reader: asyncio.Task[None] | None) -> None:
        """Stops reading commands and leaves every room, even if the stream is cancelled meanwhile.

        A client that half-closes and then cancels its stream would otherwise
        cancel the leave half-way, and its membership would outlive it.
        """

        async def end() -> None:
            if reader is not None:
                reader.cancel()
                await asyncio.gather(reader, return_exceptions=True)
            await self._disconnect(connection)

        await uncancellable(end())

    def _welcome(self, connection: Connection) -> gateway_pb2.Welcome:
        return gateway_pb2.Welcome(
            session_id=connection.session_id,
            user_id=connection.user_id,
            device_id=connection.device_id,
            limits=gateway_pb2.Limits(
                max_payload_bytes=self.config.max_payload_bytes,
                events_per_window=self.config.events_per_window,
                window_seconds=self.config.window_seconds,
                max_rooms=self.config.max_rooms_per_connection,
            ),
            server_time_ms=int(time.time() * 1000),
            token_expire_time_ms=int(connection.token_expires_at * 1000),
        )

    async def _read_commands(self, connection: Connection, requests: AsyncIterator[Any], send: Send) -> None:
        def fail(error: BaseException) -> None:
            log.error("a command failed unexpectedly", exc_info=error, extra={"session": connection.session_id})
            connection.outbox.fail(internal())

        run = functools.partial(self.commands.start, connection)
        lanes = CommandLanes(
            run, send, fail, self.config.max_commands_in_flight, ended=lambda: connection.ended is not None
        )
        # How the stream ends once the commands under way have stopped (None: normally, after what is queued).
        ending: ServiceError | None = None
        failure: Exception | None = None
        try:
            async for request in requests:
                if connection.ended is not None:
                    return
                if not request.request_id:
                    ending = protocol_violation("request_id: every command needs one")
                    break
                await lanes.submit(request)
            else:
                await lanes.finished()
        except ServiceError as error:
            # A frame that is not a ConnectRequest at all.
            ending = protocol_violation(error.message)
        except grpc.aio.AbortError:
            return
        except Exception as error:
            failure = error
        finally:
            await lanes.stop()
        if failure is not None:
            fail(failure)
        elif ending is not None:
            connection.outbox.fail(ending)
        else:
            connection.outbox.finish()

    async def _disconnect(self, connection: Connection) -> None:
        if connection.token_timer is not None:  # after the reader stopped: no refresh can set a new one
            connection.token_timer.cancel()
        self.connections.remove(connection)
        self.browser.ended(connection)
        self.questions.connection_ended(connection.session_id)
        self.direct.ended(connection)
        self.subjects.unsubscribe_all(connection)
        for room_id in list(connection.rooms):
            self.commands.drop(connection, room_id)
        # A stopping all-in-one gateway takes the membership (live state) with
        # it; a room service in its own process must still be told.
        if not (self.stopping and self.membership_is_local):
            try:
                left = await self.rooms.leave("", connection.user_id, connection.session_id)
            except ServiceError:
                # Refused because the server began to stop meanwhile: the membership goes with it.
                if not (self.stopping and self.membership_is_local):
                    log.warning("could not tell the room service a connection ended", exc_info=True)
                left = []
            await self.commands.announce_left(connection.user_id, connection.session_id, left, ended=True)
        await self.hooks.notify("on_disconnected", _session(connection))

    def go_away(self, message: str) -> None:
        """Tells every connection to come back within the drain spread (to a restarted or another
        gateway) and ends its stream once what is queued is sent."""
        self.stopping = True
        draining = ServiceError(grpc.StatusCode.UNAVAILABLE, errors_pb2.ERROR_REASON_DRAINING, message)
        status = gateway_pb2.GoAway(
            status=status_of(draining), reconnect_within_ms=self.config.drain_reconnect_within_ms
        )
        frame = wire.frame(gateway_pb2.ConnectResponse(go_away=status))
        for connection in self.connections.all():
            connection.outbox.put(kinds.FRAME, frame, urgent=True)
            connection.outbox.finish()

    # Room changes (from the room service's feed)

    async def rejoin_all(self) -> None:
        """Registers every local membership with the room service again (after it restarted, or after the
        watch was away); a connection whose user was removed from a private room meanwhile leaves it."""
        for connection in self.connections.all():
            for room_id in list(connection.rooms):
                try:
                    await self.rooms.join(room_id, connection.user_id, connection.session_id)
                except ServiceError as error:
                    if error.reason == reason_name(errors_pb2.ERROR_REASON_NOT_A_MEMBER):
                        room = self.directory.room(room_id) or room_pb2.Room(room_id=room_id)
                        removed = room_pb2.RoomChange(
                            kind=room_pb2.RoomChange.KIND_MEMBERS_REMOVED, room=room, user_ids=[connection.user_id]
                        )
                        await self._members_removed(notice_of(removed))
                        continue
                    log.warning("could not re-register a membership", exc_info=True, extra={"room": room_id})

    async def _members_removed(self, change: room_pb2.RoomChange) -> None:
        """Connections of users removed from a private room leave it at once, each told why."""
        removed, room_id = set(change.user_ids), change.room.room_id
        frame = wire.frame(gateway_pb2.ConnectResponse(room_changed=gateway_pb2.RoomChanged(change=change)))
        told: set[str] = set()
        for connection in self.connections.all():
            if connection.user_id in removed and room_id in connection.rooms:
                self.commands.drop(connection, room_id)
                connection.outbox.put(kinds.FRAME, frame, urgent=True)
                told.add(connection.user_id)
        for user_id in sorted(told):
            await self.commands.announce_left(user_id, "", [room_id])

    async def on_room_change(self, change: room_pb2.RoomChange) -> None:
        """Every connection is told of public rooms; members of a deleted room are taken out of it, users removed
        from a private room leave it."""
        if change.kind == room_pb2.RoomChange.KIND_MEMBERS_REMOVED:
            await self._members_removed(change)
            return
        if change.kind in (room_pb2.RoomChange.KIND_JOIN_REQUESTED, room_pb2.RoomChange.KIND_CHANNEL_COMMITTED):
            frame = wire.frame(gateway_pb2.ConnectResponse(room_changed=gateway_pb2.RoomChanged(change=change)))
            for connection in self.connections.all():
                if change.room.room_id in connection.rooms:
                    connection.outbox.put(kinds.FRAME, frame, urgent=True)
            return
        if change.kind == room_pb2.RoomChange.KIND_DELETED:
            for connection in self.feeds.forget_room(change.room.room_id):
                connection.rooms.pop(change.room.room_id, None)
                connection.caught_up.pop(change.room.room_id, None)
                context = JoinContext(connection.session_id, connection.user_id, change.room.room_id)
                await self.hooks.notify("on_left", context)
        if change.room.visibility != room_pb2.ROOM_VISIBILITY_PRIVATE:  # a private room is its members' business
            frame = wire.frame(gateway_pb2.ConnectResponse(room_changed=gateway_pb2.RoomChanged(change=change)))
            for connection in self.connections.all():
                connection.outbox.put(kinds.FRAME, frame, urgent=True)
        hook = "on_room_deleted" if change.kind == room_pb2.RoomChange.KIND_DELETED else "on_room_created"
        room = change.room
        await self.hooks.notify(hook, RoomContext(room_id=room.room_id, name=room.name, creator=room.creator))

    # Backend API

    async def publish_to_room(self, request: gateway_pb2.PublishToRoomRequest) -> gateway_pb2.PublishToRoomResponse:
        check_room_id(request.room_id)
        if not request.events:
            raise invalid_field("events", "is empty")
        rules = await self.commands.rules(request.room_id)
        for event in request.events:
            check_event(event)
            rules.validate(event.event, event.payload)
        result = await self.publisher.publish(rules, request.room_id, request.events, request.sender or SYSTEM_SENDER)
        return gateway_pb2.PublishToRoomResponse(seqs=result.seqs, handles=result.handles, recipients=result.recipients)

    async def edit_room_event(self, request: gateway_pb2.EditRoomEventRequest) -> gateway_pb2.EditRoomEventResponse:
        check_room_id(request.room_id)
        rules = await self.commands.rules(request.room_id)
        change = await self.changes.edit_by_service(
            rules, request.room_id, request.handle, request.payload, request.as_user
        )
        return gateway_pb2.EditRoomEventResponse(change=change)

    async def delete_room_event(
        self, request: gateway_pb2.DeleteRoomEventRequest
    ) -> gateway_pb2.DeleteRoomEventResponse:
        check_room_id(request.room_id)
        await self.commands.rules(request.room_id)  # ROOM_NOT_FOUND for an unknown room
        change = await self.changes.delete_by_service(request.room_id, request.handle, request.as_user)
        return gateway_pb2.DeleteRoomEventResponse(change=change)

    async def subscribe_room(self, request: gateway_pb2.SubscribeRoomRequest, context: Context) -> AsyncIterator[bytes]:
        """Yields SubscribeRoomResponse frames: the room's events and changes from now on, in its log's order.

        The backend is a member of the room's feed like a connection (of no user,
        subscribed to every event), so it gets the same ordered, gap-filled stream.
        """
        room_id = request.room_id
        check_room_id(room_id)
        await self.commands.rules(room_id)  # ROOM_NOT_FOUND for an unknown room

        async def let_go() -> None:
            self.feeds.remove(room_id, backend)
            outbox.release()

        release = StreamRelease(let_go)
        # The backend's own outbox: bounded like a connection's, batched the same way.
        outbox = Outbox(self.scheduler, self.config.max_outbound_bytes, self.config.max_frame_bytes, release.now)
        backend = Connection(session_id=new_session_id(self.gateway_id), user_id="", device_id="", outbox=outbox)
        backend.rooms[room_id] = Interest([ANY_EVENT])
        try:
            feed = await self.feeds.add(room_id, backend)
            end = await read_log_end(self.history, room_id)
            feed.start(end.epoch, end.through)
            while True:
                try:
                    frames = await outbox.next_frames()
                except SlowConsumer as cut:
                    raise slow_consumer(cut) from None
                for frame in frames or ():
                    body = backend_response(frame)
                    if body is not None:
                        yield body
                    outbox.sent(frame)
        finally:
            await release.finished()

    def list_connections(self, user_id: str) -> list[gateway_pb2.Connection]:
        chosen = self.connections.of_user(user_id) if user_id else self.connections.all()
        return [
            gateway_pb2.Connection(
                session_id=c.session_id,
                user_id=c.user_id,
                device_id=c.device_id,
                room_ids=sorted(c.rooms),
                connected_time_ms=int(c.connected_at * 1000),
            )
            for c in sorted(chosen, key=lambda c: c.session_id)
        ]

    def user_rooms(self, user_id: str) -> list[str]:
        return sorted({room for c in self.connections.of_user(user_id) for room in c.rooms})

    async def remove_user_from_rooms(self, user_id: str) -> list[str]:
        """Takes this gateway's connections of the user out of every room; each is told."""
        left: set[str] = set()
        for connection in self.connections.of_user(user_id):
            for room_id in list(connection.rooms):
                self.commands.drop(connection, room_id)
                gone = gateway_pb2.PresenceChange(user_id=user_id, joined=False)
                presence = gateway_pb2.ConnectResponse(presence=gateway_pb2.Presence(room_id=room_id, changes=[gone]))
                connection.outbox.put(kinds.FRAME, wire.frame(presence), urgent=True)
                left.update(await self.rooms.leave(room_id, user_id, connection.session_id))
        await self.commands.announce_left(user_id, "", sorted(left))
        return sorted(left)

    def send_to_connection(self, request: gateway_pb2.SendToConnectionRequest) -> None:
        connection = self.connections.get(request.session_id)
        if connection is None:
            raise not_found(
                errors_pb2.ERROR_REASON_SESSION_NOT_FOUND,
                f"no open connection {request.session_id!r} here",
                session_id=request.session_id,
            )
        direct = gateway_pb2.DirectMessage(sender=request.sender or SYSTEM_SENDER)
        direct.data.CopyFrom(null_if_unset(request.data))
        connection.outbox.put(kinds.FRAME, wire.frame(gateway_pb2.ConnectResponse(direct_message=direct)), urgent=True)


def backend_response(frame: bytes) -> bytes | None:
    """A SubscribeRoomResponse from a frame a room's feed made for its members (None: not for backends)."""
    if wire.is_events_frame(frame):
        # An events frame's body is a SubscribeRoomResponse (`repeated Event events = 1`).
        return wire.frame_body(frame)
    response = gateway_pb2.ConnectResponse.FromString(frame)
    kind = response.WhichOneof("frame")
    if kind == "event_changed":
        return gateway_pb2.SubscribeRoomResponse(changes=[response.event_changed]).SerializeToString()
    if kind == "history" and response.history.kind == gateway_pb2.HistoryBatch.KIND_GAP:
        reason = response.history.unrecovered_reason
        return gateway_pb2.SubscribeRoomResponse(unrecovered_reason=reason).SerializeToString()
    return None  # presence and ephemeral signals are for connections


def _reply_on_stream(connection: Connection, reply: gateway_pb2.Reply) -> None:
    connection.outbox.put(kinds.REPLY, wire.batch_item(reply.SerializeToString()), urgent=True)


def _token_expired(connection: Connection) -> None:
    connection.end_with(
        unauthenticated(
            errors_pb2.ERROR_REASON_TOKEN_EXPIRED,
            "the access token of this stream expired; send a RefreshCommand with a fresh one before it does",
        )
    )


def _session(connection: Connection) -> SessionContext:
    return SessionContext(session_id=connection.session_id, user_id=connection.user_id, device_id=connection.device_id)
