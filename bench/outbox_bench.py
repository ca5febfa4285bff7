"""Outbox benchmark: what the gateway's outboxes cost per delivery, against an asyncio.Queue per stream.

    python -m bench.outbox_bench [--rooms R] [--members M] [--events E] [--repeats K] [--quick] [--out FILE]

No gRPC and no server: R rooms of M streams in this process, each stream a
task that takes what its queue gives it, as `Realtime.connect` does (without
the write). Every round, one event per room is queued for each of the room's
streams, the loop yielding between rooms as fan-out from separate publish
commands does, then a pause longer than the batch window, so that events are
mostly sent one per frame, as in the fan-out benchmark's many rooms. The
same rounds run twice:

- `outbox`: Parley's `Outbox` with a shared `FlushScheduler` (services/gateway/outbox.py:
  the byte budget, the flush window, flush pacing, frames built once per room);
- `queue`: one `asyncio.Queue` per stream, the grpc.aio floor's way
  (bench/grpc_floor_server.py).

Reports CPU time of this process (`time.process_time`, the pauses not
counted) per delivery for each, from queueing the first event until every
stream's task has taken everything and ended: the median of K runs of each,
taken by turns, every value, their ratio, and the frames the outboxes made
(fewer than the deliveries when events shared a frame). One JSON document
on stdout. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any

from bench.identity_bench import machine_facts
from bench.report import print_document
from services.gateway.outbox import EVENT, FlushScheduler, Outbox
from services.runtime.config import GatewayConfig

ROOMS = 100
MEMBERS = 10
EVENTS = 200
REPEATS = 3
QUICK = {"rooms": 4, "members": 3, "events": 5}
EVENT_BYTES = 120
GATEWAY = GatewayConfig()  # the gateway's defaults: batch window, byte budgets, frame size
# Between rounds: longer than the batch window, so each round's events go out before the next comes.
ROUND_PAUSE_SECONDS = 0.002
Deliver = Callable[[int, bytes], None]
# CPU seconds, and what the streams' tasks took: frames (outboxes) or events (queues).
Measured = tuple[float, int]
Run = Callable[[int, int, int], Coroutine[Any, Any, Measured]]


async def _rounds(
    deliver: Deliver, end: Callable[[], None], takers: list[asyncio.Task[int]], rooms: int, events: int
) -> Measured:
    """Queues `events` rounds (one event per room each), then ends every stream and waits for its task."""
    started = time.process_time()
    for _ in range(events):
        for room in range(rooms):
            deliver(room, bytes(EVENT_BYTES))  # an event of its own, as each publish makes
            await asyncio.sleep(0)
        await asyncio.sleep(ROUND_PAUSE_SECONDS)
    end()
    taken = sum(await asyncio.gather(*takers))
    return time.process_time() - started, taken


async def outbox_run(rooms: int, members: int, events: int) -> Measured:
    scheduler = FlushScheduler(GATEWAY.batch_window_ms / 1000, GATEWAY.max_outbound_bytes_total)
    outboxes = [
        [Outbox(scheduler, GATEWAY.max_outbound_bytes, GATEWAY.max_frame_bytes) for _ in range(members)]
        for _ in range(rooms)
    ]

    async def writer(outbox: Outbox) -> int:
        written = 0
        while (frames := await outbox.next_frames()) is not None:
            for frame in frames:
                outbox.sent(frame)
            written += len(frames)
        return written

    def deliver(room: int, event: bytes) -> None:
        for outbox in outboxes[room]:
            outbox.put(EVENT, event)

    def end() -> None:
        for room in outboxes:
            for outbox in room:
                outbox.finish()  # what is queued is still taken first

    takers = [asyncio.create_task(writer(outbox)) for room in outboxes for outbox in room]
    return await _rounds(deliver, end, takers, rooms, events)


async def queue_run(rooms: int, members: int, events: int) -> Measured:
    queues: list[list[asyncio.Queue[bytes | None]]] = [[asyncio.Queue() for _ in range(members)] for _ in range(rooms)]

    async def writer(queue: asyncio.Queue[bytes | None]) -> int:
        taken = 0
        while await queue.get() is not None:
            taken += 1
        return taken

    def deliver(room: int, event: bytes) -> None:
        for queue in queues[room]:
            queue.put_nowait(event)

    def end() -> None:
        for room in queues:
            for queue in room:
                queue.put_nowait(None)

    takers = [asyncio.create_task(writer(queue)) for room in queues for queue in room]
    return await _rounds(deliver, end, takers, rooms, events)


def measure(run: Run, rooms: int, members: int, events: int) -> Measured:
    """CPU µs per delivery, and what was taken, on a fresh event loop."""
    gc.collect()
    cpu, taken = asyncio.run(run(rooms, members, events))
    return cpu * 1e6 / (rooms * members * events), taken


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=ROOMS, help="rooms (default %(default)s)")
    parser.add_argument("--members", type=int, default=MEMBERS, help="streams per room (default %(default)s)")
    parser.add_argument("--events", type=int, default=EVENTS, help="events per room (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=REPEATS, help="runs of each, by turns (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a smoke run ({QUICK}, one run each)")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else {"rooms": args.rooms, "members": args.members, "events": args.events}
    repeats = 1 if args.quick else args.repeats
    if min(sizes.values()) < 1 or repeats < 1:
        parser.error("--rooms, --members, --events and --repeats must be at least 1")
    deliveries = sizes["rooms"] * sizes["members"] * sizes["events"]
    runs: dict[str, list[Measured]] = {"outbox": [], "queue": []}
    for turn in range(repeats):
        order = [("outbox", outbox_run), ("queue", queue_run)]
        for name, run in order if turn % 2 == 0 else reversed(order):
            runs[name].append(measure(run, **sizes))
    if any(taken != deliveries for _, taken in runs["queue"]):
        print(f"error: the queues' tasks did not take all {deliveries} events", file=sys.stderr)
        return 1
    cpu = {name: statistics.median(us for us, _ in measured) for name, measured in runs.items()}
    print_document(
        {
            "benchmark": "outbox",
            "machine": machine_facts(),
            "parameters": {
                **sizes,
                "repeats": repeats,
                "event_bytes": EVENT_BYTES,
                "round_pause_seconds": ROUND_PAUSE_SECONDS,
            },
            "deliveries": deliveries,
            "cpu_us_per_delivery": {name: round(us, 2) for name, us in cpu.items()},
            "cpu_us_per_delivery_each": {name: [round(us, 2) for us, _ in measured] for name, measured in runs.items()},
            "outbox_frames_each": [frames for _, frames in runs["outbox"]],
            "outbox_over_queue": round(cpu["outbox"] / cpu["queue"], 2),
        },
        args.out,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
