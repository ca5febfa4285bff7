"""Fan-out benchmark: one publisher, N subscribers, Parley against python-socketio.

    python -m bench.fanout_bench [--quick] [--workers K] [--out FILE] [--plot FILE.png]

For each system a real server runs in a child process (`parley serve`, or
`bench.socketio_server`: a python-socketio AsyncServer on aiohttp), so its CPU
time and memory, read from /proc/<pid>, are kept apart from the clients'.
Subscribers live in K >= 2 worker processes (`--worker`, started by this
module), each subscriber with its own connection (its own TCP connection: a
gRPC channel with a local subchannel pool and one Connect stream that has
joined room "bench", or an Engine.IO websocket in room "bench"). The publisher
runs in this process: the Parley SDK (`Room.trigger_batch`, 20 events per
frame, 4 frames in flight) or a python-socketio `AsyncClient` (one emit per
message, no acks).

Every payload is a 100-character string that starts with `time.time_ns()` at
publication, so a subscriber's latency is its receive time minus that (one
machine, one clock).

Scenarios (messages M per scenario; see SCENARIOS and QUICK_SCENARIOS):

- full speed, N = 1, 100, 1000: M messages as fast as the publisher can, then
  wait until every subscriber has all of them (or a timeout);
- fixed rate: N = 100 at 50 msg/s, N = 1000 at 5 msg/s, one message per tick.

Reported per scenario: deliveries received and expected, deliveries/s (received
over the time from the first publish to the last receive), latency p50/p99/max,
server CPU seconds (/proc/<pid>/stat utime+stime) and CPU microseconds per
delivery, client CPU. Then the Parley / python-socketio ratio per scenario,
the server memory per idle connection ((VmRSS after - before) / count with
2,000 idle connections), and the issue's targets, met or not. Prints one JSON
document; progress goes to stderr. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import json
import os
import resource
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol

import grpc

from bench.identity_bench import machine_facts
from bench.report import MS_PER_MICROSECOND, percentile_ms
from bench.server_process import ServerProcess, cpu_seconds, kill_group, parley_serve
from parley.client import Client
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.rooms import Room

ROOM = "bench"
EVENT = "msg"
PAYLOAD_BYTES = 100
REPO_ROOT = Path(__file__).resolve().parents[1]
STOP_TIMEOUT_SECONDS = 10.0
WORKER_READY_TIMEOUT_SECONDS = 120.0
WORKER_REPLY_TIMEOUT_SECONDS = 30.0
OPEN_TIMEOUT_SECONDS = 15.0
# Connections a worker opens at once.
OPEN_CONCURRENCY = 50
# No new delivery for this long ends a scenario early (counted as incomplete).
STALL_SECONDS = 15.0
POLL_SECONDS = 0.05
# Parley publisher: events per PublishCommand and commands in flight.
PUBLISH_BATCH = 20
PUBLISH_WINDOW = 4
WARMUP_MESSAGES = 50
TOKEN_ENV = "FANOUT_BENCH_TOKEN"
SYSTEMS = ("parley", "socketio")
SYSTEM_LABELS = {"parley": "Parley", "socketio": "python-socketio"}
PARLEY_ENV = {
    "PARLEY_GATEWAY_EVENTS_PER_WINDOW": "100000000",
    "PARLEY_GATEWAY_MAX_OUTBOUND_BYTES": "67108864",
    "PARLEY_LOGGING_LEVEL": "WARNING",
}
BENCH_TOML = f'[[rooms]]\nid = "{ROOM}"\n'
# --history: every event of the room is kept (appended to the log before fan-out, as always, but stored).
HISTORY_EVENTS_TOML = '\n  [[rooms.events]]\n  name = "*"\n  history = { enabled = true }\n'
# Process groups of every child started, killed on the way out if still alive.
_children: set[int] = set()


@dataclasses.dataclass(frozen=True)
class Scenario:
    name: str
    subscribers: int
    messages: int
    # Messages per second; 0 publishes as fast as possible.
    rate: float = 0.0
    timeout_seconds: float = 120.0

    @property
    def label(self) -> str:
        speed = "full speed" if not self.rate else f"{self.rate:g} msg/s"
        return f"N={self.subscribers}, {speed}"


SCENARIOS = (
    Scenario("full_n1", 1, 40_000),
    Scenario("full_n100", 100, 5_000),
    Scenario("rate_n100_50hz", 100, 1_000, rate=50.0),  # 20 s
    Scenario("full_n1000", 1000, 600),
    Scenario("rate_n1000_5hz", 1000, 100, rate=5.0),  # 20 s
)
QUICK_SCENARIOS = (
    Scenario("full_n1", 1, 1_000, timeout_seconds=30.0),
    Scenario("full_n100", 100, 200, timeout_seconds=30.0),
    Scenario("rate_n100_50hz", 100, 50, rate=50.0, timeout_seconds=30.0),
)
IDLE_CONNECTIONS = 2_000
QUICK_IDLE_CONNECTIONS = 200
# (scenario, required Parley/python-socketio deliveries/s ratio)
RATIO_TARGETS = (("full_n1", 2.0), ("full_n100", 5.0), ("full_n1000", 5.0))
# (scenario, largest Parley p99 in ms)
P99_TARGETS = (("rate_n100_50hz", 10.0), ("rate_n1000_5hz", 60.0))
IDLE_KIB_TARGET = 30.0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.fanout_bench",
        description="Fan-out benchmark: one publisher, N subscribers (N = 1, 100, 1000), 100-byte payloads, at full "
        "speed and at a fixed rate (N=100 at 50 msg/s, N=1000 at 5 msg/s), against a Parley server and a "
        "python-socketio server, each in a child process, with subscribers spread over worker processes. Reports "
        "deliveries/s, publish-to-receive latency p50/p99, server CPU per delivery, server memory per idle "
        "connection (2,000 connections) and the Parley/python-socketio ratios. Prints one JSON document.",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="a much smaller run for smoke testing: N up to 100, few messages, 200 idle connections (< 1 minute)",
    )
    parser.add_argument(
        "--history",
        action="store_true",
        help="Parley keeps every event in the room's history (stored, not only sequenced) while fanning out",
    )
    parser.add_argument("--workers", type=int, default=2, help="subscriber worker processes, at least 2 (default 2)")
    parser.add_argument(
        "--systems",
        default=",".join(SYSTEMS),
        help="comma-separated systems to run: parley, socketio (default both)",
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    parser.add_argument("--plot", type=Path, help="write a PNG bar chart of deliveries/s per scenario to this file")
    worker = parser.add_argument_group("worker mode (internal: started by the benchmark itself)")
    worker.add_argument("--worker", choices=SYSTEMS, help="run as a subscriber worker for this system")
    worker.add_argument("--address", help="server address, host:port")
    worker.add_argument("--count", type=int, default=0, help="subscriber connections to open")
    return parser


# Payloads: "<time_ns, 20 digits>:<tag>:<index>:" padded to 100 characters.

TAG_SLICE = slice(21, 23)


def payload(tag: str, index: int) -> str:
    head = f"{time.time_ns():020d}:{tag}:{index:07d}:"
    return head + "x" * (PAYLOAD_BYTES - len(head))


class Stats:
    """What one worker's subscribers received in the current scenario."""

    def __init__(self) -> None:
        self.tag = ""
        self.received = 0
        self.stale = 0
        self.last_ns = 0
        self.latencies_us: list[int] = []
        self.errors: collections.Counter[str] = collections.Counter()

    def reset(self, tag: str) -> None:
        self.tag = tag
        self.received = 0
        self.stale = 0
        self.last_ns = 0
        self.latencies_us = []

    def record(self, data: str, now_ns: int) -> None:
        if data[TAG_SLICE] != self.tag:
            self.stale += 1
            return
        self.received += 1
        self.last_ns = now_ns
        self.latencies_us.append((now_ns - int(data[:20])) // 1000)

    def report(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "stale": self.stale,
            "last_ns": self.last_ns,
            "latencies_us": self.latencies_us,
            "errors": dict(self.errors),
        }


# Worker processes: subscribers


class Subscriber(Protocol):
    async def close(self) -> None: ...


class ParleySubscriber:
    """A raw Connect stream on its own channel: joins the room, then counts events."""

    OPTIONS = (("grpc.use_local_subchannel_pool", 1),)

    def __init__(self, address: str, token: str, stats: Stats) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=self.OPTIONS)
        stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._call = stub.Connect(None, metadata=(("authorization", f"Bearer {token}"),))
        self._stats = stats
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> ParleySubscriber:
        first = await asyncio.wait_for(self._call.read(), OPEN_TIMEOUT_SECONDS)
        if not isinstance(first, gateway_pb2.ConnectResponse) or first.WhichOneof("frame") != "welcome":
            raise RuntimeError(f"expected a Welcome, got {first!r}")
        join = gateway_pb2.ConnectRequest(request_id="join", join=gateway_pb2.JoinCommand(room_id=ROOM))
        await self._call.write(join)
        while True:
            frame = await asyncio.wait_for(self._call.read(), OPEN_TIMEOUT_SECONDS)
            if not isinstance(frame, gateway_pb2.ConnectResponse):
                raise RuntimeError("the stream ended before the join reply")
            if frame.WhichOneof("frame") == "reply" and frame.reply.request_id == "join":
                if frame.reply.status.code:
                    raise RuntimeError(f"join failed: {frame.reply.status}")
                break
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        stats = self._stats
        call = self._call
        try:
            while isinstance(frame := await call.read(), gateway_pb2.ConnectResponse):
                if frame.HasField("events"):
                    now = time.time_ns()
                    for event in frame.events.events:
                        stats.record(event.payload.string_value, now)
                elif frame.HasField("go_away"):
                    stats.errors[f"go_away {frame.go_away.status.reason}"] += 1
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.CANCELLED:
                stats.errors[exc.code().name] += 1

    async def close(self) -> None:
        self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        await self._channel.close(None)


