"""The async Parley client.

    async with Client("localhost:50051", username="alice") as client:
        me = await client.whoami()

On first use the client creates a device identity, saves it to its key file
(mode 0600), registers the user, and logs in by signing a challenge; access
tokens are refreshed shortly before they expire.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format

from parley.api.v1 import errors_pb2
from parley.backlog import DEFAULT_MAX_UNHANDLED_BYTES, HandlerBacklog
from parley.device_identity import DeviceIdentity
from parley.errors import (
    AlreadyExistsError,
    NotFoundError,
    ParleyError,
    UnauthenticatedError,
    ValidationError,
    error_from_rpc,
    error_from_status,
)
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from parley.messages import Messages
from parley.reasons import reason_name
from parley.room.v1 import room_pb2, room_pb2_grpc
from parley.rooms import Room, RoomEvent, call_handler, logged_event, room_event
from parley.stream import ConnectStream

T = TypeVar("T")
log = logging.getLogger("parley.client")
DEFAULT_ADDRESS = "localhost:50051"
# Refresh the access token when it has less than this many seconds left.
REFRESH_MARGIN_SECONDS = 30.0
DEFAULT_TIMEOUT_SECONDS = 10.0
# A stream that ended with one of these is not reopened by itself.
FINAL_ENDINGS = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}
)
# Ends a stream whose token expired: a new stream with a fresh token carries on.
TOKEN_EXPIRED = reason_name(errors_pb2.ERROR_REASON_TOKEN_EXPIRED)
# The token keeper hands the stream a fresh token this long before its own expires, and retries this often.
TOKEN_KEEPER_LEAD_SECONDS = 25.0
TOKEN_KEEPER_RETRY_SECONDS = 2.0


def _is_final(error: ParleyError | None) -> bool:
    """A stream ending the client does not recover from by opening another one."""
    return error is not None and error.code in FINAL_ENDINGS and error.reason != TOKEN_EXPIRED


# Worth trying again on a new stream.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})
# A stream that stayed up this long resets the backoff.
STABLE_STREAM_SECONDS = 10.0
RECONNECT_FIRST_DELAY_SECONDS = 0.1
RECONNECT_MAX_DELAY_SECONDS = 10.0


def _retrieve_failure(task: asyncio.Task[Any]) -> None:
    """Marks a background task's failure as seen: whoever waited for it was told, or had gone."""
    if not task.cancelled():
        task.exception()


def _worth_retrying(error: ParleyError) -> bool:
    return error.code in TRANSIENT or bool(getattr(error, "retryable", False))


def reconnect_delay(attempt: int) -> float:
    """Exponential backoff with jitter: ~0.1 s, 0.2, 0.4, ... up to 10 s."""
    ceiling = min(RECONNECT_MAX_DELAY_SECONDS, RECONNECT_FIRST_DELAY_SECONDS * 2.0 ** min(attempt, 20))
    return ceiling * random.uniform(0.5, 1.0)


