"""An outbox's waiting: the stream that waits for frames, producers that wait for room, and what an idle one holds."""

from __future__ import annotations

import asyncio
import tracemalloc

from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.outbox import FlushScheduler, Outbox

IDLE_STREAMS = 200
# What outbox.py may allocate for one idle stream (an Outbox, an empty list, the future its reader waits on):
# an empty deque alone is 760 bytes, an asyncio.Event about as much.
IDLE_BYTES_PER_STREAM = 400


async def test_a_waiting_stream_is_woken_by_a_put_after_an_earlier_wait_was_cancelled() -> None:
    outbox = Outbox(FlushScheduler(0), max_bytes=1000, max_frame_bytes=1000)
    abandoned = asyncio.create_task(outbox.next_frames())
    await asyncio.sleep(0)
    abandoned.cancel()
    await asyncio.gather(abandoned, return_exceptions=True)
    waiting = asyncio.create_task(outbox.next_frames())
    await asyncio.sleep(0)
    assert not waiting.done()
    item = wire.batch_item(b"event")
    outbox.put(kinds.EVENT, item)  # woken by the scheduler's flush, not at once
    assert await asyncio.wait_for(waiting, 1) == [wire.events_frame([item])]


async def test_every_producer_waiting_for_room_goes_on_once_the_reader_takes_the_queue() -> None:
    outbox = Outbox(FlushScheduler(0), max_bytes=10, max_frame_bytes=10)
    outbox.put(kinds.FRAME, b"x" * 8, urgent=True)
    producers = [asyncio.create_task(outbox.room_for(5)) for _ in range(2)]
    await asyncio.sleep(0)
    assert not any(p.done() for p in producers)
    assert await outbox.next_frames() == [b"x" * 8]
    await asyncio.wait_for(asyncio.gather(*producers), 1)


async def test_a_stream_waiting_on_a_finished_outbox_ends() -> None:
    outbox = Outbox(FlushScheduler(0), max_bytes=1000, max_frame_bytes=1000)
    waiting = asyncio.create_task(outbox.next_frames())
    await asyncio.sleep(0)
    outbox.finish()
    assert await asyncio.wait_for(waiting, 1) is None


async def test_an_idle_stream_holds_little() -> None:
    scheduler = FlushScheduler(0)
    tracemalloc.start(8)
    try:
        before = tracemalloc.take_snapshot()
        outboxes = [Outbox(scheduler, max_bytes=1000, max_frame_bytes=1000) for _ in range(IDLE_STREAMS)]
        for outbox in outboxes:  # each sent a frame once, as every stream sends its Welcome
            outbox.put(kinds.FRAME, b"welcome", urgent=True)
            for frame in await outbox.next_frames() or ():
                outbox.sent(frame)
        readers = [asyncio.create_task(outbox.next_frames()) for outbox in outboxes]
        await asyncio.sleep(0)
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    mine = [tracemalloc.Filter(True, kinds.__file__, all_frames=True)]
    grown = sum(stat.size_diff for stat in after.filter_traces(mine).compare_to(before.filter_traces(mine), "lineno"))
    assert grown < IDLE_STREAMS * IDLE_BYTES_PER_STREAM
    for outbox in outboxes:
        outbox.finish()
    assert await asyncio.gather(*readers) == [None] * IDLE_STREAMS