class SocketIOSubscriber:
    """A bare Engine.IO v4 / Socket.IO v5 websocket client (what the socket.io clients speak), lean on CPU."""

    def __init__(self, session: Any, address: str, stats: Stats) -> None:
        self._session = session
        self._url = f"ws://{address}/socket.io/?EIO=4&transport=websocket"
        self._stats = stats
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> SocketIOSubscriber:
        ws = self._ws = await self._session.ws_connect(self._url, max_msg_size=0, compress=0)
        opening = await asyncio.wait_for(ws.receive(), OPEN_TIMEOUT_SECONDS)
        if not isinstance(opening.data, str) or not opening.data.startswith("0"):
            raise RuntimeError(f"expected an Engine.IO OPEN packet, got {opening.data!r}")
        await ws.send_str("40")  # Socket.IO CONNECT to namespace "/"
        while True:
            message = await asyncio.wait_for(ws.receive(), OPEN_TIMEOUT_SECONDS)
            if not isinstance(message.data, str):
                raise RuntimeError(f"the websocket ended before the Socket.IO CONNECT reply: {message!r}")
            if message.data.startswith("40"):
                break
            if message.data.startswith("44"):
                raise RuntimeError(f"Socket.IO connect refused: {message.data}")
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        import aiohttp

        stats = self._stats
        ws = self._ws
        text = aiohttp.WSMsgType.TEXT
        try:
            async for message in ws:
                if message.type is not text:
                    continue
                data: str = message.data
                if data.startswith("42"):
                    now = time.time_ns()
                    stats.record(json.loads(data[2:])[1], now)
                elif data == "2":  # Engine.IO PING: answer or be dropped
                    await ws.send_str("3")
        except (aiohttp.ClientError, ConnectionError) as exc:
            stats.errors[type(exc).__name__] += 1

    async def close(self) -> None:
        if self._ws is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._ws.close(), 5)
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


def emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def open_all(factory: Any, count: int) -> list[Subscriber]:
    """Opens `count` subscribers, OPEN_CONCURRENCY at a time; closes them all if one fails."""
    gate = asyncio.Semaphore(OPEN_CONCURRENCY)
    opened: list[Subscriber] = []

    async def one() -> None:
        async with gate:
            subscriber = factory()
            try:
                await subscriber.open()
            except BaseException:
                await subscriber.close()
                raise
            opened.append(subscriber)

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    except BaseException:
        await asyncio.gather(*(s.close() for s in opened), return_exceptions=True)
        raise
    return opened


async def run_worker(system: str, address: str, count: int) -> int:
    stats = Stats()
    session: Any = None
    subscribers: list[Subscriber] = []
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    started = time.perf_counter()
    try:
        try:
            if system == "parley":
                token = os.environ[TOKEN_ENV]
                subscribers = await open_all(lambda: ParleySubscriber(address, token, stats), count)
            else:
                import aiohttp

                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                subscribers = await open_all(lambda: SocketIOSubscriber(session, address, stats), count)
        except Exception as exc:
            emit({"error": f"{type(exc).__name__}: {exc}"})
            return 1
        emit({"ready": True, "opened": len(subscribers), "open_seconds": round(time.perf_counter() - started, 3)})
        while line := await reader.readline():
            command = json.loads(line)
            kind = command.get("cmd")
            if kind == "reset":
                stats.reset(str(command["tag"]))
                emit({"ok": True})
            elif kind == "count":
                emit({"received": stats.received, "errors": sum(stats.errors.values())})
            elif kind == "report":
                emit(stats.report())
            elif kind == "quit":
                break
            else:
                emit({"error": f"unknown command {kind!r}"})
        return 0
    finally:
        await asyncio.gather(*(s.close() for s in subscribers), return_exceptions=True)
        if session is not None:
            await session.close()
        emit({"bye": True})


# Child processes seen from the coordinator


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def kill_child(pid: int) -> None:
    kill_group(pid)
    _children.discard(pid)


