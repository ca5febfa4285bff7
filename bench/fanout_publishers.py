"""The fan-out benchmark's publishers, and the loops that drive every system's publisher alike.

Each publisher is its own user on its own connection, and sends one event per
call, reading its reply before the call returns where the system gives one:

- Parley: the SDK's `Room.trigger(EVENT, payload, echo=False)`, one
  PublishCommand per event, its reply awaited;
- python-socketio: `AsyncClient.call("publish", (room, payload))`, one emit
  with an ack callback, the ack awaited;
- nats-server: nats-py's core `publish`, one per event. Core NATS has no
  reply, so the call returns once the message is buffered; the publisher
  flushes (a PING answered) when it is done. nats-server is the ceiling.
- the grpc.aio floor: a publish frame on its /floor.Floor/Connect stream
  (bench/grpc_floor_wire.py), one per event, its ack awaited.

`full_speed` and `at_rate` keep at most WINDOW calls outstanding; a call that
raises is a lost event, counted by reason. `batched` is an extra for Parley
only: BATCH_EVENTS events per PublishCommand, BATCH_FRAMES_IN_FLIGHT commands
outstanding.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol

from bench import grpc_floor_wire
from bench.fanout_subscribers import OPEN_TIMEOUT_SECONDS, GrpcFloorSubscriber, nats_subject
from bench.fanout_wire import EVENT, Stats, payload
from parley.client import Client
from parley.device_identity import DeviceIdentity
from parley.rooms import Room
from services.runtime.nats_bus import OrderedFlushClient

WINDOW = 64
BATCH_EVENTS = 20
BATCH_FRAMES_IN_FLIGHT = 4
CALL_TIMEOUT_SECONDS = 60.0


class Publisher(Protocol):
    # Whether each `send` reads the server's answer to it.
    reads_replies: bool

    async def send(self, data: str) -> None: ...
    async def flush(self) -> None: ...
    async def close(self) -> None: ...


class ParleyPublisher:
    """The Parley SDK, its own user, joined to the room it publishes to."""

    reads_replies = True

    def __init__(self, client: Client, room: Room) -> None:
        self._client = client
        self._room = room

    @classmethod
    async def open(cls, address: str, room_id: str) -> ParleyPublisher:
        client = Client(address, identity=DeviceIdentity.generate(f"pub{secrets.token_hex(5)}"))
        try:
            await client.connect()
            return cls(client, await client.join(room_id))
        except BaseException:
            await client.close()
            raise

    async def send(self, data: str) -> None:
        await self._room.trigger(EVENT, data, echo=False)

    async def send_batch(self, datas: Sequence[str]) -> None:
        await self._room.trigger_batch([(EVENT, data, None) for data in datas], echo=False)

    async def flush(self) -> None:
        return None  # every send has had its reply

    async def close(self) -> None:
        await self._client.close()


class SocketIOPublisher:
    """A python-socketio AsyncClient (websocket transport) that names its user when it connects."""

    reads_replies = True

    def __init__(self, client: Any, room: str) -> None:
        self._client = client
        self._room = room

    @classmethod
    async def open(cls, address: str, room: str, user: str) -> SocketIOPublisher:
        import socketio

        client = socketio.AsyncClient(reconnection=False)
        await client.connect(
            f"http://{address}", transports=["websocket"], auth={"user": user}, wait_timeout=OPEN_TIMEOUT_SECONDS
        )
        return cls(client, room)

    async def send(self, data: str) -> None:
        answer = await self._client.call("publish", (self._room, data), timeout=CALL_TIMEOUT_SECONDS)
        if answer is not True:
            raise RuntimeError(f"publish refused: {answer!r}")

    async def flush(self) -> None:
        return None  # every send has had its ack

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(self._client.disconnect(), 5)


class NatsPublisher:
    """nats-py core publish on its own connection: no reply per message (see the module's docstring)."""

    reads_replies = False

    def __init__(self, client: OrderedFlushClient, room: str) -> None:
        self._client = client
        self._subject = nats_subject(room)

    @classmethod
    async def open(cls, url: str, room: str, user: str) -> NatsPublisher:
        client = OrderedFlushClient()
        await client.connect(servers=[url], name=user, allow_reconnect=False, connect_timeout=int(OPEN_TIMEOUT_SECONDS))
        return cls(client, room)

    async def send(self, data: str) -> None:
        await self._client.publish(self._subject, data.encode())

    async def flush(self) -> None:
        await self._client.flush(timeout=int(CALL_TIMEOUT_SECONDS))

    async def close(self) -> None:
        with contextlib.suppress(TimeoutError, OSError):
            await asyncio.wait_for(self._client.close(), 5)


class GrpcFloorPublisher:
    """A floor stream of its own that joins no room: its events reach none but the room's members."""

    reads_replies = True

    def __init__(self, stream: GrpcFloorSubscriber, room: str) -> None:
        self._stream = stream
        self._room = room

    @classmethod
    async def open(cls, address: str, room: str) -> GrpcFloorPublisher:
        stream = GrpcFloorSubscriber(address, Stats())
        try:
            await stream.connect()
        except BaseException:
            await stream.close()
            raise
        return cls(stream, room)

    async def send(self, data: str) -> None:
        encoded = data.encode()
        await self._stream.request(
            lambda request_id: grpc_floor_wire.publish(request_id, self._room, encoded), CALL_TIMEOUT_SECONDS
        )

    async def flush(self) -> None:
        return None  # every send has had its ack

    async def close(self) -> None:
        await self._stream.close()


@dataclasses.dataclass
class PublishOutcome:
    # time.time_ns() just before the first call.
    first_ns: int
    calls: int
    # Events that were not published (their call raised), by reason.
    errors: collections.Counter[str]
    # From the first call until the last returned (and the flush).
    seconds: float
    # Fixed rate: the most a call started after its scheduled time.
    behind_schedule_ms: float = 0.0

    @property
    def lost(self) -> int:
        return sum(self.errors.values())


def reason(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"[:200]


async def _finish(publisher: Publisher, errors: collections.Counter[str]) -> None:
    try:
        await publisher.flush()
    except Exception as exc:
        errors[f"flush {reason(exc)}"] += 1


async def full_speed(publisher: Publisher, messages: int, tag: str, window: int = WINDOW) -> PublishOutcome:
    """`messages` calls as fast as replies come back, `window` outstanding."""
    indices = iter(range(messages))
    errors: collections.Counter[str] = collections.Counter()

    async def lane() -> None:
        for index in indices:  # shared by the lanes: each index is sent once
            try:
                await publisher.send(payload(tag, index))
            except Exception as exc:
                errors[reason(exc)] += 1

    started = time.perf_counter()
    first_ns = time.time_ns()
    await asyncio.gather(*(lane() for _ in range(min(window, messages))))
    await _finish(publisher, errors)
    return PublishOutcome(first_ns, messages, errors, time.perf_counter() - started)


async def at_rate(
    publisher: Publisher, messages: int, rate: float, tag: str, *, start_after: float = 0.0, window: int = WINDOW
) -> PublishOutcome:
    """One call every 1/`rate` seconds on an absolute schedule (from `start_after` seconds on), `window` outstanding."""
    loop = asyncio.get_running_loop()
    gate = asyncio.Semaphore(window)
    errors: collections.Counter[str] = collections.Counter()
    pending: set[asyncio.Task[None]] = set()
    period = 1.0 / rate
    begin = loop.time() + start_after
    behind = 0.0
    first_ns = 0

    async def one(index: int) -> None:
        try:
            await publisher.send(payload(tag, index))
        except Exception as exc:
            errors[reason(exc)] += 1
        finally:
            gate.release()

    started = time.perf_counter()
    for index in range(messages):
        due = begin + index * period
        if (delay := due - loop.time()) > 0:
            await asyncio.sleep(delay)
        await gate.acquire()
        behind = max(behind, loop.time() - due)
        if index == 0:
            started, first_ns = time.perf_counter(), time.time_ns()
        task = asyncio.create_task(one(index))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.gather(*pending)
    await _finish(publisher, errors)
    return PublishOutcome(first_ns, messages, errors, time.perf_counter() - started, round(behind * 1e3, 3))


async def batched(publisher: ParleyPublisher, messages: int, tag: str) -> PublishOutcome:
    """BATCH_EVENTS events per call, BATCH_FRAMES_IN_FLIGHT calls outstanding (Parley only)."""
    starts = iter(range(0, messages, BATCH_EVENTS))
    errors: collections.Counter[str] = collections.Counter()

    async def lane() -> None:
        for start in starts:
            datas = [payload(tag, i) for i in range(start, min(messages, start + BATCH_EVENTS))]
            try:
                await publisher.send_batch(datas)
            except Exception as exc:
                errors[reason(exc)] += len(datas)

    started = time.perf_counter()
    first_ns = time.time_ns()
    await asyncio.gather(*(lane() for _ in range(BATCH_FRAMES_IN_FLIGHT)))
    return PublishOutcome(first_ns, messages, errors, time.perf_counter() - started)


async def open_publishers(
    factories: Sequence[Callable[[], Awaitable[Publisher]]], concurrency: int = 10
) -> list[Publisher]:
    """One publisher from each factory, in order, `concurrency` opening at once; all closed if one fails."""
    gate = asyncio.Semaphore(concurrency)
    opened: list[Publisher] = []

    async def one(factory: Callable[[], Awaitable[Publisher]]) -> Publisher:
        async with gate:
            publisher = await factory()
            opened.append(publisher)
            return publisher

    try:
        return list(await asyncio.gather(*(one(f) for f in factories)))
    except BaseException:
        await asyncio.gather(*(p.close() for p in opened), return_exceptions=True)
        raise
