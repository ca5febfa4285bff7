"""Server memory per idle Connect stream: Parley all-in-one against a bare grpc.aio floor.

    python -m bench.idle_memory_bench [--connections N] [--workers K] [--systems parley,floor]
                                      [--users one|each] [--trace] [--tree DIR] [--floor-options JSON] [--out FILE]

Each system's server runs in a child process and only its memory is counted
(VmRSS from /proc/<pid>/status). Clients live in K worker processes, each
connection on its own gRPC channel (its own TCP connection):

- parley: `parley serve` all-in-one with room "bench"; every connection is a
  raw Connect stream that has read its Welcome and joined the room. By
  default all run on one user's token (the per-user stream limit is lifted
  for the run); `--users each` registers a user per connection instead (about
  10 s per 1,000, and every join is told to the room's members).
- floor: a bare grpc.aio server with one trivial bidi stream per connection
  (one frame each way, then idle): the least a grpc.aio stream costs.

For each: warm up (open and close a few connections, so lazily built state is
not charged to the measurement), read VmRSS, open N connections, wait until
VmRSS stops moving, read it again; report (after - before) / N in KiB. One
JSON document on stdout, progress on stderr. Not part of the test suite.

--trace runs the server under tracemalloc (Parley in this module's own
harness, in-process, not `parley serve`) and adds the Python allocations the
N connections left behind, by line and by the innermost frame of the
servers' own code, and the growth of glibc malloc's bytes in use (gRPC core,
SQLite, large Python objects, tracemalloc's own tables). Tracing inflates
VmRSS: use it to attribute, not to measure; a few hundred connections are
enough (snapshots of thousands take minutes).

--tree DIR runs the Parley server from another checkout (a private worktree
with a change to measure): its services and generated stubs.

--floor-options '[["grpc.option", value], ...]' gives the floor server grpc
options, to see what an option does to the cost of a stream.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import resource
import secrets
import signal
import sys
import tempfile
import time
import tracemalloc
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import grpc

from bench.fanout_subscribers import open_all
from bench.identity_bench import machine_facts
from bench.report import print_document
from bench.server_process import ServerProcess, kill_group, parley_serve
from parley.client import Client
from parley.device_identity import DeviceIdentity
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc

ROOM = "bench"
REPO_ROOT = Path(__file__).resolve().parents[1]
SYSTEMS = ("parley", "floor")
CONNECTIONS = 2_000
WARMUP_CONNECTIONS = 100
WORKERS = 2
# Each client connection on its own channel, so its own TCP connection.
CHANNEL_OPTIONS = (("grpc.use_local_subchannel_pool", 1),)
OPEN_TIMEOUT_SECONDS = 30.0
USERS = ("one", "each")
REGISTER_CONCURRENCY = 16
PARLEY_ENV = {
    "PARLEY_LOGGING_LEVEL": "WARNING",
    # Registering a user per connection, from one address; tokens that outlive the run.
    "PARLEY_AUTH_REGISTRATIONS_PER_MINUTE": "1000000",
    "PARLEY_AUTH_ACCESS_TOKEN_TTL_SECONDS": "86400",
}
# --users one: every stream on one user's token.
ONE_USER_ENV = {"PARLEY_GATEWAY_MAX_CONNECTIONS_PER_USER": "1000000"}
BENCH_TOML = f'[[rooms]]\nid = "{ROOM}"\n'
WORKER_READY_TIMEOUT_SECONDS = 300.0
STOP_TIMEOUT_SECONDS = 30.0
# VmRSS counts as settled once the last SETTLE_READINGS readings, POLL_SECONDS apart, are within SETTLE_KIB.
POLL_SECONDS = 0.5
SETTLE_READINGS = 4
SETTLE_KIB = 256
SETTLE_TIMEOUT_SECONDS = 30.0
# After the warm-up's connections close, before the "before" reading.
COOL_DOWN_SECONDS = 2.0
FLOOR_METHOD = "/bench.Floor/Connect"
TRACE_FRAMES = 8
TRACE_TOP = 25
# --trace: SIGUSR1 takes a snapshot in the traced server; the first is the baseline, the second is compared with it.
SNAPSHOT_SIGNAL = signal.SIGUSR1
SNAPSHOT_WAIT_SECONDS = 300.0
TRACE_FILE = "trace.json"
# Frames of the servers' own code: a traced allocation is charged to the innermost in `by_innermost_own_frame`.
OWN_CODE = re.compile(r"/services/|/bench/")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.idle_memory_bench",
        description="Server VmRSS growth per idle Connect stream (Parley all-in-one, each stream joined to a room) "
        "and per idle bidi stream on a bare grpc.aio server. Prints one JSON document.",
    )
    parser.add_argument("--connections", type=int, default=CONNECTIONS, help="idle connections (default %(default)s)")
    parser.add_argument("--workers", type=int, default=WORKERS, help="client processes (default %(default)s)")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="comma-separated: parley, floor (default both)")
    parser.add_argument(
        "--users",
        choices=USERS,
        default="one",
        help="Parley: all connections on one user's token (default), or each its own registered user (slower: "
        "registrations, and every join is told to the room's members)",
    )
    parser.add_argument(
        "--trace", action="store_true", help="run the servers under tracemalloc; report what the connections allocated"
    )
    parser.add_argument("--tree", type=Path, help="run the Parley server from this checkout's services/")
    parser.add_argument("--floor-options", default="[]", help="grpc server options for the floor, as JSON pairs")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    internal = parser.add_argument_group("internal modes (started by the benchmark itself)")
    internal.add_argument("--worker", choices=SYSTEMS, help="run as a client worker for this system")
    internal.add_argument("--address", help="server address, host:port")
    internal.add_argument("--count", type=int, default=0, help="connections a worker opens")
    internal.add_argument("--tokens", type=Path, help="access tokens, one a line (Parley workers)")
    internal.add_argument("--first", type=int, default=0, help="the worker's first connection's token line")
    internal.add_argument("--floor-server", action="store_true", help="run the bare grpc.aio floor server")
    internal.add_argument(
        "--traced-server", type=Path, metavar="DIR", help="run Parley (or the floor) under tracemalloc in DIR"
    )
    return parser


def log(message: str) -> None:
    print(f"[idle {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


# The floor: a bare grpc.aio server, one trivial bidi stream per connection


async def floor_connect(
    requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[bytes, bytes]
) -> AsyncIterator[bytes]:
    """One frame out, then one reply per frame in: a stream's least work, with nothing kept beside it."""
    yield b"welcome"
    async for request in requests:
        yield request


