"""The gateway-wide budget on bytes held in outboxes: the furthest behind are cut first."""

from __future__ import annotations

import asyncio
import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.gateway import outbox as kinds
from services.gateway.outbox import FlushScheduler, Outbox, SlowConsumer

PER_CONNECTION = 10_000


def outbox_with(scheduler: FlushScheduler, pending: int, cut: list[Outbox] | None = None) -> Outbox:
    holder: list[Outbox] = []
    made = Outbox(
        scheduler,
        max_bytes=PER_CONNECTION,
        max_frame_bytes=PER_CONNECTION,
        on_overflow=(lambda: cut.append(holder[0])) if cut is not None else None,
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


async def test_the_budget_counts_every_outboxs_pending_bytes() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=1_000)
    first, second = outbox_with(scheduler, 300), outbox_with(scheduler, 200)
    assert scheduler.budget.total_bytes == 500
    second.put(kinds.EVENT, b"y" * 50)  # batched events count as well
    assert scheduler.budget.total_bytes == 550
    assert await first.next_frames() == [b"x" * 300]
    assert scheduler.budget.total_bytes == 250
    assert scheduler.budget.held_bytes() == 250


async def test_past_the_cap_the_outbox_furthest_behind_is_cut() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=700)
    cut: list[Outbox] = []
    behind, middle, ahead = (outbox_with(scheduler, n, cut) for n in (300, 200, 100))
    assert ahead.put(kinds.FRAME, b"z" * 150, urgent=True)
    assert cut == [behind]
    await assert_cut(behind)
    assert (middle.pending_bytes, ahead.pending_bytes) == (200, 250)
    assert scheduler.budget.total_bytes == 450


async def test_consumers_are_cut_until_the_put_fits() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=700)
    cut: list[Outbox] = []
    first, second, third = (outbox_with(scheduler, n, cut) for n in (300, 250, 100))
    fresh = outbox_with(scheduler, 0, cut)
    assert fresh.put(kinds.FRAME, b"n" * 400, urgent=True)
    assert cut == [first, second]
    assert (third.pending_bytes, fresh.pending_bytes) == (100, 400)
    assert scheduler.budget.total_bytes == 500


async def test_the_putter_furthest_behind_cuts_itself() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=700)
    cut: list[Outbox] = []
    behind, other = outbox_with(scheduler, 500, cut), outbox_with(scheduler, 100, cut)
    assert not behind.put(kinds.FRAME, b"x" * 200, urgent=True)
    assert cut == [behind]
    await assert_cut(behind)
    assert other.pending_bytes == 100
    assert scheduler.budget.total_bytes == 100


async def test_a_put_larger_than_the_whole_cap_cuts_only_its_own_outbox() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=700)
    cut: list[Outbox] = []
    other, fresh = outbox_with(scheduler, 600, cut), outbox_with(scheduler, 0, cut)
    assert not fresh.put(kinds.FRAME, b"x" * 800, urgent=True)
    assert cut == [fresh]
    await assert_cut(fresh, why="a single frame is larger than the 700 bytes")
    assert other.pending_bytes == 600


async def test_a_finished_outbox_that_is_cut_ends_as_a_slow_consumer() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=700)
    ending = outbox_with(scheduler, 500)
    ending.finish()  # queued, then a normal end: unless it never reads
    outbox_with(scheduler, 0).put(kinds.FRAME, b"x" * 300, urgent=True)
    await assert_cut(ending)


async def test_outboxes_that_are_gone_stop_counting() -> None:
    scheduler = FlushScheduler(0, max_total_bytes=700)
    cut: list[Outbox] = []
    gone = outbox_with(scheduler, 500)
    kept = outbox_with(scheduler, 100, cut)
    del gone
    gc.collect()
    assert scheduler.budget.held_bytes() == 100
    assert kept.put(kinds.FRAME, b"x" * 400, urgent=True)  # would pass the cap had `gone` still counted
    assert cut == []
    assert scheduler.budget.total_bytes == 500


def test_without_a_cap_nothing_is_cut_for_the_total() -> None:
    scheduler = FlushScheduler(0)
    outboxes = [outbox_with(scheduler, PER_CONNECTION) for _ in range(10)]
    assert scheduler.budget.total_bytes == 10 * PER_CONNECTION
    assert all(o.pending_bytes == PER_CONNECTION for o in outboxes)


steps = st.lists(st.tuples(st.integers(0, 5), st.integers(0, 400), st.booleans()), max_size=60)


@settings(max_examples=150, deadline=None)
@given(st.integers(100, 2_000), steps)
def test_the_total_stays_under_the_cap_and_the_furthest_behind_go_first(
    cap: int, operations: list[tuple[int, int, bool]]
) -> None:
    async def scenario() -> None:
        scheduler = FlushScheduler(0, max_total_bytes=cap)
        cut: list[Outbox] = []
        outboxes = [outbox_with(scheduler, 0, cut) for _ in range(6)]
        for index, size, draining in operations:
            target = outboxes[index]
            if draining:
                if target.pending_bytes:
                    await target.next_frames()
            else:
                before = {o: o.pending_bytes for o in outboxes}
                cut.clear()
                target.put(kinds.FRAME, b"x" * size, urgent=True)
                others_cut = [o for o in cut if o is not target]
                survivors = [o for o in outboxes if o not in cut and o is not target]
                if others_cut and survivors:
                    assert min(before[o] for o in others_cut) >= max(before[o] for o in survivors)
            assert scheduler.budget.total_bytes == sum(o.pending_bytes for o in outboxes)
            assert scheduler.budget.total_bytes <= cap

    asyncio.run(scenario())