def start_server(name: str, command: list[str], env: dict[str, str], log_dir: Path) -> ServerProcess:
    """A server run from this checkout, its group killed on the way out if it is still running."""
    server = ServerProcess(command, log_dir, name=name, env=env, cwd=REPO_ROOT, stop_timeout=STOP_TIMEOUT_SECONDS)
    _children.add(server.pid)
    return server


class WorkerProcess:
    """A subscriber worker: JSON commands on its stdin, one JSON reply line each on its stdout."""

    def __init__(self, process: asyncio.subprocess.Process, stderr_path: Path) -> None:
        self.process = process
        self.stderr_path = stderr_path
        self.opened = 0

    @classmethod
    async def start(cls, system: str, address: str, count: int, index: int, token: str, log_dir: Path) -> WorkerProcess:
        stderr_path = log_dir / f"worker-{system}-{index}-{time.monotonic_ns()}.stderr"
        with stderr_path.open("w") as stderr:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.fanout_bench",
                "--worker",
                system,
                "--address",
                address,
                "--count",
                str(count),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=stderr,
                env={**os.environ, TOKEN_ENV: token},
                cwd=REPO_ROOT,
                start_new_session=True,
                limit=256 * 1024 * 1024,
            )
        _children.add(process.pid)
        return cls(process, stderr_path)

    @property
    def pid(self) -> int:
        return self.process.pid

    async def _read(self, seconds: float) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), seconds)
        if not line:
            raise RuntimeError(f"worker {self.pid} ended: {self.stderr_path.read_text()[-2000:]}")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {self.pid}: {reply['error']}")
        return reply

    async def ready(self) -> dict[str, Any]:
        reply = await self._read(WORKER_READY_TIMEOUT_SECONDS)
        self.opened = int(reply["opened"])
        return reply

    async def request(self, command: dict[str, Any], seconds: float = WORKER_REPLY_TIMEOUT_SECONDS) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write((json.dumps(command) + "\n").encode())
        await self.process.stdin.drain()
        return await self._read(seconds)

    def cpu_seconds(self) -> float:
        try:
            return cpu_seconds(self.pid)
        except OSError:
            return 0.0

    async def stop(self) -> None:
        if self.process.returncode is None:
            try:
                assert self.process.stdin is not None
                self.process.stdin.write(b'{"cmd": "quit"}\n')
                await self.process.stdin.drain()
                self.process.stdin.close()
                await asyncio.wait_for(self.process.wait(), STOP_TIMEOUT_SECONDS)
            except (TimeoutError, OSError, RuntimeError):
                pass
        kill_child(self.pid)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.process.wait(), 5)


