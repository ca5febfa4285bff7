"""The fan-out benchmark's subscribers: one connection each, one per system, all behaving alike.

Each opens its own TCP connection as its own user (`connect`), then joins a
room when told (`join`, returning once the server has answered), then counts
what arrives: every frame by kind (`frames`, e.g. Parley's presence frames
during a join storm) and every event in the process's `Stats`.

- Parley: a raw Connect stream on its own grpc.aio channel (a local
  subchannel pool, so its own TCP connection) with the user's access token;
  joining is a JoinCommand, ready at its reply.
- python-socketio: a bare Engine.IO v4 / Socket.IO v5 websocket client (what
  the socket.io clients speak, lean on CPU) that names its user in the
  Socket.IO CONNECT; joining is a "join" event with an ack, ready at the ack.
- nats-server: a nats-py client on its own connection, named for its user;
  joining is a SUB, ready when a PING sent after it is answered.
- the grpc.aio floor: a /floor.Floor/Connect stream of raw frames
  (bench/grpc_floor_wire.py) on its own grpc.aio channel (a local subchannel
  pool, as Parley's); joining is a join frame, ready at its ack. It has no
  users: the spec's user is not sent.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import json
import resource
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

import grpc
from nats.aio.msg import Msg

from bench import grpc_floor_wire
from bench.fanout_wire import ROOM, Stats
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from services.runtime.nats_bus import OrderedFlushClient
from services.runtime.session_ids import gateway_of

OPEN_TIMEOUT_SECONDS = 15.0
# A join in a storm of a thousand waits behind the others.
JOIN_TIMEOUT_SECONDS = 120.0
# Connections a process opens at once.
OPEN_CONCURRENCY = 50
NATS_SUBJECT_PREFIX = "fanout"
# A subscription holds this much waiting for its callback before nats-py drops (as NatsBus allows).
NATS_PENDING_MESSAGES = 1_000_000
NATS_PENDING_BYTES = 512 * 1024 * 1024


def raise_file_limit() -> None:
    """Thousands of connections in one process: the open-files limit as high as it may go."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def nats_subject(room: str) -> str:
    return f"{NATS_SUBJECT_PREFIX}.{room}"


class Subscriber(Protocol):
    # Frames received since the last reset, by kind.
    frames: collections.Counter[str]
    # The server process it reached, where the system says ("" elsewhere).
    server_id: str

    async def connect(self) -> None: ...
    async def join(self, room: str) -> None: ...
    async def close(self) -> None: ...


class _StreamOnItsOwnChannel:
    """A subscriber whose one bidi stream (`_call`, read by `_reader`) has a channel (`_channel`) of its own."""

    _call: grpc.aio.Call | None
    _reader: asyncio.Task[None] | None
    _channel: grpc.aio.Channel | None

    async def close(self) -> None:
        if self._call is not None:
            self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        if self._channel is not None:
            await self._channel.close(None)


class ParleySubscriber(_StreamOnItsOwnChannel):
    """A raw Connect stream on its own channel, on one user's access token."""

    OPTIONS = (("grpc.use_local_subchannel_pool", 1),)

    def __init__(self, address: str, token: str, stats: Stats) -> None:
        self._address = address
        self._token = token
        self._stats = stats
        self.frames: collections.Counter[str] = collections.Counter()
        self.server_id = ""
        self._replies: dict[str, asyncio.Future[gateway_pb2.Reply]] = {}
        self._commands = 0
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall[gateway_pb2.ConnectRequest, gateway_pb2.ConnectResponse] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> ParleySubscriber:
        """Connected and joined to room "bench"."""
        await self.connect()
        await self.join(ROOM)
        return self

    async def connect(self) -> None:
        # Made here, not before: a channel starts connecting as soon as it has a call.
        self._channel = grpc.aio.insecure_channel(self._address, options=self.OPTIONS)
        stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._call = stub.Connect(None, metadata=(("authorization", f"Bearer {self._token}"),))
        first = await asyncio.wait_for(self._call.read(), OPEN_TIMEOUT_SECONDS)
        if not isinstance(first, gateway_pb2.ConnectResponse) or first.WhichOneof("frame") != "welcome":
            raise RuntimeError(f"expected a Welcome, got {first!r}")
        self.server_id = f"gateway {gateway_of(first.welcome.session_id)}"
        self._reader = asyncio.create_task(self._read(self._call))

    async def join(self, room: str) -> None:
        reply = await self._command(gateway_pb2.ConnectRequest(join=gateway_pb2.JoinCommand(room_id=room)))
        if reply.status.code:
            raise RuntimeError(f"join {room} failed: {reply.status.reason} {reply.status.message}")

    async def _command(self, request: gateway_pb2.ConnectRequest) -> gateway_pb2.Reply:
        assert self._call is not None, "connect() first"
        self._commands += 1
        request.request_id = f"c{self._commands}"
        answered = self._replies[request.request_id] = asyncio.get_running_loop().create_future()
        try:
            await self._call.write(request)
            return await asyncio.wait_for(answered, JOIN_TIMEOUT_SECONDS)
        finally:
            self._replies.pop(request.request_id, None)

    async def _read(
        self, call: grpc.aio.StreamStreamCall[gateway_pb2.ConnectRequest, gateway_pb2.ConnectResponse]
    ) -> None:
        stats, frames = self._stats, self.frames
        try:
            while isinstance(frame := await call.read(), gateway_pb2.ConnectResponse):
                kind = frame.WhichOneof("frame") or ""
                frames[kind] += 1
                if kind == "events":
                    now = time.time_ns()
                    for event in frame.events.events:
                        stats.record(event.payload.string_value, now)
                elif kind == "reply":
                    answered = self._replies.get(frame.reply.request_id)
                    if answered is not None and not answered.done():
                        answered.set_result(frame.reply)
                elif kind == "go_away":
                    stats.errors[f"go_away {frame.go_away.status.reason}"] += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                stats.errors[exc.code().name] += 1
        finally:
            for answered in self._replies.values():
                if not answered.done():
                    answered.set_exception(ConnectionError("the Connect stream ended before the reply"))


