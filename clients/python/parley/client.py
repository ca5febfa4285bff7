"""The async Parley client.

    async with Client("localhost:50051", username="alice") as client:
        me = await client.whoami()

On first use the client creates a device identity, registers the user (the
key file, mode 0600, is written once the server has accepted it), and logs
in by signing a challenge; access tokens are refreshed shortly before they
expire. `Client` puts together parts with one job each: `Auth` (keys,
session, unary calls), `Connection` (the realtime stream, its states,
reconnection and heartbeat), `Sender` and `Outbox` (the one send path),
`Receiver` (the one receive path), `RoomRegistry` (joined rooms and their
resumption), `Accounts` and `RoomCalls` (unary services).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from parley.accounts import Accounts, Device, Me, User
from parley.auth import DEFAULT_TIMEOUT_SECONDS, Auth
from parley.backlog import DEFAULT_MAX_UNHANDLED_BYTES, HandlerBacklog
from parley.backoff import Backoff
from parley.connection import Connection, ConnectionState, Heartbeat
from parley.crypto.safety_numbers import SafetyNumber
from parley.device_identity import DeviceIdentity
from parley.direct_messages import DirectMessages
from parley.errors import ParleyError
from parley.files import Files
from parley.gateway.v1 import gateway_pb2
from parley.handlers import HandlerRunner
from parley.history.v1 import history_pb2_grpc
from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from parley.messages import Messages
from parley.outbox import DEFAULT_OUTBOX_LIMIT, Outbox, Send
from parley.peers import Peer, Peers
from parley.questions import QuestionHandler, Questions
from parley.receiver import EventStage, Receiver
from parley.room.v1 import room_pb2, room_pb2_grpc
from parley.room_calls import RoomCalls
from parley.room_registry import RoomRegistry
from parley.rooms import Room, RoomEvent
from parley.sender import DEFAULT_MAX_SEND_ATTEMPTS, Sender
from parley.spaces import Spaces
from parley.stream import ConnectStream
from parley.trust import PeerKeys

DEFAULT_ADDRESS = "localhost:50051"


class Client:
    """A connection to Parley as one device of one user.

    Args:
        address: the gateway (or all-in-one server), "host:port".
        username: the account to register or log in as; needed when the key
            file does not exist yet.
        key_file: where this device's keys live; written once registered.
        identity: keys to use instead of a key file (tests, embedding).
        device_name: a label for a newly created device.
        timeout: seconds each unary call may take.
        reconnect: when the realtime stream ends (network, server restart, a
            slow-consumer cut), open a new one with backoff and join the rooms
            again, resuming each from its last event; `False` leaves that to you.
        backoff: how long to wait before each reconnection attempt (full
            jitter) and after how many failed attempts to give up (`failed`).
        heartbeat: how often to ping, and how long a ping may go unanswered
            before the link counts as dead and the client reconnects.
        max_unhandled_bytes: how many bytes of received events may wait for
            handlers that have not returned yet; beyond, the client stops
            reading the stream until they catch up. A server that cannot wait
            that long ends the stream (`SlowConsumerError`); the client then
            resumes after the last event received, so every event still
            reaches the handlers once, in order.
        outbox_limit: how many sends may wait for the server (while
            reconnecting, or unanswered); one more raises `OutboxFullError`.
        outbox_file: keep pending sends in this file, so that a restarted
            application sends them (each once its room is joined again).
        max_send_attempts: how often a send whose answer was lost is sent
            again before it fails.
        keystore_file: where this device's end-to-end state lives (ratchet
            sessions, private prekeys, pinned keys); default: beside the key
            file, its name ending ".e2e.json"; in memory only when the client
            has no key file.
        keystore_passphrase: seal the key store under this passphrase
            (Argon2id); None keeps it as a 0600 file.
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
        backoff: Backoff | None = None,
        heartbeat: Heartbeat | None = None,
        max_unhandled_bytes: int = DEFAULT_MAX_UNHANDLED_BYTES,
        outbox_limit: int = DEFAULT_OUTBOX_LIMIT,
        outbox_file: Path | str | None = None,
        max_send_attempts: int = DEFAULT_MAX_SEND_ATTEMPTS,
        keystore_file: Path | str | None = None,
        keystore_passphrase: str | None = None,
    ) -> None:
        self.address = address
        heartbeat = heartbeat or Heartbeat()
        backoff = backoff or Backoff()
        self._auth = Auth(
            address,
            username=username,
            key_file=Path(key_file) if key_file is not None else None,
            identity=identity,
            device_name=device_name,
            timeout=timeout,
            channel_options=[*heartbeat.channel_options(), *backoff.channel_options()],
        )
        self._runner = HandlerRunner(HandlerBacklog(max_unhandled_bytes))
        self._accounts = Accounts(self._auth)
        self._calls = RoomCalls(self._auth)
        self._connection = Connection(
            self._auth,
            self._runner,
            lambda frame: self._receiver.receive(frame),
            reconnect=reconnect,
            backoff=backoff,
            heartbeat=heartbeat,
        )
        self._sender = Sender(
            self._connection,
            Outbox(outbox_limit, Path(outbox_file) if outbox_file is not None else None),
            self._runner,
            max_attempts=max_send_attempts,
        )
        self._direct = DirectMessages(
            self._auth, self._sender, _keystore_file(keystore_file, key_file), keystore_passphrase
        )
        self.files = Files(self._auth)
        """End-to-end encrypted files: `client.files.put(path)` returns a `FileRef` to send inside a sealed
        message; `client.files.get(ref)` fetches and opens it. No realtime stream needed."""
        self.message = Messages(
            self._sender, self._runner, self._connection, self._direct, lambda: self.user_id, self.files
        )
        """Pub/sub subjects (`client.message.subscribe(...)`, `client.message.publish(...)`) and encrypted
        direct messages (`client.message.send("user:<id>", ...)`, `client.message.subscribe("user:<me>", ...)`)."""
        self._rooms = RoomRegistry(self._connection, self._sender, self._runner, self._calls)
        self.space = Spaces(self._auth, self._direct, self.join, self.files)
        self._runner.add("join_request", self.space.join_requested)
        self._runner.add("channel_committed", self.space.committed)
        """Sealed group channels: `client.space.create_channel(name)`, `join_channel`, `list_channels`."""
        self._questions = Questions(self._sender, self._runner)
        self._peers = Peers(self._auth, self._runner)
        self._receiver = Receiver(
            self._runner, self._connection, self._rooms, self.message, self._questions, self._peers, self._direct
        )

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # Connection and session

    async def connect(self) -> None:
        """Creates and registers the device if new, and logs in (the realtime stream opens on first use)."""
        try:
            await self._auth.ensure_registered()
            await self._auth.login()
        except BaseException:
            await self.close()
            raise

    async def close(self) -> None:
        """Closes the stream and the channel; the key file and the server-side session remain.

        Sends still pending fail, unless the outbox keeps a file: then they
        stay in it for the next run.
        """
        await self._connection.close()
        await self._auth.close_channel()
        self._sender.outbox.close()

    @property
    def state(self) -> ConnectionState:
        """`disconnected`, `connecting`, `connected`, `reconnecting` or `failed` (see `on_state`)."""
        return self._connection.state

    @property
    def outbox(self) -> list[Send]:
        """Sends waiting for the server's answer, oldest first."""
        return list(self._sender.outbox)

    @property
    def identity(self) -> DeviceIdentity:
        """This device's keys (created on first use)."""
        return self._auth.identity

    @property
    def user_id(self) -> str:
        return self.identity.user_id

    @property
    def device_id(self) -> str:
        return self.identity.device_id

    @property
    def identity_stub(self) -> identity_pb2_grpc.IdentityServiceAsyncStub:
        """The generated IdentityService stub on this client's channel."""
        return self._auth.identity_stub

    async def register(self) -> None:
        """Registers the user with this device as its first device (done by `connect` when needed)."""
        await self._auth.ensure_registered()

    async def login(self) -> identity_pb2.Session:
        """Logs in by signing a fresh challenge with the device key."""
        return await self._auth.login()

    async def access_token(self) -> str:
        """A valid access token, refreshed (or re-logged-in) when close to expiry."""
        return await self._auth.access_token()

    async def logout(self) -> int:
        """Ends the realtime stream and revokes this device's sessions on the server; returns how many.

        Nothing logs in again by itself afterwards; a later call that needs a
        token (or a join) logs in anew.
        """
        await self._connection.close()
        return await self._auth.logout()

    # Identity

    async def whoami(self) -> Me:
        """Who the server thinks this client is."""
        return await self._accounts.whoami()

    async def devices(self, user_id: str = "", *, show_revoked: bool = False) -> list[Device]:
        """A user's devices (this user's by default)."""
        return await self._accounts.devices(user_id, show_revoked=show_revoked)

    async def add_device(self, display_name: str) -> DeviceIdentity:
        """Creates and registers another device of this user.

        Returns its identity; save it with `DeviceIdentity.save` and hand it to
        the other device. Needs the user signing key (the first device has it).
        """
        device = await self._accounts.add_device(display_name)
        await self._direct.device_list_changed(added=device.device_id)
        return device

    async def revoke_device(self, device_id: str) -> Device:
        """Revokes one of this user's devices and ends its sessions."""
        device = await self._accounts.revoke_device(device_id)
        await self._direct.device_list_changed(revoked=device_id)
        return device

    async def get_user(self, username: str) -> User:
        """Looks up a user's public keys and active devices by username."""
        return await self._accounts.get_user(username)

    async def get_user_by_id(self, user_id: str) -> User:
        """Looks up a user's name, public keys and active devices by user id."""
        return await self._accounts.get_user(user_id=user_id)

    # End-to-end encryption

    async def request_public_key(self, user_id: str) -> PeerKeys:
        """The user's pinned identity key and the device keys it vouches for (their signed device list).

        The first answer for a user is pinned; raises `KeyChangedError` (parley.crypto.errors) when the
        service presents another key later, until you `trust` it.
        """
        return await self._direct.request_public_key(user_id)

    async def safety_number(self, user_id: str, *, presented: bool = False) -> SafetyNumber:
        """60 digits for your key and the key pinned for `user_id` (pinned now if this is the first time): the
        same on both sides when nobody is in the middle. Compare it in person or over a channel you trust.

        With `presented=True`, the number for the key the service presents now: after a `KeyChangedError`,
        compare that one, then `trust(user_id, safety_number=...)`.
        """
        return await self._direct.safety_number(user_id, presented=presented)

    async def trust(self, user_id: str, *, safety_number: SafetyNumber | str | None = None) -> None:
        """Accepts the user's current key (after comparing safety numbers); their held messages are delivered.

        With `safety_number` (the digits you compared; spaces are ignored) the key is accepted only if it
        still gives that number: `KeyChangedError` otherwise.
        """
        await self._direct.trust(user_id, safety_number)

    async def publish_prekeys(self) -> None:
        """Makes this device reachable for encrypted direct messages now: publishes its prekeys (and, on a
        device holding the user key, the signed device list). Done by itself the first time the client
        sends, subscribes to its direct messages or asks for a key."""
        await self._direct.ready()

    # Rooms

    @property
    def room_stub(self) -> room_pb2_grpc.RoomServiceAsyncStub:
        """The generated RoomService stub on this client's channel."""
        return self._calls.room_stub

    async def list_rooms(self) -> list[room_pb2.Room]:
        """Every public room (all pages)."""
        return await self._calls.list_rooms()

    async def get_room(self, room_id: str) -> room_pb2.Room:
        return await self._calls.get_room(room_id)

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
        private: bool = False,
        presence: bool = True,
    ) -> room_pb2.Room:
        """Creates a room at run time (you become its creator). `events` None accepts any event;
        `private=True`: only its members join it and read its history (you are its first admin; add others
        with `add_room_members`); `presence=False`: members are not told of joins and leaves (participants
        are still listed)."""
        if private and unlisted:
            raise ValueError("a room is private or unlisted, not both (a private room is never listed)")
        visibility = room_pb2.ROOM_VISIBILITY_PUBLIC
        if unlisted:
            visibility = room_pb2.ROOM_VISIBILITY_UNLISTED
        elif private:
            visibility = room_pb2.ROOM_VISIBILITY_PRIVATE
        return await self._calls.create_room(
            room_pb2.CreateRoomRequest(
                room_id=room_id,
                name=name,
                description=description,
                max_size=max_size,
                events=[room_pb2.EventDefinition(name=e) for e in events or ()],
                read_only=read_only,
                visibility=visibility,
                no_presence=not presence,
            )
        )

    async def delete_room(self, room_id: str) -> None:
        """Deletes a room you created (NOT_CREATOR otherwise)."""
        await self._calls.delete_room(room_id)

    async def add_room_members(
        self, room_id: str, user_ids: list[str], *, admin: bool = False
    ) -> list[room_pb2.RoomMember]:
        """Adds users to a private room (you must be its admin); `admin=True` lets them change members too."""
        return await self._calls.add_members(room_id, user_ids, admin=admin)

    async def remove_room_members(self, room_id: str, user_ids: list[str]) -> list[str]:
        """Removes users from a private room (an admin, or yourself to leave it for good): their connections
        leave it at once and their tokens no longer read its history. Returns those who were members."""
        return await self._calls.remove_members(room_id, user_ids)

    async def room_members(self, room_id: str) -> list[room_pb2.RoomMember]:
        """A private room's members and their roles (members only)."""
        return await self._calls.members(room_id)

    def on_removed_from_room(self, handler: Callable[[str], Any]) -> None:
        """Calls `handler(room_id)` when you are removed from a private room (its handle stops receiving)."""
        self._runner.add("removed_from_room", handler)

    async def participants(self, room_id: str) -> dict[str, list[str]]:
        """Who is in a room: user id -> their connections."""
        return await self._calls.participants(room_id)

    async def join(self, room_id: str, *, resume: bool = True) -> Room:
        """Joins a room over the realtime stream; returns its handle.

        If this client was in the room before (e.g. before its stream ended), it
        resumes from the last event it saw: every kept event it missed comes
        first (`room.recovered` says whether that was possible), then live events;
        edits and deletes of earlier events made meanwhile reach `on_edited` /
        `on_deleted`. The room's handlers carry over to the returned handle.
        """
        return await self._rooms.join(room_id, resume=resume)

    def forget_room(self, room_id: str) -> None:
        """The room was left on purpose: a later join starts afresh."""
        self._rooms.forget(room_id)

    # History

    @property
    def history_stub(self) -> history_pb2_grpc.HistoryServiceAsyncStub:
        """The generated HistoryService stub on this client's channel."""
        return self._calls.history_stub

    async def history(self, room_id: str, *, limit: int = 50, before: int = 0, event: str = "") -> list[RoomEvent]:
        """A room's kept events, newest first, without joining it.

        Up to `limit` events (several pages when the server's page is smaller)
        with a sequence below `before` (0: from the newest), only `event` if given.
        Page further back with `before=events[-1].seq`.
        """
        return await self._calls.history(room_id, limit=limit, before=before, event=event)

    async def get_history(self, room_id: str, event: str = "", start: int = 0, end: int = 50) -> list[RoomEvent]:
        """Kept events by offset, newest first: offsets `start` to `end` (exclusive), 0 the newest.

        With `event`, offsets count only that event's entries (the seed's `getHistory`).
        """
        return await self._calls.get_history(room_id, event, start, end)

    # Realtime stream and its callbacks

    async def stream(self) -> ConnectStream:
        """The realtime stream: opened on first use (and again after `close()`), awaited while reconnecting."""
        return await self._connection.stream()

    def add_receive_stage(self, stage: EventStage) -> None:
        """`await stage(event)` on every received room event before handlers see it; a room's events
        keep their order however long a stage takes."""
        self._receiver.add_stage(stage)

    def on_state(self, handler: Callable[[ConnectionState, ParleyError | None], Any]) -> None:
        """Calls `handler(state, error_or_None)` on every change of `client.state`, in order."""
        self._runner.add("state", handler)

    def on_connect(self, handler: Callable[[gateway_pb2.Welcome], Any]) -> None:
        """Calls `handler(welcome)` when a realtime stream is connected (rooms joined again by then)."""
        self._runner.add("connect", handler)

    def on_disconnect(self, handler: Callable[[ParleyError | None], Any]) -> None:
        """Calls `handler(error_or_None)` when the realtime stream ends."""
        self._runner.add("disconnect", handler)

    def on_error(self, handler: Callable[[ParleyError], Any]) -> None:
        """Calls `handler(error)` when the server ends the stream with an error (GoAway), a room
        cannot be joined again after a reconnection (e.g. ROOM_NOT_FOUND: the room ends), or the
        client gives up reconnecting."""
        self._runner.add("error", handler)

    def on_message_sent(self, handler: Callable[[Send], Any]) -> None:
        """Calls `handler(send)` when the server has accepted a send (`send.reply`, `send.retries`)."""
        self._runner.add("message_sent", handler)

    def on_message_failed(self, handler: Callable[[Send], Any]) -> None:
        """Calls `handler(send)` when a send failed for good (`send.error`)."""
        self._runner.add("message_failed", handler)

    def on_room_created(self, handler: Callable[[room_pb2.Room], Any]) -> None:
        self._runner.add("room_created", handler)

    def on_room_deleted(self, handler: Callable[[room_pb2.Room], Any]) -> None:
        self._runner.add("room_deleted", handler)

    def on_history(self, handler: Callable[[str, list[RoomEvent], bool], Any]) -> None:
        """Calls `handler(room_id, events, recovered)` for each history batch (replay or sync on join).

        The events are also delivered to the room's handlers and `events()`, in order. A long
        replay comes as several batches, one call each. Live events the server lost and could
        not fill from the log come as a batch with no events and `recovered` False (the room's
        `recovered` turns False too): reload with `room.history()`.
        """
        self._runner.add("history", handler)

    def on_question(self, handler: QuestionHandler) -> None:
        """Answers the backend's questions (GatewayService.AskClient): `handler(question)`, plain or
        async, returns the answer (any JSON value). Without a handler the backend gets NO_ANSWER."""
        self._questions.on_question(handler)

    async def peers(self) -> list[Peer]:
        """The online users who share a room with you (not the whole deployment), with those rooms."""
        return await self._peers.list()

    def on_peer_disconnected(self, handler: Callable[[str], Any]) -> None:
        """Calls `handler(user_id)` when a user who shares a room with you goes offline there (their last
        connection in that room ended: closed, lost, or moving to another gateway); a connection that was
        in several of your rooms is reported once. Rooms with presence off say nothing."""
        self._peers.on_disconnected(handler)

    def on_direct_message(self, handler: Callable[[str, Any], Any]) -> None:
        """Calls `handler(sender, data)` for messages a backend sends to this connection."""
        self._runner.add("direct_message", handler)


def _keystore_file(keystore_file: Path | str | None, key_file: Path | str | None) -> Path | None:
    if keystore_file is not None:
        return Path(keystore_file)
    if key_file is None:
        return None
    key_file = Path(key_file)
    return key_file.with_name(key_file.stem + ".e2e.json")
