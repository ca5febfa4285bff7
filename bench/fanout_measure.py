"""Measuring one scenario against one running system, the same way for every system.

Each measured window starts once the servers have settled (their CPU below a
tenth of a core: what came before, such as the presence a thousand joins set
off, is over) and after an unmeasured warm-up through the same path. Server
CPU is every server process's utime+stime (/proc/<pid>/stat) over the window;
client CPU is the worker processes' and this coordinating process's (the
publishers and the polling).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

from bench.fanout_publishers import (
    BATCH_EVENTS,
    BATCH_FRAMES_IN_FLIGHT,
    WINDOW,
    ParleyPublisher,
    Publisher,
    PublishOutcome,
    at_rate,
    batched,
    full_speed,
    open_publishers,
)
from bench.fanout_scenarios import IdleMemory, JoinStorm, ManyRooms, Throughput
from bench.fanout_subscribers import OPEN_CONCURRENCY
from bench.fanout_systems import SystemUnderTest
from bench.fanout_wire import ROOM
from bench.fanout_worker_pool import JoinOutcome, WorkerPool
from bench.report import latency_ms, load_average, merged_counts, spread

WARMUP_MESSAGES = 50
QUICK_WARMUP_MESSAGES = 10
# No new delivery for this long ends the wait for the rest (the scenario counts as incomplete).
STALL_SECONDS = 15.0
# Idle memory: connections opened and closed first, so lazily built state is not charged to the measurement.
IDLE_WARMUP_PER_WORKER = 20


def _tags() -> Iterator[str]:
    return itertools.cycle(f"{n:02d}" for n in range(10, 100))


@dataclasses.dataclass
class Run:
    """One system under test, its subscriber workers, and the publisher of room "bench"."""

    system: SystemUnderTest
    pool: WorkerPool
    quick: bool
    tags: Iterator[str] = dataclasses.field(default_factory=_tags)
    room_publisher: Publisher | None = None

    async def settle(self) -> dict[str, Any]:
        window, limit = (0.1, 15.0) if self.quick else (0.5, 180.0)
        seconds, settled = await self.system.servers.settle(window, limit)
        return {"seconds": round(seconds, 2), "settled": settled}

    async def publisher_of_room(self) -> Publisher:
        if self.room_publisher is None:
            (self.room_publisher,) = await open_publishers([self.system.publisher(ROOM, 0)])
        return self.room_publisher

    async def disconnect(self) -> None:
        """Closes the subscribers' connections; in a `finally`, so a failure here does not hide the one before."""
        with contextlib.suppress(Exception):
            await self.pool.disconnect()

    async def close(self) -> None:
        if self.room_publisher is not None:
            await self.room_publisher.close()
            self.room_publisher = None


@dataclasses.dataclass
class Window:
    """CPU counters at the start of a measured window."""

    started: float
    server: dict[str, float]
    clients: float
    coordinator: float
    load: str

    @classmethod
    def open(cls, run: Run) -> Window:
        servers = run.system.servers.cpu_by_process()
        return cls(time.perf_counter(), servers, run.pool.cpu_seconds(), time.process_time(), load_average())

    def close(self, run: Run, units: int, unit: str = "delivery") -> dict[str, Any]:
        seconds = time.perf_counter() - self.started
        after = run.system.servers.cpu_by_process()
        # A process that ended meanwhile takes its CPU time with it; one started meanwhile counts from zero.
        by_process = {name: cpu - self.server.get(name, 0.0) for name, cpu in after.items()}
        server = sum(by_process.values())
        clients = run.pool.cpu_seconds() - self.clients
        costs: dict[str, Any] = {
            "window_seconds": round(seconds, 3),
            "server_cpu_seconds": round(server, 3),
            f"server_cpu_us_per_{unit}": round(server * 1e6 / units, 2) if units else None,
            # Cores' worth of CPU the servers used; near 1.0 a single event loop is saturated.
            "server_cpu_cores": round(server / seconds, 3),
            "client_processes": run.pool.holding,
            "client_cpu_seconds": round(clients, 3),
            "client_cpu_cores": round(clients / seconds, 3),
            "coordinator_cpu_seconds": round(time.process_time() - self.coordinator, 3),
            # Other work shares the cores: the machine's load averages at the start and the end.
            "machine_load": {"start": self.load, "end": load_average()},
        }
        if len(by_process) > 1:
            costs["server_cpu_seconds_by_process"] = {name: round(cpu, 3) for name, cpu in by_process.items()}
        return costs