class Client:
    """A connection to Parley as one device of one user.

    Args:
        address: the gateway (or all-in-one server), "host:port".
        username: the account to register or log in as; needed when the key
            file does not exist yet.
        key_file: where this device's keys live; created on first use.
        identity: keys to use instead of a key file (tests, embedding).
        device_name: a label for a newly created device.
        timeout: seconds each call may take.
        reconnect: when the realtime stream ends (network, server restart, a
            slow-consumer cut), open a new one with backoff and join the rooms
            again, resuming each from its last event; `False` leaves that to you.
        max_unhandled_bytes: how many bytes of received events may wait for
            handlers that have not returned yet; beyond, the client stops
            reading the stream until they catch up. A server that cannot wait
            that long ends the stream (`SlowConsumerError`); the client then
            resumes after the last event received, so every event still
            reaches the handlers once, in order.
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        username: str | None = None,
        key_file: Path | str | None = None,
        identity: DeviceIdentity | None = None,
        device_name: str = "",
        timeout: float = DEFAULT_TIMEOUT_SECONDS,
        reconnect: bool = True,
        max_unhandled_bytes: int = DEFAULT_MAX_UNHANDLED_BYTES,
    ) -> None:
        self.address = address
        self._username = username
        self._key_file = Path(key_file) if key_file is not None else None
        self._identity = identity
        self._device_name = device_name
        self._timeout = timeout
        self._channel: grpc.aio.Channel | None = None
        self._session: identity_pb2.Session | None = None
        self._token_lock = asyncio.Lock()
        # The RefreshToken exchange under way, if any: see `_refresh`.
        self._refreshing: asyncio.Task[identity_pb2.Session] | None = None
        self._stream: ConnectStream | None = None
        self._stream_lock = asyncio.Lock()
        self._rooms: dict[str, Room] = {}
        # Rooms this client was in when its stream ended: a join resumes from
        # their (epoch, last seq) and keeps their handlers.
        self._left_behind: dict[str, Room] = {}
        self._reconnect = reconnect
        self._closing = False
        # Rooms to join again once a new stream is open, and the task doing it.
        self._to_rejoin: dict[str, Room] = {}
        self._reconnector: asyncio.Task[None] | None = None
        self._reconnect_attempt = 0
        self._stream_opened_at = 0.0
        # Hands the open stream a fresh access token before the one it runs on expires.
        self._token_keeper: asyncio.Task[None] | None = None
        self._callbacks: dict[str, list[Callable[..., Any]]] = defaultdict(list)
        self._tasks: set[asyncio.Task[None]] = set()
        self._backlog = HandlerBacklog(max_unhandled_bytes)
        self.message = Messages(self)
        """Pub/sub subjects: `client.message.subscribe(...)`, `client.message.publish(...)`."""

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Connection and session

    async def connect(self) -> None:
        """Opens the channel, creates and registers the device if new, and logs in."""
        self._open_channel()
        try:
            identity = self._load_or_create_identity()
            if not identity.registered:
                await self._register_or_recover()
            await self.login()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Closes the stream and the channel; the key file and the server-side session remain."""
        await self._stop_stream(close_channel=True)

    async def _stop_stream(self, *, close_channel: bool) -> None:
        """Ends the realtime stream without reopening it, and the token keeper with it; then the channel if asked."""
        self._closing = True
        if self._reconnector is not None:  # it may hold the stream lock while it opens a stream
            self._reconnector.cancel()
            await asyncio.gather(self._reconnector, return_exceptions=True)
        if self._token_keeper is not None:
            self._token_keeper.cancel()
            await asyncio.gather(self._token_keeper, return_exceptions=True)
        async with self._stream_lock:  # no stream opens while this one closes
            self._closing = True
            self._leave_behind(list(self._to_rejoin.values()))
            if self._stream is not None:
                await self._stream.close()
                self._stream = None
            if close_channel and self._channel is not None:
                if self._refreshing is not None:  # closing the channel would lose its answer
                    await asyncio.gather(self._refreshing, return_exceptions=True)
                await self._channel.close(None)
                self._channel = None

    @property
    def identity(self) -> DeviceIdentity:
        """This device's keys (created on first use)."""
        return self._load_or_create_identity()

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def identity_stub(self) -> identity_pb2_grpc.IdentityServiceAsyncStub:
        """The generated IdentityService stub on this client's channel."""
        return identity_pb2_grpc.IdentityServiceStub(self._open_channel())

    async def register(self) -> identity_pb2.RegisterUserResponse:
        """Registers the user with this device as its first device."""
        identity = self._load_or_create_identity()
        response = await self._call(
            self.identity_stub.RegisterUser,
            identity_pb2.RegisterUserRequest(
                username=identity.username,
                user_signing_key=identity.user_public_key,
                device=identity.certify(identity),
            ),
            authenticated=False,
        )
        identity.user_id = response.user.user_id
        identity.registered = True
        self._save()
        return response

    async def _register_or_recover(self) -> None:
        try:
            await self.register()
        except AlreadyExistsError:
            # The name is taken, perhaps by our own earlier attempt whose reply
            # was lost: if this device can log in, the registration did happen.
            try:
                await self.login()
            except (NotFoundError, UnauthenticatedError):
                raise AlreadyExistsError(
                    grpc.StatusCode.ALREADY_EXISTS,
                    "USERNAME_TAKEN",
                    f"username {self.identity.username!r} is taken",
                ) from None
            self.identity.registered = True
            self._save()

    async def login(self) -> identity_pb2.Session:
        """Logs in by signing a fresh challenge with the device key."""
        identity = self._load_or_create_identity()
        challenge = await self._call(
            self.identity_stub.CreateLoginChallenge,
            identity_pb2.CreateLoginChallengeRequest(username=identity.username, device_id=identity.device_id),
            authenticated=False,
        )
        signature = identity.sign_challenge(challenge.challenge_id, challenge.nonce, challenge.user_id)
        response = await self._call(
            self.identity_stub.Login,
            identity_pb2.LoginRequest(challenge_id=challenge.challenge_id, signature=signature),
            authenticated=False,
        )
        if identity.user_id != response.user_id:
            identity.user_id = response.user_id
            self._save()
        self._session = response.session
        return response.session

    async def access_token(self) -> str:
        """A valid access token, refreshed (or re-logged-in) when close to expiry."""
        async with self._token_lock:
            if self._session is not None and self._expires_soon(self._session):
                try:
                    await self._refresh()
                except UnauthenticatedError:
                    # The session was revoked or has expired: prove the device key again.
                    self._session = None
            if self._session is None:
                await self.login()
            assert self._session is not None
            return self._session.access_token

    async def logout(self) -> int:
        """Ends the realtime stream and revokes this device's sessions on the server; returns how many.

        Nothing logs in again by itself afterwards; a later call that needs a
        token (or `stream()`) logs in anew.
        """
        await self._stop_stream(close_channel=False)
        response = await self._call(self.identity_stub.Logout, identity_pb2.LogoutRequest())
        self._session = None
        return response.revoked_sessions

    # Identity

    async def whoami(self) -> identity_pb2.WhoAmIResponse:
        """Who the server thinks this client is."""
        return await self._call(self.identity_stub.WhoAmI, identity_pb2.WhoAmIRequest())

    async def devices(self, user_id: str = "", *, show_revoked: bool = False) -> list[identity_pb2.Device]:
        """A user's devices (this user's by default)."""
        response = await self._call(
            self.identity_stub.ListDevices,
            identity_pb2.ListDevicesRequest(user_id=user_id, show_revoked=show_revoked),
        )
        return list(response.devices)

    async def add_device(self, display_name: str) -> DeviceIdentity:
        """Creates and registers another device of this user.

        Returns its identity; save it with `DeviceIdentity.save` and hand it to
        the other device. Needs the user signing key (the first device has it).
        """
        device = self.identity.new_device(display_name)
        await self._call(
            self.identity_stub.AddDevice, identity_pb2.AddDeviceRequest(device=self.identity.certify(device))
        )
        device.registered = True
        return device

    async def revoke_device(self, device_id: str) -> identity_pb2.Device:
        """Revokes one of this user's devices and ends its sessions."""
        response = await self._call(
            self.identity_stub.RevokeDevice, identity_pb2.RevokeDeviceRequest(device_id=device_id)
        )
        return response.device

    async def get_user(self, username: str) -> identity_pb2.GetUserResponse:
        """Looks up a user's public keys and active devices by username."""
        return await self._call(self.identity_stub.GetUser, identity_pb2.GetUserRequest(username=username))

    async def get_user_by_id(self, user_id: str) -> identity_pb2.GetUserResponse:
        """Looks up a user's name, public keys and active devices by user id."""
        return await self._call(self.identity_stub.GetUser, identity_pb2.GetUserRequest(user_id=user_id))

    # Rooms

    @property
    def room_stub(self) -> room_pb2_grpc.RoomServiceAsyncStub:
        """The generated RoomService stub on this client's channel."""
        return room_pb2_grpc.RoomServiceStub(self._open_channel())

    async def list_rooms(self) -> list[room_pb2.Room]:
        """Every public room (all pages)."""
        rooms: list[room_pb2.Room] = []
        token = ""
        while True:
            page = await self._call(
                self.room_stub.ListRooms, room_pb2.ListRoomsRequest(page_size=100, page_token=token)
            )
            rooms += page.rooms
            token = page.next_page_token
            if not token:
                return rooms

    async def get_room(self, room_id: str) -> room_pb2.Room:
        return (await self._call(self.room_stub.GetRoom, room_pb2.GetRoomRequest(room_id=room_id))).room

    async def create_room(
        self,
        room_id: str,
        *,
        name: str = "",
        description: str = "",
        max_size: int = 0,
        events: list[str] | None = None,
        read_only: bool = False,
        unlisted: bool = False,
        presence: bool = True,
    ) -> room_pb2.Room:
        """Creates a room at run time (you become its creator). `events` None accepts any event;
        `presence=False`: members are not told of joins and leaves (participants are still listed)."""
        request = room_pb2.CreateRoomRequest(
            room_id=room_id,
            name=name,
            description=description,
            max_size=max_size,
            events=[room_pb2.EventDefinition(name=e) for e in events or ()],
            read_only=read_only,
            visibility=room_pb2.ROOM_VISIBILITY_UNLISTED if unlisted else room_pb2.ROOM_VISIBILITY_PUBLIC,
            no_presence=not presence,
        )
        return (await self._call(self.room_stub.CreateRoom, request)).room

    async def delete_room(self, room_id: str) -> None:
        """Deletes a room you created (NOT_CREATOR otherwise)."""
        await self._call(self.room_stub.DeleteRoom, room_pb2.DeleteRoomRequest(room_id=room_id))

    async def participants(self, room_id: str) -> dict[str, list[str]]:
        """Who is in a room: user id -> their connections."""
        response = await self._call(self.room_stub.ListParticipants, room_pb2.ListParticipantsRequest(room_id=room_id))
        return {p.user_id: list(p.session_ids) for p in response.participants}

    async def join(self, room_id: str, *, resume: bool = True) -> Room:
        """Joins a room over the realtime stream; returns its handle.

        If this client was in the room before (e.g. before its stream ended), it
        resumes from the last event it saw: every kept event it missed comes
        first (`room.recovered` says whether that was possible), then live events;
        edits and deletes of earlier events made meanwhile reach `on_edited` /
        `on_deleted`. The room's handlers carry over to the returned handle.
        """
        stream = await self.stream()
        waiting = self._to_rejoin.pop(room_id, None)
        if waiting is not None:
            return await self._rejoin(stream, waiting)  # the reconnection was joining it anyway
        room = self._rooms.get(room_id)
        before = self._left_behind.get(room_id) if resume else None
        if room is None or not room.joined:
            # Registered before the command: events can arrive ahead of the reply.
            room = self._rooms[room_id] = Room(self, stream, room_pb2.Room(room_id=room_id), [])
            if before is not None:
                room.continue_from(before)
        return await self._send_join(stream, room, before)

    async def _rejoin(self, stream: ConnectStream, room: Room) -> Room:
        """The same room handle, joined again on a new stream from where it was.

        If that fails for the connection's sake the room waits for the next
        one; if the room itself refuses (deleted, full, denied) it ends.
        """
        room.rebind(stream)
        self._rooms[room.id] = room
        try:
            return await self._send_join(stream, room, room)
        except ParleyError as exc:
            if self._rooms.get(room.id) is room:
                del self._rooms[room.id]
            if room.closed or self._closing:
                raise  # ended meanwhile (closed client, a final ending): it stays ended
            if self._stream is not stream or _worth_retrying(exc):
                room.suspend()
                self._to_rejoin[room.id] = room
                self._start_reconnecting()
            else:
                self._leave_behind([room])
            raise

    async def _send_join(self, stream: ConnectStream, room: Room, before: Room | None) -> Room:
        command = gateway_pb2.JoinCommand(room_id=room.id)
        if before is not None:
            command.epoch, command.since_seq, command.resume = before.epoch, before.last_seq, True
            command.subscriptions.extend(before.subscriptions)
        try:
            reply = await stream.command(join=command)
        except BaseException:
            if self._rooms.get(room.id) is room and not room.info.name:
                del self._rooms[room.id]
            raise
        room.info = reply.join.room
        room.subscriptions = list(reply.join.subscriptions)
        room.recovered = reply.join.recovered
        if reply.join.last_seq > room.last_seq and not (before is not None and reply.join.recovered):
            # A fresh start: resume later from the log's position at this join.
            room.epoch, room.last_seq = reply.join.epoch, reply.join.last_seq
        room.epoch = room.epoch or reply.join.epoch
        # Runs after the caller's code up to its next await: handlers it registers
        # there get the events and changes that came with the join.
        asyncio.get_running_loop().call_soon(room.release_held)
        return room

    # History

    @property
    def history_stub(self) -> history_pb2_grpc.HistoryServiceAsyncStub:
        """The generated HistoryService stub on this client's channel."""
        return history_pb2_grpc.HistoryServiceStub(self._open_channel())

    async def history(self, room_id: str, *, limit: int = 50, before: int = 0, event: str = "") -> list[RoomEvent]:
        """A room's kept events, newest first, without joining it.

        Up to `limit` events (several pages when the server's page is smaller)
        with a sequence below `before` (0: from the newest), only `event` if given.
        Page further back with `before=events[-1].seq`.
        """
        for field, number in (("limit", limit), ("before", before)):
            if number < 0:
                raise ValidationError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "VALIDATION_FAILED",
                    f"{field}: must not be negative",
                    {"field": field},
                )
        events: list[RoomEvent] = []
        request = history_pb2.ListEventsRequest(room_id=room_id, before_seq=before, event=event)
        while len(events) < limit:
            request.page_size = limit - len(events)
            page = await self._call(self.history_stub.ListEvents, request)
            events += [logged_event(room_id, page.epoch, e) for e in page.events]
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        return events

    async def get_history(self, room_id: str, event: str = "", start: int = 0, end: int = 50) -> list[RoomEvent]:
        """Kept events by offset, newest first: offsets `start` to `end` (exclusive), 0 the newest.

        With `event`, offsets count only that event's entries (the seed's `getHistory`).
        """
        request = history_pb2.ListEventsRequest(
            room_id=room_id, event=event, range=history_pb2.OffsetRange(start=start, end=end)
        )
        page = await self._call(self.history_stub.ListEvents, request)
        return [logged_event(room_id, page.epoch, e) for e in page.events]

    def forget_room(self, room_id: str) -> None:
        """The room was left on purpose: a later join starts afresh."""
        self._rooms.pop(room_id, None)
        self._left_behind.pop(room_id, None)
        self._to_rejoin.pop(room_id, None)

    # Realtime stream and its callbacks

    def on_connect(self, handler: Callable[[gateway_pb2.Welcome], Any]) -> None:
        """Calls `handler(welcome)` when the realtime stream opens."""
        self._callbacks["connect"].append(handler)

    def on_disconnect(self, handler: Callable[[ParleyError | None], Any]) -> None:
        """Calls `handler(error_or_None)` when the realtime stream ends."""
        self._callbacks["disconnect"].append(handler)

    def on_error(self, handler: Callable[[ParleyError], Any]) -> None:
        """Calls `handler(error)` when the server ends the stream with an error (GoAway), or a room
        cannot be joined again after a reconnection (e.g. ROOM_NOT_FOUND: the room ends)."""
        self._callbacks["error"].append(handler)

    def on_room_created(self, handler: Callable[[room_pb2.Room], Any]) -> None:
        self._callbacks["room_created"].append(handler)

    def on_room_deleted(self, handler: Callable[[room_pb2.Room], Any]) -> None:
        self._callbacks["room_deleted"].append(handler)

    def on_history(self, handler: Callable[[str, list[RoomEvent], bool], Any]) -> None:
        """Calls `handler(room_id, events, recovered)` for each history batch (replay or sync on join).

        The events are also delivered to the room's handlers and `events()`, in order. A long
        replay comes as several batches, one call each. Live events the server lost and could
        not fill from the log come as a batch with no events and `recovered` False (the room's
        `recovered` turns False too): reload with `room.history()`.
        """
        self._callbacks["history"].append(handler)

    def on_direct_message(self, handler: Callable[[str, Any], Any]) -> None:
        """Calls `handler(sender, data)` for messages a backend sends to this connection."""
        self._callbacks["direct_message"].append(handler)

    async def stream(self) -> ConnectStream:
        """The realtime stream, opened on first use (and again after `close()`)."""
        async with self._stream_lock:
            stream = self._stream
            if stream is None:
                self._closing = False
                stream = ConnectStream(
                    self._open_channel(),
                    await self.access_token(),
                    self._on_frame,
                    self._on_end,
                    self._backlog.caught_up,
                )
                welcome = await stream.open()
                self._stream, self._stream_opened_at = stream, time.monotonic()
                if self._token_keeper is not None:
                    self._token_keeper.cancel()
                self._token_keeper = asyncio.get_running_loop().create_task(self._keep_token_fresh(stream, welcome))
                await self.message.resubscribe(stream)
                self._fire("connect", welcome)
            return stream

    async def _keep_token_fresh(self, stream: ConnectStream, welcome: gateway_pb2.Welcome) -> None:
        """Sends the stream a RefreshCommand shortly before its token expires, for as long as it is open.

        Expiry times are the server's; `welcome.server_time_ms` tells how far
        this machine's clock is from it. The server ends a stream whose token
        expired (TOKEN_EXPIRED); a failed refresh is tried again until then,
        and a stream that ends anyway is reopened like after any other ending.
        """
        server_ahead = welcome.server_time_ms / 1000 - time.time()
        expires_at = welcome.token_expire_time_ms / 1000  # server clock; 0: never
        while expires_at and self._stream is stream:
            left = expires_at - (time.time() + server_ahead)
            # Halfway through a short-lived token, rather than refreshing at once again and again.
            await asyncio.sleep(max(0.0, left - TOKEN_KEEPER_LEAD_SECONDS, left / 2))
            if self._stream is not stream:
                return
            try:
                token = await self._token_expiring_after(expires_at)
                if token is None:
                    return  # logged out, or the session was revoked: not the keeper's to log in again
                reply = await stream.command(refresh=gateway_pb2.RefreshCommand(access_token=token))
                expires_at = reply.refresh.token_expire_time_ms / 1000
            except ParleyError as exc:
                if self._stream is not stream:
                    return
                log.warning("could not hand the stream a fresh token: %s", exc)
                await asyncio.sleep(TOKEN_KEEPER_RETRY_SECONDS)

    async def _token_expiring_after(self, server_time: float) -> str | None:
        """An access token that outlives `server_time` (the server's clock), refreshed if the current one does not.

        None when there is no session to refresh: this never logs in.
        """
        async with self._token_lock:
            if self._session is None:
                return None
            if self._session.access_token_expire_time.ToNanoseconds() / 1e9 <= server_time:
                try:
                    await self._refresh()
                except UnauthenticatedError:
                    return None
            return None if self._session is None else self._session.access_token

    def _on_frame(self, frame: gateway_pb2.ConnectResponse) -> None:
        with self._backlog.dispatching(frame.ByteSize()):
            self._dispatch(frame)

    def _dispatch(self, frame: gateway_pb2.ConnectResponse) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "events":
            for event in frame.events.events:
                room = self._rooms.get(event.room_id)
                if room is not None:
                    room.dispatch(event)
        elif kind == "subject_events":
            for subject_event in frame.subject_events.events:
                self.message.dispatch(subject_event)
        elif kind == "presence":
            room = self._rooms.get(frame.presence.room_id)
            if room is not None:
                for presence in frame.presence.changes:
                    room.dispatch_presence(presence.user_id, presence.joined)
        elif kind == "room_changed":
            change = frame.room_changed.change
            if change.kind == room_pb2.RoomChange.KIND_DELETED:
                gone = self._rooms.pop(change.room.room_id, None)
                if gone is not None:
                    gone.close()
                self._fire("room_deleted", change.room)
            else:
                self._fire("room_created", change.room)
        elif kind == "direct_message":
            message = frame.direct_message
            self._fire("direct_message", message.sender, json_format.MessageToDict(message.data))
        elif kind == "history":
            batch = frame.history
            room = self._rooms.get(batch.room_id)
            if room is not None:
                for event in batch.events:
                    room.dispatch(event)
                for edit_or_delete in batch.changes:
                    room.dispatch_change(edit_or_delete)
                room.recovered = batch.recovered
            self._fire("history", batch.room_id, [room_event(e) for e in batch.events], batch.recovered)
        elif kind == "event_changed":
            room = self._rooms.get(frame.event_changed.room_id)
            if room is not None:
                room.dispatch_change(frame.event_changed)
        elif kind == "ephemeral":
            room = self._rooms.get(frame.ephemeral.room_id)
            if room is not None:
                room.dispatch_signal(frame.ephemeral)
        elif kind == "go_away":
            self._fire("error", error_from_status(frame.go_away.status))

    def _on_end(self, error: ParleyError | None) -> None:
        if self._token_keeper is not None:
            self._token_keeper.cancel()
            self._token_keeper = None
        if self._stream is not None and time.monotonic() - self._stream_opened_at >= STABLE_STREAM_SECONDS:
            self._reconnect_attempt = 0  # it held: the next reconnection starts with a short wait again
        self._stream = None
        rooms, self._rooms = self._rooms, {}
        if self._reconnect and not self._closing and not _is_final(error):
            # The same room handles carry on once joined again: iterators stay open.
            for room in rooms.values():
                room.suspend()
            self._to_rejoin.update(rooms)
            self._start_reconnecting()
        else:
            if self._reconnector is not None:
                self._reconnector.cancel()
            self._leave_behind([*rooms.values(), *self._to_rejoin.values()])
        self._fire("disconnect", error)

    def _start_reconnecting(self) -> None:
        if not self._closing and (self._reconnector is None or self._reconnector.done()):
            self._reconnector = asyncio.get_running_loop().create_task(self._reconnect_and_rejoin())

    def _leave_behind(self, rooms: list[Room]) -> None:
        """The rooms end (iterators stop); joining one again later resumes from where it was."""
        for room in rooms:
            self._to_rejoin.pop(room.id, None)
            self._left_behind[room.id] = room
            room.close()

    async def _reconnect_and_rejoin(self) -> None:
        """Opens a new stream after the last one ended, with backoff, and joins the rooms again."""
        while not self._closing:
            await asyncio.sleep(reconnect_delay(self._reconnect_attempt))
            self._reconnect_attempt += 1
            try:
                stream = await self.stream()
                for room_id in list(self._to_rejoin):
                    if self._stream is not stream:
                        break  # it ended too: its rooms wait for the next one
                    room = self._to_rejoin.pop(room_id, None)
                    if room is None:
                        continue  # joined again by the application meanwhile
                    try:
                        await self._rejoin(stream, room)
                    except ParleyError as exc:  # `_rejoin` put the room where it belongs
                        if room.closed:
                            self._fire("error", exc)  # the room refused: nobody else is told
            except ParleyError as exc:
                if exc.code in FINAL_ENDINGS:
                    self._leave_behind(list(self._to_rejoin.values()))
                    self._fire("error", exc)
                    return
                continue
            except Exception:
                log.exception("reconnecting failed; trying again")
                continue
            if self._stream is stream and not self._to_rejoin:
                return

    def _fire(self, name: str, *args: Any) -> None:
        for handler in self._callbacks.get(name, ()):
            self.spawn(call_handler(handler, *args))

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Runs a handler call in the background, keeping a reference until it is done."""
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self._backlog.track(task)

    # Plumbing

    async def _call(
        self,
        method: Callable[..., Awaitable[T]],
        request: object,
        *,
        authenticated: bool = True,
    ) -> T:
        metadata: tuple[tuple[str, str], ...] = ()
        if authenticated:
            metadata = (("authorization", f"Bearer {await self.access_token()}"),)
        try:
            return await method(request, metadata=metadata, timeout=self._timeout)
        except grpc.aio.AioRpcError as exc:
            raise error_from_rpc(exc) from None

    async def _refresh(self) -> None:
        """Exchanges the refresh token for a new session, one exchange at a time.

        The server spends the refresh token when it answers, and a second use of
        it revokes the whole session (reuse detection). So the exchange runs as
        a task of its own that stores the answer even if every caller stopped
        waiting (a cancelled `access_token()`, the token keeper cancelled when
        its stream ends or the client closes), and a caller that comes while it
        runs waits for it rather than spending the token again.
        """
        if self._refreshing is None or self._refreshing.done():
            assert self._session is not None
            task = asyncio.get_running_loop().create_task(self._exchange_refresh_token(self._session))
            task.add_done_callback(_retrieve_failure)
            self._refreshing = task
        await asyncio.shield(self._refreshing)

    async def _exchange_refresh_token(self, spent: identity_pb2.Session) -> identity_pb2.Session:
        response = await self._call(
            self.identity_stub.RefreshToken,
            identity_pb2.RefreshTokenRequest(refresh_token=spent.refresh_token),
            authenticated=False,
        )
        if self._session is spent:  # not logged out (or in again) meanwhile
            self._session = response.session
        return response.session

    @staticmethod
    def _expires_soon(session: identity_pb2.Session) -> bool:
        expires_at = session.access_token_expire_time.ToNanoseconds() / 1e9
        return expires_at - time.time() < REFRESH_MARGIN_SECONDS

    def _open_channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            self._channel = grpc.aio.insecure_channel(self.address)
        return self._channel

    def _load_or_create_identity(self) -> DeviceIdentity:
        if self._identity is not None:
            return self._identity
        if self._key_file is not None and self._key_file.exists():
            self._identity = DeviceIdentity.load(self._key_file)
            if self._username and self._username != self._identity.username:
                raise ParleyError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "",
                    f"key file {self._key_file} belongs to {self._identity.username!r}, not {self._username!r}",
                )
            return self._identity
        if not self._username:
            raise ParleyError(grpc.StatusCode.INVALID_ARGUMENT, "", "no key file yet: give a username to register")
        self._identity = DeviceIdentity.generate(self._username, self._device_name)
        self._save()
        return self._identity

    def _save(self) -> None:
        if self._key_file is not None and self._identity is not None:
            self._identity.save(self._key_file)
