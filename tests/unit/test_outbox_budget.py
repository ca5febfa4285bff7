"""The gateway-wide budget on memory held for streams: shared bytes count once, frames count until written,
and past the cap the streams furthest behind are cut first."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway import outbox as kinds
from services.gateway.outbox import ITEM_OVERHEAD_BYTES, FlushScheduler, Outbox, SlowConsumer

PER_CONNECTION = 100_000
ITEM = ITEM_OVERHEAD_BYTES


def outbox_with(scheduler: FlushScheduler, pending: int, cut: list[Outbox] | None = None) -> Outbox:
    holder: list[Outbox] = []
    made = Outbox(
        scheduler,
        max_bytes=PER_CONNECTION,
        max_frame_bytes=PER_CONNECTION,
        on_cut=(lambda: cut.append(holder[0])) if cut is not None else None,
    )
    holder.append(made)
    if pending:
        assert made.put(kinds.FRAME, b"x" * pending, urgent=True)
    return made


async def assert_cut(outbox: Outbox, why: str = "furthest behind when the server's streams together") -> None:
    assert outbox.pending_bytes == 0
    assert not outbox.put(kinds.FRAME, b"x", urgent=True)
    with pytest.raises(SlowConsumer, match=why):
        await outbox.next_frames()


async def drain(outbox: Outbox) -> None:
    """Takes the outbox's frames and writes them, as a stream that reads does."""
    for frame in await outbox.next_frames() or ():
        outbox.sent(frame)


async def test_streams_woken_together_share_the_frame_of_the_same_events() -> None:
    """A room's events go to every member as one frame object: a broadcast costs its bytes once."""
    # Each member's own copy of the frame would pass the cap 200 times over.
    scheduler = FlushScheduler(0, max_total_bytes=250_000)
    cut: list[Outbox] = []
    members = [outbox_with(scheduler, 0, cut) for _ in range(500)]
    events = [b"e" * 40_000, b"f" * 40_000]
    for event in events:
        for member in members:
            assert member.put(kinds.EVENT, event)
    taken = [await member.next_frames() for member in members]
    assert cut == []
    assert all(frames is not None and frames[0] is taken[0][0] for frames in taken)  # type: ignore[index]
    assert scheduler.budget.total_bytes <= 80_100 + 500 * ITEM  # one frame (and its header) for all


async def test_an_event_queued_for_many_streams_counts_once() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=100_000)
    event = b"e" * 5_000
    outboxes = [outbox_with(scheduler, 0) for _ in range(1_000)]
    for outbox in outboxes:
        assert outbox.put(kinds.FRAME, event, urgent=True)
    assert scheduler.budget.total_bytes == 5_000 + 1_000 * ITEM
    assert all(o.pending_bytes == 5_000 for o in outboxes)
    for outbox in outboxes:
        await drain(outbox)
    assert scheduler.budget.total_bytes == 0


async def test_frames_count_until_they_are_written() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=100_000)
    outbox = outbox_with(scheduler, 0)
    outbox.put(kinds.EVENT, b"y" * 50)
    outbox.put(kinds.EVENT, b"z" * 50)
    frames = await outbox.next_frames()
    assert frames is not None
    (frame,) = frames
    # Taken from the queue, not yet written: a reader that stopped still holds it.
    assert outbox.pending_bytes == len(frame)
    assert scheduler.budget.total_bytes == len(frame) + ITEM
    outbox.sent(frame)
    assert (outbox.pending_bytes, scheduler.budget.total_bytes) == (0, 0)