async def run_floor_server(options: list[tuple[str, Any]], trace: Path | None) -> int:
    if trace is not None:
        trace_on_signal(trace)
    server = grpc.aio.server(options=options)
    handler = grpc.stream_stream_rpc_method_handler(floor_connect)
    service, method = FLOOR_METHOD.rsplit("/", 1)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.lstrip("/"), {method: handler}),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    print(f"floor listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    return 0


class IdleStream(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...


class FloorStream:
    """A bidi stream on its own channel: reads the server's first frame, sends one and reads its echo."""

    def __init__(self, address: str) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        self._call = self._channel.stream_stream(FLOOR_METHOD, None, None)(None)
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        await asyncio.wait_for(self._call.read(), OPEN_TIMEOUT_SECONDS)
        await self._call.write(b"join")
        await asyncio.wait_for(self._call.read(), OPEN_TIMEOUT_SECONDS)
        self._reader = asyncio.create_task(drain(self._call))

    async def close(self) -> None:
        await close_call(self._call, self._reader, self._channel)


class ParleyStream:
    """A raw Connect stream on its own channel that has read its Welcome and joined ROOM."""

    def __init__(self, address: str, token: str) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        stub = gateway_pb2_grpc.GatewayServiceStub(self._channel)
        self._call = stub.Connect(None, metadata=(("authorization", f"Bearer {token}"),))
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> None:
        welcome = await asyncio.wait_for(self._call.read(), OPEN_TIMEOUT_SECONDS)
        if not isinstance(welcome, gateway_pb2.ConnectResponse) or welcome.WhichOneof("frame") != "welcome":
            raise RuntimeError(f"expected a Welcome, got {welcome!r}")
        await self._call.write(
            gateway_pb2.ConnectRequest(request_id="join", join=gateway_pb2.JoinCommand(room_id=ROOM))
        )
        while True:
            frame = await asyncio.wait_for(self._call.read(), OPEN_TIMEOUT_SECONDS)
            if not isinstance(frame, gateway_pb2.ConnectResponse):
                raise RuntimeError("the stream ended before the join reply")
            if frame.WhichOneof("frame") == "reply" and frame.reply.request_id == "join":
                if frame.reply.status.code:
                    raise RuntimeError(f"join failed: {frame.reply.status}")
                break
        self._reader = asyncio.create_task(drain(self._call))

    async def close(self) -> None:
        await close_call(self._call, self._reader, self._channel)


async def drain(call: Any) -> None:
    """Reads (and drops) whatever the server sends until the stream ends."""
    with contextlib.suppress(grpc.aio.AioRpcError):
        async for _ in call:
            pass


async def close_call(call: Any, reader: asyncio.Task[None] | None, channel: grpc.aio.Channel) -> None:
    call.cancel()
    if reader is not None:
        await asyncio.gather(reader, return_exceptions=True)
    await channel.close(None)


# Client workers


def emit(document: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(document) + "\n")
    sys.stdout.flush()


async def run_worker(system: str, address: str, count: int, tokens: list[str], first: int) -> int:
    """Opens `count` connections (Parley's with tokens[first:], round), says so on stdout, holds them until
    stdin closes."""
    started = time.perf_counter()
    opened: Sequence[IdleStream]
    try:
        if system == "parley":
            mine = iter([tokens[(first + i) % len(tokens)] for i in range(count)])
            opened = await open_all(lambda: ParleyStream(address, next(mine)), count)
        else:
            opened = await open_all(lambda: FloorStream(address), count)
    except Exception as exc:
        emit({"error": f"{type(exc).__name__}: {exc}"})
        return 1
    emit({"opened": len(opened), "open_seconds": round(time.perf_counter() - started, 2)})
    await asyncio.to_thread(sys.stdin.read)
    await asyncio.gather(*(s.close() for s in opened), return_exceptions=True)
    return 0


class Workers:
    """K worker processes holding `count` connections between them, until `close`."""

    def __init__(self) -> None:
        self._processes: list[asyncio.subprocess.Process] = []

    async def open(
        self, system: str, address: str, count: int, workers: int, tokens: Path | None, log_dir: Path
    ) -> None:
        workers = min(workers, count)
        shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
        for index, share in enumerate(shares):
            parley = ["--tokens", str(tokens), "--first", str(sum(shares[:index]))] if tokens is not None else []
            stderr = (log_dir / f"worker-{system}-{index}-{time.monotonic_ns()}.stderr").open("w")
            with stderr:
                process = await asyncio.create_subprocess_exec(
                    sys.executable,
                    "-m",
                    "bench.idle_memory_bench",
                    "--worker",
                    system,
                    "--address",
                    address,
                    "--count",
                    str(share),
                    *parley,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=stderr,
                    cwd=REPO_ROOT,
                    start_new_session=True,
                )
            self._processes.append(process)
        replies = await asyncio.gather(*(self._ready(p) for p in self._processes))
        opened = sum(int(reply["opened"]) for reply in replies)
        if opened != count:
            raise RuntimeError(f"opened {opened} connections of {count}")

    @staticmethod
    async def _ready(process: asyncio.subprocess.Process) -> dict[str, Any]:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), WORKER_READY_TIMEOUT_SECONDS)
        if not line:
            raise RuntimeError(f"worker {process.pid} ended before it was ready")
        reply: dict[str, Any] = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"worker {process.pid}: {reply['error']}")
        return reply

    async def close(self) -> None:
        for process in self._processes:
            if process.stdin is not None and process.returncode is None:
                with contextlib.suppress(OSError):
                    process.stdin.close()
        for process in self._processes:
            try:
                await asyncio.wait_for(process.wait(), STOP_TIMEOUT_SECONDS)
            except TimeoutError:
                kill_group(process.pid)
                await process.wait()
        self._processes.clear()


