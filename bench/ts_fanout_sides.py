"""One side of bench/ts_fanout_bench.py: N subscribers of one client library in K processes, measured.

A side's subscribers live in K worker processes that speak
bench/fanout_worker.py's protocol: `node bench/ts_subscribers.mjs`
(@parley/client's Node entry) for "ts", `python -m
bench.ts_fanout_python_subscribers` (the Python SDK) for "python". Subscriber i
goes to process i mod K (bench/fanout_worker_pool.py). Each subscriber is a
user of its own, registered by its own client on its first connect, on a TCP
connection of its own, and joins the side's own room.

The measurement is bench/fanout_measure.py's: an unmeasured warm-up through the
same path, the server settled, then one publisher (its own user, the SDK's
`Room.trigger`, one event per call, at most WINDOW outstanding) publishing for
`seconds` at a fixed rate or at full speed, and every delivery awaited; one
such phase per rate, with the same subscribers and publisher.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from bench.fanout_measure import STALL_SECONDS, WARMUP_MESSAGES, Run, Window, deliveries, published
from bench.fanout_parley import ParleySystem
from bench.fanout_publishers import WINDOW, Publisher, PublishOutcome, at_rate, full_speed, open_publishers, reason
from bench.fanout_subscribers import OPEN_CONCURRENCY
from bench.fanout_wire import payload
from bench.fanout_worker_pool import REPLY_LINE_LIMIT, REPO_ROOT, WorkerPool, WorkerProcess
from bench.server_process import ProcessGroups

NODE_SCRIPT = REPO_ROOT / "bench" / "ts_subscribers.mjs"
NODE_ENTRY = REPO_ROOT / "clients" / "typescript" / "dist" / "node.js"
PYTHON_WORKER = "bench.ts_fanout_python_subscribers"
WARMUP_TAG = "10"
MEASURED_TAG = "11"
SETTLE_WINDOW_SECONDS = 0.5
SETTLE_LIMIT_SECONDS = 60.0


@dataclasses.dataclass(frozen=True)
class Settings:
    subscribers: int
    processes: int
    # How long the publisher publishes in each phase.
    seconds: float
    # One phase per rate, in this order: messages per second, 0 as fast as the replies come back.
    rates: tuple[float, ...]


def phase_name(rate: float) -> str:
    return f"{rate:g}_msgs_per_s" if rate else "full_speed"


async def start_node_worker(name: str, log_dir: Path, groups: ProcessGroups) -> WorkerProcess:
    """`node bench/ts_subscribers.mjs` in a session of its own; its stderr in log_dir/name.stderr."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not on PATH")
    stderr_path = log_dir / f"{name}.stderr"
    with stderr_path.open("w") as stderr:
        process = await asyncio.create_subprocess_exec(
            node,
            str(NODE_SCRIPT),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=stderr,
            cwd=REPO_ROOT,
            start_new_session=True,
            limit=REPLY_LINE_LIMIT,
        )
    groups.add(process.pid)
    return WorkerProcess(process, stderr_path, groups)


async def start_python_worker(name: str, log_dir: Path, groups: ProcessGroups) -> WorkerProcess:
    return await WorkerProcess.run_module((PYTHON_WORKER,), name, log_dir, groups)


@dataclasses.dataclass(frozen=True)
class Side:
    name: str
    label: str
    subscriber: str
    start_worker: Callable[[str, Path, ProcessGroups], Awaitable[WorkerProcess]]

    @property
    def room(self) -> str:
        return f"bench-{self.name}"


SIDES = {
    "ts": Side(
        "ts",
        "TypeScript (Node)",
        "@parley/client's Node Client (gRPC over HTTP/2, the Connect stream), client.join(room), "
        "room.on(event, handler)",
        start_node_worker,
    ),
    "python": Side(
        "python",
        "Python SDK",
        "parley.Client (grpc.aio, the Connect stream), client.join(room), room.on(event, handler)",
        start_python_worker,
    ),
}