async def test_a_stream_holding_frames_it_never_writes_is_cut_when_more_queues_up() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=7_000)
    cut: list[Outbox] = []
    stalled = outbox_with(scheduler, 5_000, cut)
    assert await stalled.next_frames() == [b"x" * 5_000]  # handed to the stream, never written
    assert stalled.put(kinds.FRAME, b"q" * 1_500, urgent=True)
    fresh = outbox_with(scheduler, 0, cut)
    assert fresh.put(kinds.FRAME, b"n" * 3_000, urgent=True)
    assert cut == [stalled]
    assert stalled.queued_bytes == 0
    # Its unwritten frame cannot be taken back: it counts (past the cap) until its stream ends.
    assert scheduler.budget.total_bytes == 8_000 + 2 * ITEM
    stalled.release()
    assert scheduler.budget.total_bytes == 3_000 + ITEM


async def test_a_frame_at_a_time_is_handed_out() -> None:
    """What a stream that stops reading holds beyond the queue (where a cut frees it) is at most a frame's worth."""
    scheduler = FlushScheduler(0)
    outbox = Outbox(scheduler, max_bytes=100_000, max_frame_bytes=1_000)
    for _ in range(10):
        outbox.put(kinds.EVENT, b"e" * 400)
    frames = await outbox.next_frames()
    assert frames is not None
    assert sum(len(f) for f in frames) <= 1_000 + 16
    assert outbox.queued_bytes == 8 * 400


async def test_past_the_cap_the_outbox_furthest_behind_is_cut() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=7_000)
    cut: list[Outbox] = []
    behind, middle, ahead = (outbox_with(scheduler, n, cut) for n in (3_000, 2_000, 1_000))
    assert ahead.put(kinds.FRAME, b"z" * 1_500, urgent=True)
    assert cut == [behind]
    await assert_cut(behind)
    assert (middle.pending_bytes, ahead.pending_bytes) == (2_000, 2_500)
    assert scheduler.budget.total_bytes == 4_500 + 3 * ITEM


async def test_consumers_are_cut_until_the_put_fits() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=7_000)
    cut: list[Outbox] = []
    first, second, third = (outbox_with(scheduler, n, cut) for n in (3_000, 2_500, 1_000))
    fresh = outbox_with(scheduler, 0, cut)
    assert fresh.put(kinds.FRAME, b"n" * 4_000, urgent=True)
    assert cut == [first, second]
    assert (third.pending_bytes, fresh.pending_bytes) == (1_000, 4_000)
    assert scheduler.budget.total_bytes == 5_000 + 2 * ITEM


async def test_one_search_makes_room_for_a_burst() -> None:
    """Past the cap, enough is cut to get under three quarters of it: the next puts need no search."""
    scheduler = FlushScheduler(0, max_total_bytes=10_000)
    cut: list[Outbox] = []
    stalled = [outbox_with(scheduler, 1_800, cut) for _ in range(5)]
    reader = outbox_with(scheduler, 0, cut)
    assert reader.put(kinds.FRAME, b"r" * 1_000, urgent=True)
    assert len(cut) == 1
    assert scheduler.budget.total_bytes <= 7_500 + 1_000 + ITEM
    for _ in range(2):  # these fit in what the search freed
        assert reader.put(kinds.FRAME, b"r" * 500, urgent=True)
    assert len(cut) == 1
    assert sum(o.pending_bytes for o in stalled) == 4 * 1_800


async def test_the_putter_furthest_behind_cuts_itself() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=7_000)
    cut: list[Outbox] = []
    behind, other = outbox_with(scheduler, 5_000, cut), outbox_with(scheduler, 1_000, cut)
    assert not behind.put(kinds.FRAME, b"x" * 2_000, urgent=True)
    assert cut == [behind]
    await assert_cut(behind)
    assert other.pending_bytes == 1_000
    assert scheduler.budget.total_bytes == 1_000 + ITEM


async def test_a_put_larger_than_the_whole_cap_cuts_only_its_own_outbox() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=7_000)
    cut: list[Outbox] = []
    other, fresh = outbox_with(scheduler, 6_000, cut), outbox_with(scheduler, 0, cut)
    assert not fresh.put(kinds.FRAME, b"x" * 8_000, urgent=True)
    assert cut == [fresh]
    await assert_cut(fresh, why="a single frame is larger than the 7000 bytes")
    assert other.pending_bytes == 6_000