@contextlib.asynccontextmanager
async def connections(
    system: str, address: str, count: int, workers: int, tokens: Path | None, log_dir: Path
) -> AsyncIterator[None]:
    opened = Workers()
    try:
        await opened.open(system, address, count, workers, tokens, log_dir)
        yield
    finally:
        await opened.close()


# The traced Parley server: the all-in-one in this process, under tracemalloc


def trace_on_signal(directory: Path) -> None:
    """Starts tracemalloc; SNAPSHOT_SIGNAL then takes a snapshot, and every second one writes the
    growth since the one before to `directory`/TRACE_FILE."""
    tracemalloc.start(TRACE_FRAMES)
    snapshots: list[tuple[tracemalloc.Snapshot, int]] = []

    def snapshot() -> None:
        snapshots.append((tracemalloc.take_snapshot(), malloc_in_use()))
        if len(snapshots) == 2:
            (before, malloc_before), (after, malloc_after) = snapshots
            report = {"malloc_growth_bytes": malloc_after - malloc_before, **trace_report(before, after)}
            (directory / TRACE_FILE).write_text(json.dumps(report))
            snapshots.clear()

    asyncio.get_running_loop().add_signal_handler(SNAPSHOT_SIGNAL, snapshot)


async def run_traced_parley(directory: Path) -> int:
    """`parley serve` as in `services.launcher.serve`, in this process, under tracemalloc."""
    from services.allinone import create_server
    from services.runtime.config import load_config
    from services.runtime.logs import setup_logging

    overrides = {"server.host": "127.0.0.1", "server.port": 0, "server.data_dir": directory / "data"}
    config = load_config(directory / "bench.toml", os.environ, overrides)
    setup_logging(config.logging)
    trace_on_signal(directory)
    server, port = await create_server(config)
    print(f"traced Parley listening on 127.0.0.1:{port}", flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    await server.stop(1)
    return 0


class _Mallinfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks")
    ]