class SocketIOSubscriber:
    """A bare Engine.IO v4 / Socket.IO v5 websocket client, its user named in the CONNECT packet."""

    def __init__(self, session: Any, address: str, user: str, stats: Stats) -> None:
        self._session = session
        self._url = f"ws://{address}/socket.io/?EIO=4&transport=websocket"
        self._user = user
        self._stats = stats
        self.frames: collections.Counter[str] = collections.Counter()
        self.server_id = ""
        self._acks: dict[str, asyncio.Future[Any]] = {}
        self._ack_ids = 0
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        ws = self._ws = await self._session.ws_connect(self._url, max_msg_size=0, compress=0)
        opening = await asyncio.wait_for(ws.receive(), OPEN_TIMEOUT_SECONDS)
        if not isinstance(opening.data, str) or not opening.data.startswith("0"):
            raise RuntimeError(f"expected an Engine.IO OPEN packet, got {opening.data!r}")
        await ws.send_str("40" + json.dumps({"user": self._user}))  # Socket.IO CONNECT to namespace "/"
        while True:
            message = await asyncio.wait_for(ws.receive(), OPEN_TIMEOUT_SECONDS)
            if not isinstance(message.data, str):
                raise RuntimeError(f"the websocket ended before the Socket.IO CONNECT reply: {message!r}")
            if message.data.startswith("40"):
                break
            if message.data.startswith("44"):
                raise RuntimeError(f"Socket.IO connect refused: {message.data}")
        self._reader = asyncio.create_task(self._read())

    async def join(self, room: str) -> None:
        self._ack_ids += 1
        ack_id = str(self._ack_ids)
        answered = self._acks[ack_id] = asyncio.get_running_loop().create_future()
        try:
            await self._ws.send_str(f"42{ack_id}" + json.dumps(["join", room]))
            reply = await asyncio.wait_for(answered, JOIN_TIMEOUT_SECONDS)
        finally:
            self._acks.pop(ack_id, None)
        if reply != [True]:
            raise RuntimeError(f"join {room} refused: {reply!r}")

    async def _read(self) -> None:
        import aiohttp

        stats, frames, ws = self._stats, self.frames, self._ws
        text = aiohttp.WSMsgType.TEXT
        try:
            async for message in ws:
                if message.type is not text:
                    continue
                data: str = message.data
                if data.startswith("42"):
                    frames["event"] += 1
                    now = time.time_ns()
                    stats.record(json.loads(data[2:])[1], now)
                elif data.startswith("43"):
                    frames["ack"] += 1
                    bracket = data.index("[")
                    answered = self._acks.get(data[2:bracket])
                    if answered is not None and not answered.done():
                        answered.set_result(json.loads(data[bracket:]))
                elif data == "2":  # Engine.IO PING: answer or be dropped
                    frames["ping"] += 1
                    await ws.send_str("3")
                else:
                    frames["other"] += 1
        except (aiohttp.ClientError, ConnectionError) as exc:
            stats.errors[type(exc).__name__] += 1
        finally:
            for answered in self._acks.values():
                if not answered.done():
                    answered.set_exception(ConnectionError("the websocket ended before the ack"))

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


