"""Outbox benchmark: what the gateway's outboxes cost per delivery, against an asyncio.Queue per stream.

    python -m bench.outbox_bench [--rooms R] [--members M] [--events E] [--quick] [--out FILE]

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
counted) per delivery for each, and their ratio. One JSON document on
stdout. Not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from bench.identity_bench import machine_facts
from bench.report import print_document
from services.gateway.outbox import EVENT, FlushScheduler, Outbox

ROOMS = 100
MEMBERS = 10
EVENTS = 200
QUICK = {"rooms": 4, "members": 3, "events": 5}
EVENT_BYTES = 120
# The gateway's defaults (gateway.batch_window_ms, max_outbound_bytes, max_frame_bytes).
BATCH_WINDOW_SECONDS = 0.001
MAX_OUTBOUND_BYTES = 1 << 20
MAX_FRAME_BYTES = 1 << 16
# Between rounds: longer than the batch window, so each round's events go out before the next comes.
ROUND_PAUSE_SECONDS = 0.002
Deliver = Callable[[int, bytes], None]


class Tally:
    """Deliveries taken by the streams' tasks; `all_taken` is set once there are `expected`."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.taken = 0
        self.all_taken = asyncio.Event()

    def take(self) -> None:
        self.taken += 1
        if self.taken == self.expected:
            self.all_taken.set()


async def _rounds(deliver: Deliver, rooms: int, events: int, tally: Tally) -> float:
    """CPU seconds to queue `events` rounds (one event per room each) and see every delivery taken."""
    started = time.process_time()
    for _ in range(events):
        for room in range(rooms):
            deliver(room, bytes(EVENT_BYTES))  # an event of its own, as each publish makes
            await asyncio.sleep(0)
        await asyncio.sleep(ROUND_PAUSE_SECONDS)
    await tally.all_taken.wait()
    return time.process_time() - started


async def outbox_cpu(rooms: int, members: int, events: int) -> float:
    scheduler = FlushScheduler(BATCH_WINDOW_SECONDS)
    outboxes = [[Outbox(scheduler, MAX_OUTBOUND_BYTES, MAX_FRAME_BYTES) for _ in range(members)] for _ in range(rooms)]
    tally = Tally(rooms * members * events)

    async def writer(outbox: Outbox) -> None:
        while (frames := await outbox.next_frames()) is not None:
            for frame in frames:
                tally.take()
                outbox.sent(frame)

    def deliver(room: int, event: bytes) -> None:
        for outbox in outboxes[room]:
            outbox.put(EVENT, event)

    writers = [asyncio.create_task(writer(outbox)) for room in outboxes for outbox in room]
    cpu = await _rounds(deliver, rooms, events, tally)
    for room in outboxes:
        for outbox in room:
            outbox.finish()
    await asyncio.gather(*writers)
    return cpu


async def queue_cpu(rooms: int, members: int, events: int) -> float:
    queues: list[list[asyncio.Queue[bytes | None]]] = [[asyncio.Queue() for _ in range(members)] for _ in range(rooms)]
    tally = Tally(rooms * members * events)

    async def writer(queue: asyncio.Queue[bytes | None]) -> None:
        while await queue.get() is not None:
            tally.take()

    def deliver(room: int, event: bytes) -> None:
        for queue in queues[room]:
            queue.put_nowait(event)

    writers = [asyncio.create_task(writer(queue)) for room in queues for queue in room]
    cpu = await _rounds(deliver, rooms, events, tally)
    for room in queues:
        for queue in room:
            queue.put_nowait(None)
    await asyncio.gather(*writers)
    return cpu


def measure(run: Callable[[int, int, int], Coroutine[Any, Any, float]], rooms: int, members: int, events: int) -> float:
    """CPU µs per delivery, on a fresh event loop."""
    return asyncio.run(run(rooms, members, events)) * 1e6 / (rooms * members * events)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.outbox_bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rooms", type=int, default=ROOMS, help="rooms (default %(default)s)")
    parser.add_argument("--members", type=int, default=MEMBERS, help="streams per room (default %(default)s)")
    parser.add_argument("--events", type=int, default=EVENTS, help="events per room (default %(default)s)")
    parser.add_argument("--quick", action="store_true", help=f"tiny sizes for a smoke run ({QUICK})")
    parser.add_argument("--out", type=Path, help="also write the JSON document to this file")
    args = parser.parse_args()
    sizes = QUICK if args.quick else {"rooms": args.rooms, "members": args.members, "events": args.events}
    if min(sizes.values()) < 1:
        parser.error("--rooms, --members and --events must be at least 1")
    outbox = measure(outbox_cpu, **sizes)
    queue = measure(queue_cpu, **sizes)
    result = {
        "benchmark": "outbox",
        "machine": machine_facts(),
        "parameters": {**sizes, "event_bytes": EVENT_BYTES, "round_pause_seconds": ROUND_PAUSE_SECONDS},
        "deliveries": sizes["rooms"] * sizes["members"] * sizes["events"],
        "cpu_us_per_delivery": {"outbox": round(outbox, 2), "queue": round(queue, 2)},
        "outbox_over_queue": round(outbox / queue, 2),
    }
    print_document(result, args.out)


if __name__ == "__main__":
    main()