def malloc_in_use() -> int:
    """Bytes glibc's malloc has handed out and not had back, all arenas (gRPC core's, SQLite's, large Python objects;
    not pymalloc's arenas, which are mapped directly)."""
    libc = ctypes.CDLL(None)
    libc.mallinfo2.restype = _Mallinfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def trace_report(before: tracemalloc.Snapshot, after: tracemalloc.Snapshot) -> dict[str, Any]:
    """Growth between two snapshots: in all, by allocating line, and by the first frame in Parley's code."""
    noise = [
        tracemalloc.Filter(False, tracemalloc.__file__),
        tracemalloc.Filter(False, "<frozen importlib._bootstrap>"),
    ]
    before, after = before.filter_traces(noise), after.filter_traces(noise)
    by_line = after.compare_to(before, "lineno")
    by_origin: dict[str, list[int]] = {}
    for stat in after.compare_to(before, "traceback"):
        origin = next(
            (str(f) for f in reversed(stat.traceback) if OWN_CODE.search(f.filename)), str(stat.traceback[-1])
        )
        entry = by_origin.setdefault(origin, [0, 0])
        entry[0] += stat.size_diff
        entry[1] += stat.count_diff
    return {
        "traced_growth_bytes": sum(s.size_diff for s in by_line),
        "by_line": [
            {"where": str(s.traceback[0]), "bytes": s.size_diff, "blocks": s.count_diff} for s in by_line[:TRACE_TOP]
        ],
        "by_innermost_own_frame": [
            {"where": where, "bytes": size, "blocks": count}
            for where, (size, count) in sorted(by_origin.items(), key=lambda item: -item[1][0])[:TRACE_TOP]
        ],
    }