@contextlib.asynccontextmanager
async def workers_for(
    system: System, subscribers: int, workers: int, log_dir: Path
) -> AsyncIterator[list[WorkerProcess]]:
    """min(workers, subscribers) workers sharing `subscribers` connections, all ready."""
    count = min(workers, subscribers)
    shares = [subscribers // count + (1 if i < subscribers % count else 0) for i in range(count)]
    token = await system.subscriber_token()
    started: list[WorkerProcess] = []
    try:
        for index, share in enumerate(shares):
            started.append(await WorkerProcess.start(system.name, system.address, share, index, token, log_dir))
        await asyncio.gather(*(w.ready() for w in started))
        opened = sum(w.opened for w in started)
        if opened != subscribers:
            raise RuntimeError(f"opened {opened} subscriber connections of {subscribers}")
        yield started
    finally:
        await asyncio.gather(*(w.stop() for w in started), return_exceptions=True)


# The systems under test


class System(Protocol):
    name: str
    server: ServerProcess

    @property
    def address(self) -> str: ...
    async def start(self) -> None: ...
    async def subscriber_token(self) -> str: ...
    async def publish_full(self, messages: int, tag: str) -> int: ...
    async def publish_rate(self, messages: int, rate: float, tag: str) -> int: ...
    async def close(self) -> None: ...
    def versions(self) -> dict[str, str]: ...


class ParleySystem:
    name = "parley"

    def __init__(self, tmp: Path, keep_history: bool = False) -> None:
        self._tmp = tmp
        config = tmp / "bench.toml"
        config.write_text(BENCH_TOML + (HISTORY_EVENTS_TOML if keep_history else ""))
        command = parley_serve(tmp / "data", "--config", str(config))
        self.server = start_server("parley", command, PARLEY_ENV, tmp)
        self._subscriber: Client | None = None
        self._publisher: Client | None = None
        self._room: Room | None = None

    @property
    def address(self) -> str:
        return self.server.address

    async def start(self) -> None:
        address = await asyncio.to_thread(self.server.wait_for_address)
        self._subscriber = Client(address, username="bench-sub", key_file=self._tmp / "sub.json")
        await self._subscriber.connect()
        self._publisher = Client(address, username="bench-pub", key_file=self._tmp / "pub.json")
        await self._publisher.connect()
        self._room = await self._publisher.join(ROOM)

    async def subscriber_token(self) -> str:
        assert self._subscriber is not None
        return await self._subscriber.access_token()

    async def publish_full(self, messages: int, tag: str) -> int:
        """PUBLISH_BATCH events per frame, PUBLISH_WINDOW frames in flight; returns the first publish time."""
        room = self._room
        assert room is not None
        pending: set[asyncio.Task[Any]] = set()
        first_ns = time.time_ns()
        for start in range(0, messages, PUBLISH_BATCH):
            if len(pending) >= PUBLISH_WINDOW:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    task.result()
            batch = [(EVENT, payload(tag, i), None) for i in range(start, min(messages, start + PUBLISH_BATCH))]
            pending.add(asyncio.create_task(room.trigger_batch(batch, echo=False)))
        await asyncio.gather(*pending)
        return first_ns

    async def publish_rate(self, messages: int, rate: float, tag: str) -> int:
        room = self._room
        assert room is not None
        return await tick(messages, rate, lambda i: room.trigger(EVENT, payload(tag, i), echo=False))

    async def close(self) -> None:
        for client in (self._publisher, self._subscriber):
            if client is not None:
                await client.close()

    def versions(self) -> dict[str, str]:
        return {"parley": _version("parley"), "grpcio": grpc.__version__}


class SocketIOSystem:
    name = "socketio"

    def __init__(self, tmp: Path) -> None:
        command = [sys.executable, "-m", "bench.socketio_server", "--port", "0"]
        self.server = start_server("socketio", command, {}, tmp)
        self._client: Any = None

    @property
    def address(self) -> str:
        return self.server.address

    async def start(self) -> None:
        import socketio

        address = await asyncio.to_thread(self.server.wait_for_address)
        self._client = socketio.AsyncClient(reconnection=False)
        await self._client.connect(f"http://{address}", transports=["websocket"], wait_timeout=10)

    async def subscriber_token(self) -> str:
        return ""

    async def publish_full(self, messages: int, tag: str) -> int:
        """One emit per message, no acks, as fast as the client takes them."""
        client = self._client
        first_ns = time.time_ns()
        for i in range(messages):
            await client.emit("publish", payload(tag, i))
        return first_ns

    async def publish_rate(self, messages: int, rate: float, tag: str) -> int:
        client = self._client
        return await tick(messages, rate, lambda i: client.emit("publish", payload(tag, i)))

    async def close(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._client.disconnect(), 5)

    def versions(self) -> dict[str, str]:
        return {name: _version(name) for name in ("python-socketio", "python-engineio", "aiohttp")}


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "unknown"


async def tick(messages: int, rate: float, send: Any) -> int:
    """Calls `send(i)` once per 1/rate seconds on an absolute schedule; returns the first send time."""
    loop = asyncio.get_running_loop()
    period = 1.0 / rate
    started = loop.time()
    tasks: list[asyncio.Task[Any]] = []
    first_ns = 0
    for i in range(messages):
        delay = started + i * period - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        if i == 0:
            first_ns = time.time_ns()
        tasks.append(asyncio.create_task(send(i)))
    await asyncio.gather(*tasks)
    return first_ns


# Measurements


def _tags() -> Iterator[str]:
    while True:
        yield from (f"{n:02d}" for n in range(10, 100))


TAGS = _tags()


async def wait_for_deliveries(workers: list[WorkerProcess], expected: int, seconds: float) -> tuple[int, bool]:
    """Polls the workers until they have `expected` events, `seconds` pass or deliveries stall."""
    deadline = time.monotonic() + seconds
    last_total, last_change = -1, time.monotonic()
    while True:
        counts = await asyncio.gather(*(w.request({"cmd": "count"}) for w in workers))
        total = sum(int(c["received"]) for c in counts)
        now = time.monotonic()
        if total >= expected:
            return total, True
        if total != last_total:
            last_total, last_change = total, now
        if now > deadline or now - last_change > STALL_SECONDS:
            return total, False
        await asyncio.sleep(POLL_SECONDS)


async def publish_and_wait(
    system: System, workers: list[WorkerProcess], scenario: Scenario
) -> tuple[int, int, bool, list[dict[str, Any]]]:
    tag = next(TAGS)
    await asyncio.gather(*(w.request({"cmd": "reset", "tag": tag}) for w in workers))
    if scenario.rate:
        first_ns = await system.publish_rate(scenario.messages, scenario.rate, tag)
    else:
        first_ns = await system.publish_full(scenario.messages, tag)
    expected = scenario.messages * scenario.subscribers
    received, complete = await wait_for_deliveries(workers, expected, scenario.timeout_seconds)
    reports = await asyncio.gather(*(w.request({"cmd": "report"}) for w in workers))
    return first_ns, received, complete, list(reports)


async def run_scenario(system: System, workers: list[WorkerProcess], scenario: Scenario) -> dict[str, Any]:
    # An unmeasured warm-up (full speed, few messages) so first-use costs stay out.
    warmup = dataclasses.replace(scenario, messages=WARMUP_MESSAGES, rate=0.0, timeout_seconds=30.0)
    await publish_and_wait(system, workers, warmup)
    server_cpu = system.server.cpu_seconds()
    client_cpu = sum(w.cpu_seconds() for w in workers)
    publisher_cpu = time.process_time()
    first_ns, received, complete, reports = await publish_and_wait(system, workers, scenario)
    server_cpu = system.server.cpu_seconds() - server_cpu
    client_cpu = sum(w.cpu_seconds() for w in workers) - client_cpu
    publisher_cpu = time.process_time() - publisher_cpu
    expected = scenario.messages * scenario.subscribers
    last_ns = max(int(r["last_ns"]) for r in reports)
    elapsed = (last_ns - first_ns) / 1e9 if last_ns > first_ns else None
    latencies = sorted(lat for r in reports for lat in r["latencies_us"])
    errors: collections.Counter[str] = collections.Counter()
    for report in reports:
        errors.update(report["errors"])
    return {
        "label": scenario.label,
        "subscribers": scenario.subscribers,
        "messages": scenario.messages,
        "rate_msgs_per_s": scenario.rate or None,
        "expected": expected,
        "received": received,
        "complete": complete,
        "elapsed_seconds": round(elapsed, 4) if elapsed else None,
        "deliveries_per_s": round(received / elapsed, 1) if elapsed else None,
        "latency_ms": {
            "p50": percentile_ms(latencies, 0.50, MS_PER_MICROSECOND),
            "p99": percentile_ms(latencies, 0.99, MS_PER_MICROSECOND),
            "max": percentile_ms(latencies, 1.0, MS_PER_MICROSECOND),
        },
        "server_cpu_seconds": round(server_cpu, 3),
        "server_cpu_us_per_delivery": round(server_cpu * 1e6 / received, 2) if received else None,
        # Cores' worth of CPU the server used; near 1.0 means its event loop is saturated.
        "server_cpu_utilization": round(server_cpu / elapsed, 3) if elapsed else None,
        "client_processes": len(workers),
        "client_cpu_seconds": round(client_cpu, 3),
        "coordinator_cpu_seconds": round(publisher_cpu, 3),  # the publisher and the polling
        "stale_events": sum(int(r["stale"]) for r in reports),
        "errors": dict(errors),
    }


async def idle_memory(system: System, connections: int, workers: int, log_dir: Path) -> dict[str, Any]:
    """Server VmRSS growth per idle connection (each its own connection, in the room)."""
    # Warm up the connection paths first, so lazily created state is not charged to the measurement.
    async with workers_for(system, min(connections, 20 * workers), workers, log_dir):
        pass
    await asyncio.sleep(1.5)
    before = system.server.rss_kib()
    started = time.perf_counter()
    async with workers_for(system, connections, workers, log_dir) as opened:
        open_seconds = time.perf_counter() - started
        await asyncio.sleep(2.0)
        after = system.server.rss_kib()
        processes = len(opened)
    await asyncio.sleep(2.0)  # let the server take the connections down before the scenarios
    return {
        "connections": connections,
        "client_processes": processes,
        "open_seconds": round(open_seconds, 2),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_after_close_kib": system.server.rss_kib(),
        "kib_per_connection": round((after - before) / connections, 2),
    }


def log(message: str) -> None:
    print(f"[fanout {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


async def run_system(
    system: System, scenarios: Sequence[Scenario], idle_connections: int, workers: int, log_dir: Path
) -> dict[str, Any]:
    result: dict[str, Any] = {"scenarios": {}}
    try:
        await system.start()
        result["versions"] = system.versions()
        log(f"{system.name}: server at {system.address} (pid {system.server.pid})")
        try:
            result["idle"] = await idle_memory(system, idle_connections, workers, log_dir)
            log(f"{system.name}: idle {result['idle']['kib_per_connection']} KiB per connection")
        except Exception as exc:
            result["idle"] = {"error": f"{type(exc).__name__}: {exc}"}
            log(f"{system.name}: idle memory failed: {exc}")
        by_size: dict[int, list[Scenario]] = collections.defaultdict(list)
        for scenario in scenarios:
            by_size[scenario.subscribers].append(scenario)
        for size, group in by_size.items():
            try:
                async with workers_for(system, size, workers, log_dir) as started:
                    for scenario in group:
                        outcome = await run_scenario(system, started, scenario)
                        result["scenarios"][scenario.name] = outcome
                        log(
                            f"{system.name} {scenario.name}: {outcome['received']}/{outcome['expected']} "
                            f"{outcome['deliveries_per_s']}/s p50 {outcome['latency_ms']['p50']} ms "
                            f"p99 {outcome['latency_ms']['p99']} ms, "
                            f"{outcome['server_cpu_us_per_delivery']} us server CPU/delivery"
                        )
            except Exception as exc:
                for scenario in group:
                    result["scenarios"].setdefault(scenario.name, {"error": f"{type(exc).__name__}: {exc}"})
                log(f"{system.name} N={size} failed: {exc}")
    finally:
        await system.close()
        result["server_rss_end_kib"] = _safe_rss(system.server)
        result["server_exit_code"] = system.server.terminate()
        _children.discard(system.server.pid)
    return result


def _safe_rss(server: ServerProcess) -> int | None:
    try:
        return server.rss_kib()
    except (OSError, RuntimeError):
        return None


# Comparison, targets, plot


def compare(systems: dict[str, Any], scenarios: Sequence[Scenario]) -> dict[str, Any]:
    comparison: dict[str, Any] = {}
    for scenario in scenarios:
        row: dict[str, Any] = {"label": scenario.label}
        for name in SYSTEMS:
            outcome = systems.get(name, {}).get("scenarios", {}).get(scenario.name, {})
            row[name] = {
                "deliveries_per_s": outcome.get("deliveries_per_s"),
                "p50_ms": outcome.get("latency_ms", {}).get("p50"),
                "p99_ms": outcome.get("latency_ms", {}).get("p99"),
                "server_cpu_us_per_delivery": outcome.get("server_cpu_us_per_delivery"),
                "complete": outcome.get("complete"),
            }
        ours, theirs = row["parley"]["deliveries_per_s"], row["socketio"]["deliveries_per_s"]
        row["deliveries_per_s_ratio"] = round(ours / theirs, 2) if ours and theirs else None
        cpu_ours = row["parley"]["server_cpu_us_per_delivery"]
        cpu_theirs = row["socketio"]["server_cpu_us_per_delivery"]
        row["server_cpu_per_delivery_ratio"] = round(cpu_theirs / cpu_ours, 2) if cpu_ours and cpu_theirs else None
        comparison[scenario.name] = row
    return comparison


def targets(systems: dict[str, Any], comparison: dict[str, Any]) -> list[dict[str, Any]]:
    checks: list[dict[str, Any]] = []
    for name, required in RATIO_TARGETS:
        ratio = comparison.get(name, {}).get("deliveries_per_s_ratio")
        checks.append(
            {
                "target": f"{name}: Parley deliveries/s >= {required:g}x python-socketio",
                "value": ratio,
                "met": None if ratio is None else ratio >= required,
            }
        )
    parley = systems.get("parley", {})
    for name, limit in P99_TARGETS:
        p99 = parley.get("scenarios", {}).get(name, {}).get("latency_ms", {}).get("p99")
        complete = parley.get("scenarios", {}).get(name, {}).get("complete")
        checks.append(
            {
                "target": f"{name}: Parley p99 <= {limit:g} ms (all deliveries made)",
                "value": p99,
                "met": None if p99 is None else bool(p99 <= limit and complete),
            }
        )
    kib = parley.get("idle", {}).get("kib_per_connection")
    checks.append(
        {
            "target": f"Parley server memory per idle connection <= {IDLE_KIB_TARGET:g} KiB",
            "value": kib,
            "met": None if kib is None else kib <= IDLE_KIB_TARGET,
        }
    )
    return checks


def plot(document: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    comparison: dict[str, Any] = document["comparison"]
    names = list(comparison)
    labels = [comparison[n]["label"].replace(", ", "\n") for n in names]
    positions = list(range(len(names)))
    width = 0.38
    figure, (rates, cpu) = plt.subplots(1, 2, figsize=(13, 5.2))
    for offset, system, colour in ((-width / 2, "parley", "#2b6cb0"), (width / 2, "socketio", "#dd6b20")):
        xs = [p + offset for p in positions]
        values = [comparison[n][system]["deliveries_per_s"] or 0.0 for n in names]
        rates.bar(xs, values, width, label=SYSTEM_LABELS[system], color=colour)
        per_delivery = [comparison[n][system]["server_cpu_us_per_delivery"] or 0.0 for n in names]
        cpu.bar(xs, per_delivery, width, label=SYSTEM_LABELS[system], color=colour)
    for position, name in zip(positions, names, strict=True):
        row = comparison[name]
        ratio = row["deliveries_per_s_ratio"]
        top = max(row["parley"]["deliveries_per_s"] or 0.0, row["socketio"]["deliveries_per_s"] or 0.0)
        if ratio is not None and top > 0:
            rates.annotate(f"{ratio:g}x", (position, top), textcoords="offset points", xytext=(0, 4), ha="center")
    rates.set_yscale("log")
    rates.set_ylabel("deliveries/s (log scale)")
    rates.set_title("Fan-out throughput: one publisher, N subscribers, 100-byte payloads")
    cpu.set_yscale("log")
    cpu.set_ylabel("server CPU µs per delivery (log scale)")
    cpu.set_title("Server CPU per delivery (lower is better)")
    for axes in (rates, cpu):
        axes.set_xticks(positions, labels)
        axes.legend()
        axes.grid(axis="y", which="both", alpha=0.3)
    machine = document["machine"]
    figure.suptitle(
        f"{machine.get('cpus_available')} CPUs ({machine.get('cpu_model')}), Python {machine.get('python_version')}",
        fontsize=9,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


# Entry points


async def coordinate(args: argparse.Namespace, chosen: Sequence[str], tmp: Path) -> dict[str, Any]:
    scenarios = QUICK_SCENARIOS if args.quick else SCENARIOS
    idle_connections = QUICK_IDLE_CONNECTIONS if args.quick else IDLE_CONNECTIONS
    results: dict[str, Any] = {}
    for name in chosen:
        directory = tmp / name
        directory.mkdir()
        system: System = ParleySystem(directory, args.history) if name == "parley" else SocketIOSystem(directory)
        results[name] = await run_system(system, scenarios, idle_connections, args.workers, directory)
    comparison = compare(results, scenarios)
    return {
        "benchmark": "fanout",
        "parameters": {
            "quick": args.quick,
            "parley_keeps_history": args.history,
            "worker_processes": args.workers,
            "payload_bytes": PAYLOAD_BYTES,
            "scenarios": [dataclasses.asdict(s) for s in scenarios],
            "idle_connections": idle_connections,
            "warmup_messages_per_scenario": WARMUP_MESSAGES,
            "parley_publisher": f"SDK Room.trigger_batch, {PUBLISH_BATCH} events per frame, "
            f"{PUBLISH_WINDOW} frames in flight (fixed rate: Room.trigger per tick)",
            "socketio_publisher": "socketio.AsyncClient.emit per message, websocket transport, no acks",
            "parley_subscriber": "raw Connect stream on its own grpc.aio channel (local subchannel pool), joined",
            "socketio_subscriber": "bare Engine.IO v4 / Socket.IO v5 client on an aiohttp websocket",
            "parley_server": "python -m parley.cli.main serve --port 0 --data-dir TMP --config TMP/bench.toml",
            "parley_server_env": PARLEY_ENV,
            "socketio_server": "python -m bench.socketio_server --port 0 (AsyncServer, async_mode=aiohttp)",
            "deliveries_per_s": "received / (last receive - first publish)",
            "server_cpu_source": "/proc/<pid>/stat utime+stime, delta over the scenario",
            "rss_source": "/proc/<pid>/status VmRSS",
        },
        "machine": machine_facts(),
        "systems": results,
        "comparison": comparison,
        "targets": targets(results, comparison),
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_file_limit()
    if args.worker:
        if not args.address or args.count < 1:
            print("error: --worker needs --address and --count >= 1", file=sys.stderr)
            return 2
        return asyncio.run(run_worker(args.worker, args.address, args.count))
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.workers < 2 or not chosen or any(s not in SYSTEMS for s in chosen):
        print("error: --workers must be >= 2 and --systems a list of parley, socketio", file=sys.stderr)
        return 2
    started = time.perf_counter()
    try:
        with tempfile.TemporaryDirectory(prefix="parley-fanout-") as tmp:
            document = asyncio.run(coordinate(args, chosen, Path(tmp)))
    finally:
        for pid in list(_children):
            kill_child(pid)
    document["total_seconds"] = round(time.perf_counter() - started, 1)
    text = json.dumps(document, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    if args.plot is not None:
        plot(document, args.plot)
    failed = any(
        "error" in outcome or not outcome.get("complete", False)
        for system in document["systems"].values()
        for outcome in system["scenarios"].values()
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
