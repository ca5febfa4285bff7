"""Outboxes under load (services/gateway/outbox.py with flush_pacing.py): events that come while the
streams write the last flush wait for the next one and share a frame; replies go at once, in order."""

from __future__ import annotations

import asyncio

import pytest

from services.gateway import flush_pacing, wire
from services.gateway import outbox as kinds
from services.gateway.outbox import FlushScheduler, Outbox

WINDOW = 0.001


def make_outbox(scheduler: FlushScheduler) -> Outbox:
    return Outbox(scheduler, max_bytes=1_000_000, max_frame_bytes=1_000_000)


def event(n: int) -> bytes:
    return wire.batch_item(f"event {n}".encode())


def fixed(n: int) -> bytes:
    """An event whose encoding is as long as every other's: a frame's count is its length over this one's."""
    return wire.batch_item(f"event {n:08d}".encode())


@pytest.fixture(autouse=True)
def patient_stall(monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes are never given up on here (unless a test says so): what is tested is the order of things."""
    monkeypatch.setattr(flush_pacing, "STALL_SECONDS", 60.0)


async def test_events_that_come_while_the_stream_writes_wait_for_the_next_flush_and_share_a_frame() -> None:
    outbox = make_outbox(FlushScheduler(WINDOW))
    outbox.put(kinds.EVENT, event(0))
    [first] = await asyncio.wait_for(outbox.next_frames(), 1) or []
    for n in range(1, 5):
        outbox.put(kinds.EVENT, event(n))
    following = asyncio.create_task(outbox.next_frames())
    await asyncio.sleep(10 * WINDOW)
    assert not following.done()  # the first frame is not written yet
    outbox.sent(first)
    assert await asyncio.wait_for(following, 1) == [wire.events_frame([event(n) for n in range(1, 5)])]


async def test_a_flush_waits_for_the_slowest_stream_of_the_last_one() -> None:
    scheduler = FlushScheduler(WINDOW)
    outboxes = [make_outbox(scheduler) for _ in range(3)]
    readers = [asyncio.create_task(o.next_frames()) for o in outboxes]
    await asyncio.sleep(0)
    for o in outboxes:
        o.put(kinds.EVENT, event(0))
    written = [frames for frames in await asyncio.wait_for(asyncio.gather(*readers), 1) if frames]
    assert len(written) == 3
    later = [event(n) for n in range(1, 4)]
    for item in later:  # a room's event: one item for every member
        for o in outboxes:
            o.put(kinds.EVENT, item)
    for o, taken in zip(outboxes[:2], written[:2], strict=True):
        o.sent(taken[0])
    following = [asyncio.create_task(o.next_frames()) for o in outboxes[:2]]
    await asyncio.sleep(10 * WINDOW)
    assert not any(f.done() for f in following)
    outboxes[2].sent(written[2][0])
    following.append(asyncio.create_task(outboxes[2].next_frames()))
    frames = await asyncio.wait_for(asyncio.gather(*following), 1)
    assert frames == [[wire.events_frame(later)]] * 3
    assert len({id(f[0]) for f in frames if f}) == 1  # built once for all


async def test_an_event_for_few_streams_of_a_group_goes_to_each_once_it_has_written() -> None:
    """Rooms flushed together are no convoy: one room's next event does not wait for the other rooms' writes."""
    scheduler = FlushScheduler(WINDOW)
    outboxes = [make_outbox(scheduler) for _ in range(4)]
    readers = [asyncio.create_task(o.next_frames()) for o in outboxes]
    await asyncio.sleep(0)
    for o in outboxes:
        o.put(kinds.EVENT, event(0))
    written = await asyncio.wait_for(asyncio.gather(*readers), 1)
    quick = outboxes[0]
    quick.sent(written[0][0])  # type: ignore[index]
    quick.put(kinds.EVENT, event(1))  # the other three are still writing
    assert await asyncio.wait_for(quick.next_frames(), 1) == [wire.events_frame([event(1)])]


async def test_a_stream_that_stops_writing_holds_up_the_others_only_for_the_stall(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(flush_pacing, "STALL_SECONDS", 0.02)
    scheduler = FlushScheduler(WINDOW)
    stuck, reading = make_outbox(scheduler), make_outbox(scheduler)
    waiting = [asyncio.create_task(o.next_frames()) for o in (stuck, reading)]
    await asyncio.sleep(0)
    stuck.put(kinds.EVENT, event(0))
    reading.put(kinds.EVENT, event(0))
    _, [frame] = await asyncio.wait_for(asyncio.gather(*waiting), 1)  # type: ignore[misc]
    reading.sent(frame)  # `stuck` never writes its frame
    for n in (1, 2):
        reading.put(kinds.EVENT, event(n))
        assert await asyncio.wait_for(reading.next_frames(), 1) == [wire.events_frame([event(n)])]
        reading.sent(wire.events_frame([event(n)]))


async def test_a_reply_takes_what_was_queued_before_it_at_once_in_order() -> None:
    outbox = make_outbox(FlushScheduler(60.0))  # no flush during this test
    outbox.put(kinds.EVENT, event(1))
    reply = wire.batch_item(b"reply")
    outbox.put(kinds.REPLY, reply, urgent=True)
    frames = await asyncio.wait_for(outbox.next_frames(), 1)
    assert frames == [wire.events_frame([event(1)]), wire.replies_frame([reply])]


async def test_a_stream_told_to_finish_sends_what_is_queued_without_waiting_for_a_flush() -> None:
    outbox = make_outbox(FlushScheduler(60.0))
    outbox.put(kinds.EVENT, event(1))
    outbox.finish()
    assert await asyncio.wait_for(outbox.next_frames(), 1) == [wire.events_frame([event(1)])]
    assert await asyncio.wait_for(outbox.next_frames(), 1) is None


async def test_a_stream_outside_a_busy_group_keeps_the_batch_window() -> None:
    """A group that holds its events for a long pause does not hold up a stream that is not in it."""
    scheduler = FlushScheduler(WINDOW)
    group = [make_outbox(scheduler) for _ in range(3)]
    readers = [asyncio.create_task(o.next_frames()) for o in group]
    await asyncio.sleep(0)
    for o in group:
        o.put(kinds.EVENT, event(0))
    written = await asyncio.wait_for(asyncio.gather(*readers), 1)
    for n in range(1, 20):  # much comes while the group writes: held, for a pause when it is done
        for o in group:
            o.put(kinds.EVENT, event(n))
    await asyncio.sleep(0.08)  # the writes take 80 ms: the pause after them is as long
    for o, taken in zip(group, written, strict=True):
        o.sent(taken[0])  # type: ignore[index]
    outside = make_outbox(scheduler)
    reader = asyncio.create_task(outside.next_frames())
    await asyncio.sleep(0)
    started = asyncio.get_running_loop().time()
    outside.put(kinds.EVENT, event(99))
    assert await asyncio.wait_for(reader, 1) == [wire.events_frame([event(99)])]
    assert asyncio.get_running_loop().time() - started < 0.02, "the window, not the group's pause"


async def test_streams_flushed_beside_a_busy_room_do_not_prolong_its_hold() -> None:
    """Other rooms' streams flushed while a busy room's group pauses join it for its next round; they do not
    start the pause again (each used to: a room's events waited for seconds while other rooms were busy)."""
    loop = asyncio.get_running_loop()
    scheduler = FlushScheduler(WINDOW)
    room = [make_outbox(scheduler) for _ in range(100)]
    others = [make_outbox(scheduler) for _ in range(100)]
    sent_at: list[float] = []
    worst = 0.0

    async def write(outbox: Outbox, watched: bool) -> None:
        nonlocal worst
        got = 0
        while (frames := await outbox.next_frames()) is not None:
            if watched:  # the oldest event of these frames waited longest
                worst = max(worst, loop.time() - sent_at[got])
                got += sum(len(wire.frame_body(frame)) // len(fixed(0)) for frame in frames)
            await asyncio.sleep(0)  # the write
            for frame in frames:
                outbox.sent(frame)

    writers = [asyncio.create_task(write(o, n == 0)) for n, o in enumerate(room)]
    writers += [asyncio.create_task(write(o, False)) for o in others]
    end = loop.time() + 1.0
    for n in range(10**6):
        if loop.time() >= end:
            break
        sent_at.append(loop.time())
        for o in room:
            o.put(kinds.EVENT, fixed(n))
        if not n % 10:
            others[n // 10 % len(others)].put(kinds.EVENT, fixed(n))  # another room's event, now and then
        await asyncio.sleep(0.002)
    await asyncio.sleep(0.3)
    for writer in writers:
        writer.cancel()
    await asyncio.gather(*writers, return_exceptions=True)
    # Seconds when each joining stream restarted the pause; a loaded machine (the whole suite on two cores)
    # adds a few tenths to a round of 200 writes on a real loop (0.34 s seen once), so the margin is 0.4 s.
    assert worst < flush_pacing.MAX_PAUSE_SECONDS + 0.4


async def test_after_a_quiet_spell_a_member_that_stopped_reading_does_not_hold_up_a_lone_event(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stall of a member that stopped reading is noticed while the gateway is quiet, not counted as
    writing time when the next event comes (it used to wait the whole pause)."""
    monkeypatch.setattr(flush_pacing, "STALL_SECONDS", 0.02)
    loop = asyncio.get_running_loop()
    scheduler = FlushScheduler(WINDOW)
    reading = [make_outbox(scheduler) for _ in range(3)]
    stuck = make_outbox(scheduler)
    arrived: list[float] = []
    all_arrived = asyncio.Event()

    async def write(outbox: Outbox) -> None:
        while (frames := await outbox.next_frames()) is not None:
            arrived.append(loop.time())
            if len(arrived) == len(reading):
                all_arrived.set()
            for frame in frames:
                outbox.sent(frame)

    writers = [asyncio.create_task(write(o)) for o in reading]
    taken = asyncio.create_task(stuck.next_frames())  # takes its frame and never gets it written
    for o in [*reading, stuck]:
        o.put(kinds.EVENT, event(0))
    await asyncio.sleep(0.5)
    arrived.clear()
    all_arrived.clear()
    sent = loop.time()
    for o in [*reading, stuck]:
        o.put(kinds.EVENT, event(1))
    await asyncio.wait_for(all_arrived.wait(), 1)
    for task in [*writers, taken]:
        task.cancel()
    await asyncio.gather(*writers, taken, return_exceptions=True)
    assert max(arrived) - sent < flush_pacing.MAX_PAUSE_SECONDS / 2