# Measuring


def read_trace(path: Path) -> dict[str, Any]:
    """The traced server's report, once it has written it."""
    deadline = time.monotonic() + SNAPSHOT_WAIT_SECONDS
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"the traced server wrote no {path} within {SNAPSHOT_WAIT_SECONDS}s")
        time.sleep(POLL_SECONDS)
    report: dict[str, Any] = json.loads(path.read_text())
    return report


async def settled_rss(server: ServerProcess) -> int:
    """VmRSS once it stops moving (or after SETTLE_TIMEOUT_SECONDS)."""
    readings = [server.rss_kib()]
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(POLL_SECONDS)
        readings.append(server.rss_kib())
        recent = readings[-SETTLE_READINGS:]
        if len(recent) == SETTLE_READINGS and max(recent) - min(recent) <= SETTLE_KIB:
            break
    return readings[-1]


async def measure(
    server: ServerProcess,
    system: str,
    count: int,
    workers: int,
    tokens: Path | None,
    log_dir: Path,
    trace: Path | None,
) -> dict[str, Any]:
    """VmRSS growth per connection; with `trace` (a traced server's report file), its tracemalloc growth too."""
    async with connections(system, server.address, min(count, WARMUP_CONNECTIONS), workers, tokens, log_dir):
        pass
    await asyncio.sleep(COOL_DOWN_SECONDS)
    before = await settled_rss(server)
    if trace is not None:
        os.kill(server.pid, SNAPSHOT_SIGNAL)
    report: dict[str, Any] = {}
    started = time.perf_counter()
    async with connections(system, server.address, count, workers, tokens, log_dir):
        open_seconds = time.perf_counter() - started
        after = await settled_rss(server)
        if trace is not None:
            os.kill(server.pid, SNAPSHOT_SIGNAL)
            report = await asyncio.to_thread(read_trace, trace)
    await asyncio.sleep(COOL_DOWN_SECONDS)
    result: dict[str, Any] = {
        "connections": count,
        "open_seconds": round(open_seconds, 1),
        "rss_before_kib": before,
        "rss_after_kib": after,
        "rss_after_close_kib": server.rss_kib(),
        "kib_per_connection": round((after - before) / count, 2),
    }
    if trace is not None:
        traced_kib = report["traced_growth_bytes"] / 1024
        result["traced_python_kib_per_connection"] = round(traced_kib / count, 2)
        result["malloc_kib_per_connection"] = round(report["malloc_growth_bytes"] / 1024 / count, 2)
        result["untraced_kib_per_connection"] = round((after - before - traced_kib) / count, 2)
        result["trace"] = report
    return result


async def register(address: str) -> str:
    """A new user registered and logged in: its access token."""
    async with Client(address, identity=DeviceIdentity.generate(f"idle{secrets.token_hex(5)}")) as client:
        return await client.access_token()


async def parley_tokens(address: str, count: int, users: str, directory: Path) -> Path:
    """A file of `count` access tokens, one a line: each a user of its own, or `count` times the same."""
    gate = asyncio.Semaphore(REGISTER_CONCURRENCY)

    async def one() -> str:
        async with gate:
            return await register(address)

    started = time.perf_counter()
    tokens = await asyncio.gather(*(one() for _ in range(count if users == "each" else 1)))
    log(f"parley: {len(tokens)} users registered in {time.perf_counter() - started:.1f}s")
    path = directory / "tokens.txt"
    await asyncio.to_thread(path.write_text, "\n".join(tokens) + "\n")
    return path