def deliveries(
    first_ns: int, expected: int, received: int, complete: bool, reports: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """Deliveries made against those expected, their rate (received over first publish to last receive), latency."""
    last_ns = max(int(r["last_ns"]) for r in reports)
    elapsed = (last_ns - first_ns) / 1e9 if last_ns > first_ns else None
    errors: dict[str, int] = {}
    for report in reports:
        for reason, times in report["errors"].items():
            errors[reason] = errors.get(reason, 0) + times
    return {
        "expected": expected,
        "received": received,
        "lost": max(0, expected - received),
        "complete": complete,
        "elapsed_seconds": round(elapsed, 4) if elapsed else None,
        "deliveries_per_s": round(received / elapsed, 1) if elapsed else None,
        "latency_ms": latency_ms([lat for r in reports for lat in r["latencies_us"]]),
        "stale_events": sum(int(r["stale"]) for r in reports),
        "subscriber_errors": errors,
    }


def published(outcomes: Sequence[PublishOutcome], reads_replies: bool) -> dict[str, Any]:
    errors: dict[str, int] = {}
    for outcome in outcomes:
        for reason, times in outcome.errors.items():
            errors[reason] = errors.get(reason, 0) + times
    calls = sum(o.calls for o in outcomes)
    seconds = max(o.seconds for o in outcomes)
    return {
        "calls": calls,
        "lost": sum(o.lost for o in outcomes),
        "errors": errors,
        "seconds": round(seconds, 3),
        "calls_per_s": round(calls / seconds, 1) if seconds else None,
        "reads_each_reply": reads_replies,
        "behind_schedule_ms_max": max(o.behind_schedule_ms for o in outcomes),
    }


async def join_all(run: Run, rooms: Sequence[str]) -> dict[str, Any]:
    """Connects len(rooms) subscribers (each its own user) and joins subscriber i to rooms[i]."""
    specs = await run.system.subscriber_specs(len(rooms))
    connect_seconds = await run.pool.connect(specs)
    joined = await run.pool.join(rooms, OPEN_CONCURRENCY)
    if joined.failures:
        raise RuntimeError(f"{sum(joined.failures.values())} joins failed: {joined.failures}")
    setup: dict[str, Any] = {"connect_seconds": round(connect_seconds, 2), "join_seconds": round(joined.seconds, 2)}
    if len(run.pool.per_server) > 1:
        setup["subscribers_per_server_process"] = run.pool.per_server
    return setup


async def _publish(publisher: Publisher, scenario: Throughput, messages: int, tag: str, warmup: bool) -> PublishOutcome:
    if scenario.batched:
        assert isinstance(publisher, ParleyPublisher), "the batched publisher is Parley's"
        return await batched(publisher, messages, tag)
    if scenario.rate and not warmup:
        return await at_rate(publisher, messages, scenario.rate, tag)
    return await full_speed(publisher, messages, tag)


async def throughput(run: Run, scenario: Throughput) -> dict[str, Any]:
    """One publisher in room "bench", whose `scenario.subscribers` subscribers the pool holds, joined."""
    publisher = await run.publisher_of_room()
    pool, subscribers = run.pool, scenario.subscribers
    tag = next(run.tags)
    await pool.reset(tag)
    warmup = QUICK_WARMUP_MESSAGES if run.quick else WARMUP_MESSAGES
    warm = await _publish(publisher, scenario, warmup, tag, warmup=True)
    await pool.wait_for(warm.calls * subscribers, 60.0, STALL_SECONDS)
    settle = await run.settle()
    tag = next(run.tags)
    await pool.reset(tag)
    window = Window.open(run)
    outcome = await _publish(publisher, scenario, scenario.messages, tag, warmup=False)
    expected = scenario.messages * subscribers
    received, complete = await pool.wait_for(expected, scenario.within_seconds, STALL_SECONDS)
    reports = await pool.reports()
    costs = window.close(run, received)
    frames = {kind: sum(counts) for kind, counts in (await pool.frames()).items()}
    return {
        "label": scenario.label,
        "subscribers": subscribers,
        "messages": scenario.messages,
        "rate_msgs_per_s": scenario.rate or None,
        "publisher": (
            f"batched: {BATCH_EVENTS} events per call, {BATCH_FRAMES_IN_FLIGHT} calls outstanding"
            if scenario.batched
            else f"one event per call, at most {WINDOW} outstanding"
        ),
        **deliveries(outcome.first_ns, expected, received, complete, reports),
        "publish": published([outcome], publisher.reads_replies),
        # What the subscribers received, by frame kind: with `received`, how many events each frame carried.
        "frames_received": frames,
        **costs,
        "settle_before": settle,
    }


async def many_rooms(run: Run, scenario: ManyRooms) -> dict[str, Any]:
    """`rooms` rooms of `per_room` subscribers, a publisher per room at `rate`, schedules spread over a period."""
    room_ids = scenario.room_ids
    setup = await join_all(run, [room_ids[i // scenario.per_room] for i in range(scenario.rooms * scenario.per_room)])
    publishers = await open_publishers([run.system.publisher(room, i) for i, room in enumerate(room_ids)])
    pool, subscribers = run.pool, scenario.rooms * scenario.per_room
    try:
        tag = next(run.tags)
        await pool.reset(tag)
        await asyncio.gather(*(full_speed(p, 2, tag) for p in publishers))
        await pool.wait_for(2 * subscribers, 60.0, STALL_SECONDS)
        settle = await run.settle()
        tag = next(run.tags)
        await pool.reset(tag)
        window = Window.open(run)
        stagger = 1.0 / scenario.rate / len(publishers)
        messages, rate = scenario.messages, scenario.rate
        outcomes = await asyncio.gather(
            *(at_rate(p, messages, rate, tag, start_after=i * stagger) for i, p in enumerate(publishers))
        )
        expected = scenario.messages * subscribers
        received, complete = await pool.wait_for(expected, scenario.within_seconds, STALL_SECONDS)
        reports = await pool.reports()
        costs = window.close(run, received)
    finally:
        await asyncio.gather(*(p.close() for p in publishers), return_exceptions=True)
        await run.disconnect()
    return {
        "label": scenario.label,
        "rooms": scenario.rooms,
        "subscribers_per_room": scenario.per_room,
        "messages_per_publisher": scenario.messages,
        "rate_msgs_per_s_per_room": scenario.rate,
        "publisher": f"one per room, its own user; one event per call, at most {WINDOW} outstanding",
        **deliveries(min(o.first_ns for o in outcomes), expected, received, complete, reports),
        "publish": published(outcomes, publishers[0].reads_replies),
        **costs,
        "setup": setup,
        "settle_before": settle,
    }


async def join_storm(run: Run, scenario: JoinStorm) -> dict[str, Any]:
    """Connected subscribers all join one room at once, from the first join sent to the last answered:
    `scenario.storms` times, each into a room of its own once the servers are quiet; the median storm counts."""
    pool = run.pool
    connect_seconds = await pool.connect(await run.system.subscriber_specs(scenario.subscribers))
    storms: list[JoinOutcome] = []
    at_ready: list[dict[str, list[int]]] = []
    until_settled: list[dict[str, list[int]]] = []
    try:
        settle = await run.settle()
        window = Window.open(run)
        for room in scenario.room_ids:
            if storms:
                await run.settle()
            storms.append(await pool.join([room] * scenario.subscribers, concurrency=0))
            at_ready.append(await pool.frames())
            aftermath = await run.settle()
            until_settled.append(await pool.frames())
        joined = sum(storm.joined for storm in storms)
        costs = window.close(run, joined, unit="join")
    finally:
        await run.disconnect()
    seconds = sorted(storm.seconds for storm in storms)
    return {
        "label": scenario.label,
        "subscribers": scenario.subscribers,
        "storms": scenario.storms,
        "joined": joined,
        "failures": merged_counts(storm.failures for storm in storms),
        "complete": joined == scenario.subscribers * scenario.storms,
        # The median storm (the upper one of an even count); every storm's, in the order they ran.
        "seconds": round(seconds[len(seconds) // 2], 3),
        "storm_seconds": [round(storm.seconds, 3) for storm in storms],
        "join_ms": latency_ms([us for storm in storms for us in storm.join_us]),
        # Frames each subscriber received in each storm from its join until the last subscriber was ready, by kind.
        "frames_per_subscriber_until_all_ready": _spread_over(at_ready, scenario.subscribers),
        # ... and until the servers settled after the storm.
        "frames_per_subscriber_until_settled": _spread_over(until_settled, scenario.subscribers),
        "settle_after": aftermath,
        **costs,
        "connect_seconds": round(connect_seconds, 2),
        "settle_before": settle,
    }


def _spread_over(storms: list[dict[str, list[int]]], subscribers: int) -> dict[str, dict[str, float | int]]:
    """Frames by kind, per subscriber per storm (none of a kind in a storm counts as none for each)."""
    kinds = sorted({kind for frames in storms for kind in frames})
    return {kind: spread([n for frames in storms for n in frames.get(kind, [0] * subscribers)]) for kind in kinds}


async def idle_memory(run: Run, scenario: IdleMemory) -> dict[str, Any]:
    """Server memory (VmRSS of every server process) per idle connection, each its own user, in a room."""
    rooms = scenario.room_ids
    warmup = min(scenario.connections // 4, IDLE_WARMUP_PER_WORKER * len(run.pool.workers))
    await join_all(run, [rooms[i // scenario.per_room] for i in range(warmup)])
    await run.pool.disconnect()
    members = [rooms[i // scenario.per_room] for i in range(scenario.connections)]
    await run.system.subscriber_specs(scenario.connections)  # users registered before the first reading
    await run.settle()
    before = run.system.servers.rss_kib()
    try:
        setup = await join_all(run, members)
        settle = await run.settle()
        after = run.system.servers.rss_kib()
        processes = run.pool.holding
    finally:
        await run.disconnect()
    return {
        "label": scenario.label,
        "connections": scenario.connections,
        "client_processes": processes,
        **setup,
        "settle_before_reading": settle,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_connection": round((after - before) / scenario.connections, 2),
        "complete": True,
    }
