"""Hardening benchmark (issue 8): what the subject index, the schema caps and the request checks cost or save.

    python bench/hardening_bench.py [--seconds N] [--wildcards 0,1000,2000,10000] [--out FILE]
    python -m bench.hardening_bench [...]    # the same, for this checkout

Run it as a script, with PYTHONPATH naming the tree under test, to compare two
trees with the same file (see docs/benchmarks.md); from `bench/` it imports only
its neighbours `server_process.py` and `report.py` (standard library only),
and the server it starts runs from the same tree. The JSON says
which tree ran (its commit and where `services` and `parley` were imported
from) and whether it has the hardening.

Scenarios, each measured the same way on either tree:

- subjects (in process, no gRPC): one user holds W wildcard subscriptions
  `w<i>.*` through `SubjectRouter` on an `InProcessBus`, spread over
  connections of at most `MAX_SUBJECTS_PER_CONNECTION` each; another user
  publishes to `presence:lobby`, which none of them matches, for N seconds.
  Publishes/s, wall and CPU µs per publish, per W (W = 0 is the baseline).
  The hardened tree's per-user cap is raised to W here (it is configurable);
  how many the tree's default caps accept is reported apart.
- schemas (real all-in-one server in a child process): one `CreateRoom` with
  the largest schemas the tree allows (before: 100 events of 16 KiB each;
  after: as many 16 KiB schemas as `room_service.max_schema_bytes_per_room`
  holds), while another connection sends a `PingCommand` every 10 ms on its
  Connect stream and a third connection watches for the `RoomChanged` frame.
  Ping round trips (an idle baseline of N seconds, and those sent from the
  start of the create until it returned and the notice arrived, since the
  work a create causes may outlast its reply), the create's duration, the
  server's CPU and RSS growth, the frame's size; then the same schemas in a
  second room (the hardened tree compiles them once).
- checks (in process): `check_request` on a parsed Connect publish command
  with a small payload and with 64 KiB payloads, against parsing the same
  command from bytes (what every command already pays) and MessageToDict of
  the payload (what validating it against a schema pays). A tree without
  `services.runtime.request_checks` reports only the parse.

Prints one JSON document. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import inspect
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf import json_format, message, struct_pb2

import parley
import services
from parley.client import Client
from parley.device_identity import DeviceIdentity
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.room.v1 import room_pb2, room_pb2_grpc
from parley.values import to_value
from services.gateway import subjects
from services.gateway.connections import Connection
from services.gateway.outbox import FlushScheduler, Outbox
from services.room import definitions, rules
from services.runtime import config as runtime_config

try:
    from services.runtime.bus import InProcessBus
except ImportError:  # a tree from before issue 9, for a before/after run
    from services.gateway.bus import InProcessBus  # type: ignore[no-redef,import-not-found]

if TYPE_CHECKING or __package__:
    from bench.report import cpu_model, percentile_ms, print_document
    from bench.server_process import ServerProcess, parley_serve
else:  # run as a script, maybe against another tree: this file's directory is first on sys.path
    from report import cpu_model, percentile_ms, print_document
    from server_process import ServerProcess, parley_serve

SCENARIOS = ("subjects", "schemas", "checks")
SERVER_ENV = {"PARLEY_LOGGING_LEVEL": "WARNING"}
WELCOME_TIMEOUT_SECONDS = 30.0
CREATE_TIMEOUT_SECONDS = 300.0
NOTICE_TIMEOUT_SECONDS = 120.0
PING_INTERVAL_SECONDS = 0.010
# The idle ping baseline lasts --seconds, but at least this long (ten pings).
MIN_IDLE_PING_SECONDS = 0.1
PUBLISHED_SUBJECT = "presence:lobby"
PUBLISH_BATCH = 20
WARMUP_SECONDS = 0.2
SMALL_PAYLOAD = {"text": "hello, see you at 10", "n": 42, "urgent": False}
PAYLOAD_EVENT = "message"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python bench/hardening_bench.py",
        description="Measures what issue 8's hardening changed: subject publish cost with many wildcards (in "
        "process), a CreateRoom with the largest schemas allowed against a live server (ping round trips, "
        "RoomChanged frame size), and the request checks' cost per Connect command (in process). Prints one "
        "JSON document.",
    )
    parser.add_argument(
        "--scenarios", default=",".join(SCENARIOS), help="comma-separated: subjects, schemas, checks (default all)"
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=1.0,
        help="timed seconds of each in-process measurement and of the idle ping baseline (default 1)",
    )
    parser.add_argument(
        "--wildcards",
        default="0,1000,2000,10000",
        help="comma-separated wildcard counts held by one user (default 0,1000,2000,10000; 0 is the baseline)",
    )
    parser.add_argument(
        "--schema-events", type=int, help="events in the created room (default: the most the tree allows)"
    )
    parser.add_argument(
        "--schema-bytes", type=int, help="JSON bytes of each event's schema (default: the most one may have)"
    )
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    return parser


def round_trips(samples: Sequence[float]) -> dict[str, Any]:
    ordered = sorted(samples)
    return {
        "count": len(ordered),
        "p50_ms": percentile_ms(ordered, 0.50),
        "p99_ms": percentile_ms(ordered, 0.99),
        "max_ms": round(ordered[-1] * 1e3, 3) if ordered else None,
    }


def hardened() -> bool:
    """Whether the tree under test has issue 8's changes (its subject router takes a per-user cap)."""
    return "max_per_user" in inspect.signature(subjects.SubjectRouter).parameters