def parley_server(directory: Path, trace: bool, tree: Path | None, users: str) -> ServerProcess:
    (directory / "bench.toml").write_text(BENCH_TOML)
    if trace:
        # This file by path: another tree's bench/ need not have it.
        command = [sys.executable, str(Path(__file__).resolve()), "--traced-server", str(directory)]
    else:
        command = parley_serve(directory / "data", "--config", str(directory / "bench.toml"))
    root = (tree or REPO_ROOT).resolve()
    # Its services and its generated stubs (they change together), and bench/ for the traced harness.
    env = {
        **PARLEY_ENV,
        **(ONE_USER_ENV if users == "one" else {}),
        "PYTHONPATH": os.pathsep.join([str(root), str(root / "clients" / "python")]),
    }
    return ServerProcess(command, directory, name="parley", env=env, cwd=root)


async def measure_parley(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    server = parley_server(directory, args.trace, args.tree, args.users)
    try:
        address = await asyncio.to_thread(server.wait_for_address)
        tokens = await parley_tokens(address, args.connections, args.users, directory)
        trace = directory / TRACE_FILE if args.trace else None
        return await measure(server, "parley", args.connections, args.workers, tokens, directory, trace)
    finally:
        server.terminate()


async def measure_floor(args: argparse.Namespace, directory: Path) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.idle_memory_bench", "--floor-server", "--floor-options", args.floor_options]
    if args.trace:
        command += ["--traced-server", str(directory)]
    server = ServerProcess(command, directory, name="floor", cwd=REPO_ROOT)
    try:
        await asyncio.to_thread(server.wait_for_address)
        trace = directory / TRACE_FILE if args.trace else None
        result = await measure(server, "floor", args.connections, args.workers, None, directory, trace)
        result["server_options"] = json.loads(args.floor_options)
        return result
    finally:
        server.terminate()


async def coordinate(args: argparse.Namespace, chosen: Sequence[str], tmp: Path) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in chosen:
        directory = tmp / name
        directory.mkdir()
        log(f"{name}: {args.connections} connections from {args.workers} workers")
        results[name] = await (measure_parley(args, directory) if name == "parley" else measure_floor(args, directory))
        log(f"{name}: {results[name]['kib_per_connection']} KiB per connection")
    return {
        "benchmark": "idle_memory",
        "parameters": {
            "connections": args.connections,
            "client_processes": args.workers,
            "warmup_connections": WARMUP_CONNECTIONS,
            "parley_server": "python -m parley.cli.main serve --port 0 --data-dir TMP --config TMP/bench.toml"
            if not args.trace
            else "python -m bench.idle_memory_bench --traced-server TMP (all-in-one under tracemalloc)",
            "parley_server_env": {**PARLEY_ENV, **(ONE_USER_ENV if args.users == "one" else {})},
            "parley_tree": str(args.tree or REPO_ROOT),
            "parley_connection": "own channel, Connect stream, Welcome read, joined room 'bench'",
            "parley_users": "a registered user per connection" if args.users == "each" else "one user's token",
            "floor_server": "grpc.aio.server, one stream_stream handler: yields one frame, then echoes",
            "rss_source": "/proc/<pid>/status VmRSS, read once it stops moving",
        },
        "machine": machine_facts(),
        "systems": results,
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    raise_file_limit()
    if args.worker:
        tokens = args.tokens.read_text().split() if args.tokens is not None else []
        return asyncio.run(run_worker(args.worker, args.address, args.count, tokens, args.first))
    if args.floor_server:
        return asyncio.run(run_floor_server([tuple(p) for p in json.loads(args.floor_options)], args.traced_server))
    if args.traced_server:
        return asyncio.run(run_traced_parley(args.traced_server))
    chosen = [s.strip() for s in args.systems.split(",") if s.strip()]
    if args.connections < 1 or args.workers < 1 or not chosen or any(s not in SYSTEMS for s in chosen):
        print("error: --connections and --workers must be >= 1, --systems a list of parley, floor", file=sys.stderr)
        return 2
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="parley-idle-") as tmp:
        document = asyncio.run(coordinate(args, chosen, Path(tmp)))
    document["total_seconds"] = round(time.perf_counter() - started, 1)
    print_document(document, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