async def full_speed_for(publisher: Publisher, seconds: float, tag: str, window: int = WINDOW) -> PublishOutcome:
    """Calls as fast as replies come back, `window` outstanding, until `seconds` have passed."""
    errors: collections.Counter[str] = collections.Counter()
    started = time.perf_counter()
    deadline = started + seconds
    sent = 0

    async def lane() -> None:
        nonlocal sent
        while time.perf_counter() < deadline:
            index, sent = sent, sent + 1
            try:
                await publisher.send(payload(tag, index))
            except Exception as exc:
                errors[reason(exc)] += 1

    first_ns = time.time_ns()
    await asyncio.gather(*(lane() for _ in range(window)))
    return PublishOutcome(first_ns, sent, errors, time.perf_counter() - started)


async def publish(publisher: Publisher, seconds: float, rate: float, tag: str) -> PublishOutcome:
    if rate:
        return await at_rate(publisher, max(1, round(rate * seconds)), rate, tag)
    return await full_speed_for(publisher, seconds, tag)


def subscriber_specs(address: str, count: int, keys: Path) -> list[dict[str, str]]:
    """`count` new users (names unique to this run), each with its key file under `keys`."""
    prefix = f"b{secrets.token_hex(4)}-"
    names = [f"{prefix}{i}" for i in range(count)]
    return [{"address": address, "username": name, "key_file": str(keys / f"{name}.json")} for name in names]


async def open_subscribers(
    pool: WorkerPool, side: Side, address: str, settings: Settings, keys: Path
) -> dict[str, Any]:
    """Every subscriber connected (registered, logged in) and joined to the side's room."""
    connect_seconds = await pool.connect(subscriber_specs(address, settings.subscribers, keys))
    joined = await pool.join([side.room] * settings.subscribers, OPEN_CONCURRENCY)
    if joined.failures:
        raise RuntimeError(f"{sum(joined.failures.values())} joins failed: {joined.failures}")
    return {"register_login_seconds": round(connect_seconds, 2), "join_seconds": round(joined.seconds, 2)}


async def measure_phase(run: Run, publisher: Publisher, settings: Settings, rate: float) -> dict[str, Any]:
    """A warm-up, the server settled, then `settings.seconds` of publishing at `rate` and every delivery awaited."""
    pool, subscribers = run.pool, settings.subscribers
    await pool.reset(WARMUP_TAG)
    warm = await full_speed(publisher, WARMUP_MESSAGES, WARMUP_TAG)
    await pool.wait_for(warm.calls * subscribers, 60.0, STALL_SECONDS)
    seconds, settled = await run.system.servers.settle(SETTLE_WINDOW_SECONDS, SETTLE_LIMIT_SECONDS)
    await pool.reset(MEASURED_TAG)
    window = Window.open(run)
    outcome = await publish(publisher, settings.seconds, rate, MEASURED_TAG)
    expected = outcome.calls * subscribers
    received, complete = await pool.wait_for(expected, 60.0 + 10 * settings.seconds, STALL_SECONDS)
    reports = await pool.reports()
    costs = window.close(run, received)
    client_cpu = costs["client_cpu_seconds"]
    return {
        "rate_msgs_per_s": rate or None,
        **deliveries(outcome.first_ns, expected, received, complete, reports),
        "publish": published([outcome], publisher.reads_replies),
        **costs,
        "client_cpu_us_per_delivery": round(client_cpu * 1e6 / received, 2) if received else None,
        "settle_before": {"seconds": round(seconds, 2), "settled": settled},
    }


async def measure_side(
    system: ParleySystem, side: Side, settings: Settings, log_dir: Path, groups: ProcessGroups
) -> dict[str, Any]:
    """The side's subscribers opened, one publisher's events to them measured, everything closed again."""
    workers = [await side.start_worker(f"{side.name}-{n}", log_dir, groups) for n in range(settings.processes)]
    pool = WorkerPool(workers)
    try:
        keys = log_dir / f"keys-{side.name}"
        keys.mkdir()
        setup = await open_subscribers(pool, side, system.gateways[0], settings, keys)
        (publisher,) = await open_publishers([system.publisher(side.room, 0)])
        run = Run(system, pool, quick=False)
        try:
            phases = {phase_name(rate): await measure_phase(run, publisher, settings, rate) for rate in settings.rates}
        finally:
            await publisher.close()
    finally:
        await pool.stop()
    return {
        "label": side.label,
        "subscriber": side.subscriber,
        "room": side.room,
        "subscribers": settings.subscribers,
        "subscriber_processes": settings.processes,
        "worker_pids": [worker.pid for worker in workers],
        "setup": setup,
        "phases": phases,
    }