# Subjects: publish cost with many wildcards, in process


def new_router(bus: InProcessBus, max_per_user: int) -> subjects.SubjectRouter:
    if hardened():
        return subjects.SubjectRouter(bus, max_per_user=max_per_user)  # type: ignore[call-arg,unused-ignore]
    return subjects.SubjectRouter(bus)  # type: ignore[call-arg,unused-ignore]


def new_connection(user_id: str, session_id: str) -> Connection:
    outbox = Outbox(FlushScheduler(60), max_bytes=1 << 20, max_frame_bytes=1 << 20)
    return Connection(session_id=session_id, user_id=user_id, device_id="d", outbox=outbox)


async def settled(result: Any) -> None:
    """Awaits what the router returned: its calls are coroutines since the bus became asynchronous (issue 9)."""
    if inspect.isawaitable(result):
        await result


async def hold_wildcards(router: subjects.SubjectRouter, count: int) -> tuple[list[Connection], str]:
    """Subscribes one user to `w<i>.*` for i < count over as few connections as allowed.

    Returns the connections and, if the router refused one, the refusal (`reason: message`).
    """
    per_connection = subjects.MAX_SUBJECTS_PER_CONNECTION
    connections: list[Connection] = []
    for i in range(count):
        if i % per_connection == 0:
            connections.append(new_connection("holder", f"holder-{len(connections)}"))
        try:
            await settled(router.subscribe(connections[-1], f"w{i}.*"))
        except Exception as refused:  # a ServiceError on either tree
            return connections, f"{getattr(refused, 'reason', '')}: {getattr(refused, 'message', refused)}"
    return connections, ""


async def publish_rate(router: subjects.SubjectRouter, seconds: float) -> dict[str, Any]:
    data = to_value({"x": 1})
    warm_until = time.perf_counter() + min(seconds, WARMUP_SECONDS)
    while time.perf_counter() < warm_until:
        await settled(router.publish(PUBLISHED_SUBJECT, "publisher", data))
    count = 0
    cpu = time.thread_time()
    started = time.perf_counter()
    deadline = started + seconds
    while time.perf_counter() < deadline:
        for _ in range(PUBLISH_BATCH):
            await settled(router.publish(PUBLISHED_SUBJECT, "publisher", data))
        count += PUBLISH_BATCH
    elapsed = time.perf_counter() - started
    cpu = time.thread_time() - cpu
    return {
        "publishes": count,
        "per_second": round(count / elapsed, 1),
        "us_per_publish": round(elapsed * 1e6 / count, 2),
        "cpu_us_per_publish": round(cpu * 1e6 / count, 2),
    }