async def test_a_finished_outbox_that_is_cut_ends_as_a_slow_consumer() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=7_000)
    ending = outbox_with(scheduler, 5_000)
    ending.finish()  # queued, then a normal end: unless it never reads
    outbox_with(scheduler, 0).put(kinds.FRAME, b"x" * 3_000, urgent=True)
    await assert_cut(ending)


async def test_a_released_outbox_stops_counting_at_once() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=7_000)
    cut: list[Outbox] = []
    gone = outbox_with(scheduler, 5_000)
    await gone.next_frames()  # and one frame in flight
    kept = outbox_with(scheduler, 1_000, cut)
    gone.release()
    assert scheduler.budget.total_bytes == 1_000 + ITEM
    assert kept.put(kinds.FRAME, b"x" * 4_000, urgent=True)  # would pass the cap had `gone` still counted
    assert cut == []


def test_without_a_cap_nothing_is_cut_for_the_total() -> None:
    scheduler = FlushScheduler(0)
    outboxes = [outbox_with(scheduler, PER_CONNECTION) for _ in range(10)]
    assert scheduler.budget.total_bytes == 10 * (PER_CONNECTION + ITEM)
    assert all(o.pending_bytes == PER_CONNECTION for o in outboxes)


def held_by(outboxes: list[Outbox]) -> int:
    """The memory the outboxes hold, counted from scratch: each distinct bytes object once."""
    held = [data for o in outboxes for _, data in o._items] + [f for o in outboxes for f in o._in_flight]
    return sum(len(data) for data in {id(d): d for d in held}.values()) + len(held) * ITEM


steps = st.lists(
    st.tuples(st.integers(0, 5), st.integers(0, 3_000), st.sampled_from(["put", "share", "take", "write", "end"])),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(st.integers(1_000, 12_000), steps)
def test_the_total_is_exact_stays_under_the_cap_and_the_furthest_behind_go_first(
    cap: int, operations: list[tuple[int, int, str]]
) -> None:
    async def scenario() -> None:
        scheduler = FlushScheduler(0, max_total_bytes=cap)
        cut: list[Outbox] = []
        outboxes = [outbox_with(scheduler, 0, cut) for _ in range(6)]
        shared = b"s" * 700
        taken: dict[int, list[bytes]] = {}
        for index, size, action in operations:
            target = outboxes[index]
            if action == "take" and target.pending_bytes and not taken.get(index):
                taken[index] = await target.next_frames() or []
            elif action == "write":
                for frame in taken.pop(index, []):
                    target.sent(frame)
            elif action == "end":
                target.release()
            elif action in ("put", "share"):
                before = {o: o.queue_cost for o in outboxes}  # what a cut frees: who goes first
                cut.clear()
                target.put(kinds.FRAME, shared if action == "share" else b"x" * size, urgent=True)
                others_cut = [o for o in cut if o is not target]
                survivors = [o for o in outboxes if o not in cut and o is not target]
                if others_cut and survivors:
                    assert min(before[o] for o in others_cut) >= max(before[o] for o in survivors)
            assert scheduler.budget.total_bytes == held_by(outboxes)
            # Frames handed to streams cannot be taken back: only they may pass the cap.
            in_flight = sum(o.in_flight_bytes + ITEM * len(o._in_flight) for o in outboxes)
            assert scheduler.budget.total_bytes - in_flight <= cap

    asyncio.run(scenario())


async def test_failing_an_outbox_at_once_sends_nothing_queued() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=10_000)
    outbox = outbox_with(scheduler, 1_000)
    outbox.fail(SlowConsumer("revoked"), drop_queued=True)
    assert (outbox.pending_bytes, scheduler.budget.total_bytes) == (0, 0)
    with pytest.raises(SlowConsumer, match="revoked"):
        await outbox.next_frames()