class GrpcFloorSubscriber(_StreamOnItsOwnChannel):
    """A /floor.Floor/Connect stream on its own channel; `request` writes a frame and waits for its ack."""

    OPTIONS = (("grpc.use_local_subchannel_pool", 1),)

    def __init__(self, address: str, stats: Stats) -> None:
        self._address = address
        self._stats = stats
        self.frames: collections.Counter[str] = collections.Counter()
        self.server_id = ""
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._request_ids = itertools.count(1)
        # One write at a time on the stream: a publisher has many requests outstanding.
        self._writing = asyncio.Lock()
        self._channel: grpc.aio.Channel | None = None
        self._call: grpc.aio.StreamStreamCall[bytes, bytes] | None = None
        self._reader: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        self._channel = grpc.aio.insecure_channel(self._address, options=self.OPTIONS)
        await asyncio.wait_for(self._channel.channel_ready(), OPEN_TIMEOUT_SECONDS)
        # No (de)serializers: the messages are the frames' bytes as they are.
        connect = self._channel.stream_stream(grpc_floor_wire.METHOD, None, None)
        self._call = connect(None)
        self._reader = asyncio.create_task(self._read(self._call))

    async def join(self, room: str) -> None:
        await self.request(lambda request_id: grpc_floor_wire.join(request_id, room), JOIN_TIMEOUT_SECONDS)

    async def request(self, frame_of: Callable[[int], bytes], within_seconds: float) -> None:
        """Writes the frame `frame_of` makes for a new request id and returns at its ack."""
        assert self._call is not None, "connect() first"
        request_id = next(self._request_ids)
        answered = self._acks[request_id] = asyncio.get_running_loop().create_future()
        try:
            async with self._writing:
                await self._call.write(frame_of(request_id))
            await asyncio.wait_for(answered, within_seconds)
        finally:
            self._acks.pop(request_id, None)

    async def _read(self, call: grpc.aio.StreamStreamCall[bytes, bytes]) -> None:
        stats, frames = self._stats, self.frames
        event, ack = grpc_floor_wire.EVENT[0], grpc_floor_wire.ACK[0]
        try:
            while isinstance(frame := await call.read(), bytes):
                if frame[0] == event:
                    frames["event"] += 1
                    stats.record(frame[1:].decode(), time.time_ns())
                elif frame[0] != ack:
                    frames["other"] += 1
                else:
                    frames["ack"] += 1
                    answered = self._acks.get(grpc_floor_wire.acked_request_id(frame))
                    if answered is not None and not answered.done():
                        answered.set_result(None)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                stats.errors[exc.code().name] += 1
        finally:
            for answered in self._acks.values():
                if not answered.done():
                    answered.set_exception(ConnectionError("the Connect stream ended before the ack"))


class NatsSubscriber:
    """A nats-py client on its own connection, named for its user.

    nats-py 2.16 writes a flush's PING ahead of a SUB still buffered, so its
    PONG could come back before the server has the subscription; Parley's bus
    client sends the PING after it, and so does this one.
    """

    def __init__(self, url: str, user: str, stats: Stats) -> None:
        self._url = url
        self._user = user
        self._stats = stats
        self.frames: collections.Counter[str] = collections.Counter()
        self.server_id = ""
        self._client = OrderedFlushClient()

    async def connect(self) -> None:
        await self._client.connect(
            servers=[self._url],
            name=self._user,
            allow_reconnect=False,
            connect_timeout=int(OPEN_TIMEOUT_SECONDS),
            error_cb=self._on_error,
        )

    async def join(self, room: str) -> None:
        await self._client.subscribe(
            nats_subject(room),
            cb=self._deliver,
            pending_msgs_limit=NATS_PENDING_MESSAGES,
            pending_bytes_limit=NATS_PENDING_BYTES,
        )
        await self._client.flush(timeout=int(JOIN_TIMEOUT_SECONDS))

    async def _deliver(self, message: Msg) -> None:
        self.frames["message"] += 1
        self._stats.record(message.data.decode(), time.time_ns())

    async def _on_error(self, error: Exception) -> None:
        self._stats.errors[f"nats {type(error).__name__}"] += 1

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._client.close(), 5)


async def connect_all(subscribers: Sequence[Subscriber], concurrency: int = OPEN_CONCURRENCY) -> None:
    """Connects every subscriber, `concurrency` at a time; closes them all if one fails."""
    gate = asyncio.Semaphore(concurrency)

    async def one(subscriber: Subscriber) -> None:
        async with gate:
            await subscriber.connect()

    try:
        await asyncio.gather(*(one(s) for s in subscribers))
    except BaseException:
        await asyncio.gather(*(s.close() for s in subscribers), return_exceptions=True)
        raise


class Openable(Protocol):
    async def open(self) -> Any: ...

    async def close(self) -> None: ...


Opened = TypeVar("Opened", bound=Openable)


async def open_all(factory: Callable[[], Opened], count: int) -> list[Opened]:
    """Opens `count` connections made by `factory`, OPEN_CONCURRENCY at a time; closes them all if one fails."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    opened: list[Opened] = []

    async def one() -> None:
        async with gate:
            connection = factory()
            try:
                await connection.open()
            except BaseException:
                await connection.close()
                raise
            opened.append(connection)

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except BaseException:
        await asyncio.gather(*(c.close() for c in opened), return_exceptions=True)
        raise
    return opened