async def subjects_scenario(wildcard_counts: Sequence[int], seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for count in wildcard_counts:
        router = new_router(InProcessBus(), max_per_user=max(count, 1))
        started = time.perf_counter()
        connections, refused = await hold_wildcards(router, count)
        if refused:
            raise RuntimeError(f"{count} wildcards refused: {refused}")
        setup = time.perf_counter() - started
        rate = await publish_rate(router, seconds)
        if any(c.outbox.pending_bytes for c in connections):
            raise RuntimeError(f"a wildcard matched {PUBLISHED_SUBJECT!r}")
        results[str(count)] = {"connections": len(connections), "subscribe_seconds": round(setup, 3), **rate}
    baseline = results.get("0")
    if baseline is not None:
        for result in results.values():
            result["us_per_publish_over_baseline"] = round(result["us_per_publish"] / baseline["us_per_publish"], 2)
    gateway_defaults = runtime_config.GatewayConfig()
    default_cap = getattr(gateway_defaults, "max_subject_subscriptions_per_user", None)
    wanted = max(wildcard_counts)
    router = new_router(InProcessBus(), max_per_user=default_cap or 0)
    connections, refused = await hold_wildcards(router, wanted)
    accepted = sum(len(c.subjects) for c in connections)
    return {
        "how": "in process: SubjectRouter on an InProcessBus, no gRPC, no network",
        "published_subject": PUBLISHED_SUBJECT,
        "wildcard_pattern": "w<i>.*",
        "per_connection_cap": subjects.MAX_SUBJECTS_PER_CONNECTION,
        "by_wildcards_held": results,
        "with_default_caps": {
            "per_user_cap": default_cap,
            "asked": wanted,
            "accepted": accepted,
            "refused_with": refused or None,
        },
    }


# Schemas: CreateRoom against a live server


class ConnectStream:
    """A raw Connect stream: pings answered by request id, RoomChanged frames recorded with their size."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self._outgoing: asyncio.Queue[gateway_pb2.ConnectRequest] = asyncio.Queue()
        stub = gateway_pb2_grpc.GatewayServiceStub(channel)
        self._call = stub.Connect(self._requests(), metadata=(("authorization", f"Bearer {token}"),))
        self._frames = aiter(self._call)
        self._sent: dict[str, float] = {}
        # (sent at, round trip) of every answered ping, perf_counter seconds.
        self.pings: list[tuple[float, float]] = []
        # room id -> (received at, frame bytes) of its first RoomChanged.
        self.room_changes: dict[str, tuple[float, int]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._ids = 0
        # Set whenever a frame was recorded.
        self._progress = asyncio.Event()

    async def _requests(self) -> AsyncIterator[gateway_pb2.ConnectRequest]:
        while True:
            yield await self._outgoing.get()

    async def open(self) -> ConnectStream:
        first = await asyncio.wait_for(anext(self._frames, None), WELCOME_TIMEOUT_SECONDS)
        if first is None or first.WhichOneof("frame") != "welcome":
            raise RuntimeError(f"expected a Welcome, got {first}")
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        async for frame in self._frames:
            now = time.perf_counter()
            kind = frame.WhichOneof("frame")
            if kind in ("reply", "replies"):
                for reply in [frame.reply] if kind == "reply" else frame.replies.replies:
                    sent = self._sent.pop(reply.request_id, None)
                    if sent is not None:
                        self.pings.append((sent, now - sent))
            elif kind == "room_changed":
                room_id = frame.room_changed.change.room.room_id
                self.room_changes.setdefault(room_id, (now, frame.ByteSize()))
            self._progress.set()

    async def until(self, done: Callable[[], bool]) -> None:
        """Waits, frame by frame, until `done()`."""
        while not done():
            self._progress.clear()
            await self._progress.wait()

    def ping(self) -> None:
        self._ids += 1
        request_id = f"p{self._ids}"
        self._sent[request_id] = time.perf_counter()
        self._outgoing.put_nowait(gateway_pb2.ConnectRequest(request_id=request_id, ping=gateway_pb2.PingCommand()))

    def oldest_unanswered(self) -> float:
        """When the oldest ping still unanswered was sent (infinity if none)."""
        return min(self._sent.values(), default=math.inf)

    async def close(self) -> None:
        self._call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


async def ping_every(stream: ConnectStream, interval: float, stop: asyncio.Event) -> None:
    """Pings on a fixed schedule, whether or not earlier pings were answered."""
    next_at = time.perf_counter()
    while not stop.is_set():
        stream.ping()
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))


def schema_size(schema: dict[str, Any]) -> int:
    """A schema's size as the tree under test measures it against MAX_SCHEMA_BYTES."""
    measure: Callable[[dict[str, Any]], int] | None = getattr(rules, "schema_bytes", None)
    return measure(schema) if measure is not None else len(json.dumps(schema))


def compact_bytes(schema: dict[str, Any]) -> int:
    return len(json.dumps(schema, separators=(",", ":")).encode())


def schema_of(size: int, tag: str) -> dict[str, Any]:
    """An object schema of string properties, as large as fits in `size` bytes (the tree's measure), unique to `tag`."""
    schema: dict[str, Any] = {"type": "object", "title": tag, "properties": {}}
    properties: dict[str, Any] = schema["properties"]
    field = {"type": "string", "maxLength": 40}
    per_field = schema_size({"p": {"field_00000": field}}) - schema_size({"p": {}}) + 1
    for n in range(max(0, (size - schema_size(schema)) // per_field - 2)):
        properties[f"field_{n}"] = field
    while schema_size(schema) <= size:
        properties[f"field_{len(properties)}"] = field
    properties.pop(f"field_{len(properties) - 1}")
    return schema


def largest_room(events: int | None, schema_bytes: int | None) -> tuple[int, int]:
    """(events, bytes per schema): the most the tree allows in one room, unless told otherwise."""
    per_schema = schema_bytes or rules.MAX_SCHEMA_BYTES
    if events is None:
        per_room = getattr(runtime_config.RoomServiceConfig(), "max_schema_bytes_per_room", 0)
        events = definitions.MAX_EVENTS if not per_room else min(definitions.MAX_EVENTS, per_room // per_schema)
    return events, per_schema


def create_request(room_id: str, schemas: Sequence[dict[str, Any]]) -> room_pb2.CreateRoomRequest:
    request = room_pb2.CreateRoomRequest(room_id=room_id)
    for i, schema in enumerate(schemas):
        struct = struct_pb2.Struct()
        struct.update(schema)
        request.events.add(name=f"e{i}", schema=struct)
    return request


def rss_mib(server: ServerProcess) -> float:
    return round(server.rss_kib() / 1024, 1)


async def timed_create(
    server: ServerProcess,
    rooms: room_pb2_grpc.RoomServiceAsyncStub,
    token: str,
    request: room_pb2.CreateRoomRequest,
    pinger: ConnectStream,
    watcher: ConnectStream,
) -> dict[str, Any]:
    rss = rss_mib(server)
    cpu = server.cpu_seconds()
    started = time.perf_counter()
    await rooms.CreateRoom(request, metadata=(("authorization", f"Bearer {token}"),), timeout=CREATE_TIMEOUT_SECONDS)
    finished = time.perf_counter()
    async with asyncio.timeout(NOTICE_TIMEOUT_SECONDS):
        await watcher.until(lambda: request.room_id in watcher.room_changes)
    received_at, frame_bytes = watcher.room_changes[request.room_id]
    # The work a create causes may outlast its reply (a gateway taking in the new room): the
    # window runs until the create has returned and the notice has arrived, whichever is later.
    window_end = max(finished, received_at)
    async with asyncio.timeout(NOTICE_TIMEOUT_SECONDS):
        await pinger.until(lambda: pinger.oldest_unanswered() > window_end)
    cpu = server.cpu_seconds() - cpu
    during = [(sent, rtt) for sent, rtt in pinger.pings if started <= sent <= window_end]
    return {
        "create_ms": round((finished - started) * 1e3, 1),
        "room_changed_after_ms": round((received_at - started) * 1e3, 1),
        "pings_until_created_and_notified": round_trips([rtt for _, rtt in during]),
        "last_of_those_answered_after_ms": round((max(s + r for s, r in during) - started) * 1e3, 1)
        if during
        else None,
        "room_changed_frame_bytes": frame_bytes,
        "server_cpu_seconds": round(cpu, 3),
        "server_rss_growth_mib": round(rss_mib(server) - rss, 1),
    }


async def schemas_against(
    server: ServerProcess, address: str, events: int, per_schema: int, idle_seconds: float
) -> dict[str, Any]:
    users = {
        name: Client(address, username=f"bench-{name}", identity=DeviceIdentity.generate(f"bench-{name}"))
        for name in ("creator", "pinger", "watcher")
    }
    async with grpc.aio.insecure_channel(address) as channel:
        try:
            for client in users.values():
                await client.register()
            pinger = await ConnectStream(channel, await users["pinger"].access_token()).open()
            watcher = await ConnectStream(channel, await users["watcher"].access_token()).open()
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            token = await users["creator"].access_token()
            schemas = [schema_of(per_schema, f"bench-{i:03d}") for i in range(events)]
            stop = asyncio.Event()
            pinging = asyncio.create_task(ping_every(pinger, PING_INTERVAL_SECONDS, stop))
            try:
                await asyncio.sleep(0.2)
                idle_from = time.perf_counter()
                await asyncio.sleep(max(MIN_IDLE_PING_SECONDS, idle_seconds))
                idle = [rtt for sent, rtt in pinger.pings if sent >= idle_from]
                first = await timed_create(server, rooms, token, create_request("big", schemas), pinger, watcher)
                again = await timed_create(server, rooms, token, create_request("big-2", schemas), pinger, watcher)
            finally:
                stop.set()
                await pinging
            await pinger.close()
            await watcher.close()
        finally:
            for client in users.values():
                await client.close()
    return {
        "events": events,
        "schema_bytes_each_tree_measure": schema_size(schemas[0]) if schemas else 0,
        "schema_bytes_total_compact": sum(compact_bytes(s) for s in schemas),
        "ping_interval_ms": PING_INTERVAL_SECONDS * 1e3,
        "idle_pings_before": round_trips(idle),
        "first_create": first,
        "second_create_same_schemas": again,
    }


def schemas_scenario(
    tree_root: Path, events: int | None, schema_bytes: int | None, idle_seconds: float
) -> dict[str, Any]:
    events, per_schema = largest_room(events, schema_bytes)
    with tempfile.TemporaryDirectory(prefix="parley-bench-") as tmp:
        # cwd is the tree's root: `-m` puts it first on sys.path, so the server imports that tree.
        server = ServerProcess(parley_serve(Path(tmp) / "d"), Path(tmp), env=SERVER_ENV, cwd=tree_root)
        try:
            address = server.wait_for_address()
            result = asyncio.run(schemas_against(server, address, events, per_schema, idle_seconds))
        finally:
            exit_code = server.terminate()
    return {
        "how": "all-in-one server in a child process (python -m parley.cli.main serve), SQLite; "
        "server CPU and RSS from /proc/<pid>",
        **result,
        "server_exit_code": exit_code,
    }


# Checks: the cost of the request checks per Connect publish command, in process


def payload_of_bytes(limit: int) -> list[dict[str, Any]]:
    """A list of small records whose google.protobuf.Value encoding is at most `limit` bytes."""

    def record(i: int) -> dict[str, Any]:
        return {"id": i, "score": i * 0.5, "name": f"item-{i:05d}", "tags": ["a", "b"], "ok": True}

    items: list[dict[str, Any]] = []
    per_item = to_value([record(0), record(1)]).ByteSize() - to_value([record(0)]).ByteSize()
    items = [record(i) for i in range(limit // per_item - 2)]
    while to_value(items).ByteSize() <= limit:
        items.append(record(len(items)))
    items.pop()
    return items


def publish_command(payload: Any) -> gateway_pb2.ConnectRequest:
    event = gateway_pb2.OutgoingEvent(event=PAYLOAD_EVENT, payload=to_value(payload))
    return gateway_pb2.ConnectRequest(
        request_id="r1", publish=gateway_pb2.PublishCommand(room_id="lobby", events=[event])
    )


def us_per_call(operation: Callable[[], object], seconds: float) -> float:
    operation()  # warm-up: the check plans a message type on first sight
    count = 0
    started = time.perf_counter()
    deadline = started + seconds
    batch = 1
    while time.perf_counter() < deadline:
        for _ in range(batch):
            operation()
        count += batch
        batch = min(batch * 2, 1000)
    return round((time.perf_counter() - started) * 1e6 / count, 2)


def checks_scenario(seconds: float) -> dict[str, Any]:
    check_request: Callable[[message.Message], None] | None
    try:
        from services.runtime.request_checks import check_request
    except ImportError:
        check_request = None
    limit = runtime_config.GatewayConfig().max_payload_bytes - len(PAYLOAD_EVENT)
    payloads = {
        "small": SMALL_PAYLOAD,
        "64KiB_records": payload_of_bytes(limit),
        "64KiB_one_string": "x" * (limit - 4),  # a Value's tag and length prefix take 4 bytes here
    }
    results: dict[str, Any] = {}
    for name, payload in payloads.items():
        raw = publish_command(payload).SerializeToString()
        parsed = gateway_pb2.ConnectRequest.FromString(raw)
        payload_bytes = parsed.publish.events[0].payload.ByteSize()
        if payload_bytes > limit:
            raise RuntimeError(f"{name}: {payload_bytes} bytes is over the {limit}-byte payload limit")
        parse_us = us_per_call(functools.partial(gateway_pb2.ConnectRequest.FromString, raw), seconds)
        value = parsed.publish.events[0].payload
        to_dict_us = us_per_call(functools.partial(json_format.MessageToDict, value), seconds)
        entry: dict[str, Any] = {
            "payload_bytes": payload_bytes,
            "parse_us_baseline": parse_us,
            "to_dict_us_baseline": to_dict_us,
        }
        if check_request is not None:
            check_us = us_per_call(functools.partial(check_request, parsed), seconds)
            entry["check_us"] = check_us
            entry["check_over_parse"] = round(check_us / parse_us, 2)
        results[name] = entry
    return {
        "how": "in process, one thread: check_request on a parsed ConnectRequest(publish=...), one event; "
        "baselines: ConnectRequest.FromString of the same bytes, and json_format.MessageToDict of the payload "
        "(what a publish to a room with a schema pays to validate it)",
        "request_checks_present": check_request is not None,
        "by_payload": results,
    }


# The document


def tree_facts() -> dict[str, Any]:
    root = Path(services.__file__).resolve().parents[1]
    commit = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()
    return {
        "root": str(root),
        "commit": commit,
        "services_from": str(Path(services.__file__).resolve().parent),
        "parley_from": str(Path(parley.__file__).resolve().parent),
        "hardened": hardened(),
    }


def machine_facts() -> dict[str, Any]:
    return {
        "cpus_available": len(os.sched_getaffinity(0)),
        "cpu_model": cpu_model(),
        "python_version": platform.python_version(),
        "grpcio_version": grpc.__version__,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    scenarios = [s for s in args.scenarios.split(",") if s]
    unknown = set(scenarios) - set(SCENARIOS)
    if unknown or args.seconds <= 0:
        parser.error(f"unknown scenarios {sorted(unknown)}" if unknown else "--seconds must be > 0")
    wildcards = [int(n) for n in args.wildcards.split(",") if n]
    tree = tree_facts()
    document: dict[str, Any] = {
        "benchmark": "hardening",
        "tree": tree,
        "parameters": {
            "scenarios": scenarios,
            "seconds": args.seconds,
            "wildcards": wildcards,
            "schema_events": args.schema_events,
            "schema_bytes": args.schema_bytes,
        },
        "machine": machine_facts(),
    }
    if "subjects" in scenarios:
        document["subject_publish"] = asyncio.run(subjects_scenario(wildcards, args.seconds))
    if "schemas" in scenarios:
        document["create_room_with_largest_schemas"] = schemas_scenario(
            Path(tree["root"]), args.schema_events, args.schema_bytes, args.seconds
        )
    if "checks" in scenarios:
        document["request_checks"] = checks_scenario(args.seconds)
    print_document(document, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
