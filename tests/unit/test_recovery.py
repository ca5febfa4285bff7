"""The recovery rule, the sequencer and paged log reads, on their own."""

from __future__ import annotations

import asyncio
import dataclasses

from hypothesis import given, settings
from hypothesis import strategies as st

from parley.history.v1 import history_pb2
from services.gateway.recovery import (
    EPOCH_CHANGED,
    OVER_CAP,
    PRUNED,
    UNKNOWN_POSITION,
    LogRead,
    ResumePoint,
    read_log,
    stream_recovered,
)
from services.gateway.sequencer import Sequencer
from services.history.servicer import since_page


def complete_read(after: int, last: int, epoch: str = "e1", pruned: int = 0) -> LogRead:
    return LogRead(after_seq=after, epoch=epoch, last_seq=last, through=last, pruned_seq=pruned, pages=1)


# stream_recovered


def test_same_epoch_complete_read_within_the_cap_recovers() -> None:
    assert stream_recovered(ResumePoint("e1", 10), complete_read(10, 60), cap=50) == (True, "")


def test_another_epoch_does_not_recover() -> None:
    assert stream_recovered(ResumePoint("e0", 10), complete_read(10, 20), cap=50) == (False, EPOCH_CHANGED)


def test_a_reader_that_saw_nothing_continues_any_epoch() -> None:
    assert stream_recovered(ResumePoint("", 0), complete_read(0, 5), cap=50) == (True, "")


def test_events_pruned_after_the_resume_point_do_not_recover() -> None:
    assert stream_recovered(ResumePoint("e1", 10), complete_read(10, 20, pruned=11), cap=50) == (False, PRUNED)
    assert stream_recovered(ResumePoint("e1", 10), complete_read(10, 20, pruned=10), cap=50) == (True, "")


def test_more_missed_than_the_cap_does_not_recover() -> None:
    assert stream_recovered(ResumePoint("e1", 10), complete_read(10, 61), cap=50) == (False, OVER_CAP)


def test_a_position_the_log_never_reached_does_not_recover() -> None:
    assert stream_recovered(ResumePoint("e1", 30), complete_read(30, 20), cap=50) == (False, UNKNOWN_POSITION)


def test_an_incomplete_or_broken_read_does_not_recover() -> None:
    incomplete = dataclasses.replace(complete_read(10, 40), through=30)
    broken = dataclasses.replace(complete_read(10, 40), contiguous=False)
    elsewhere = complete_read(5, 40)
    for read in (incomplete, broken, elsewhere):
        assert stream_recovered(ResumePoint("e1", 10), read, cap=50) == (False, OVER_CAP)


# Sequencer


def test_the_sequencer_holds_everything_until_started_then_releases_in_order() -> None:
    sequencer: Sequencer[str] = Sequencer()
    assert sequencer.offer(12, "c") == []
    assert sequencer.offer(11, "b") == []
    assert sequencer.cover(10) == ["b", "c"]
    assert sequencer.offer(14, "e") == []
    assert sequencer.has_gap
    assert sequencer.lowest_waiting == 14
    assert sequencer.offer(13, "d") == ["d", "e"]
    assert sequencer.offer(13, "again") == []
    assert not sequencer.has_gap


def test_covering_a_gap_drops_what_the_read_had_and_releases_the_rest() -> None:
    sequencer: Sequencer[int] = Sequencer()
    sequencer.cover(0)
    for seq in (3, 4, 7):
        sequencer.offer(seq, seq)
    assert sequencer.cover(4) == []
    assert sequencer.cover(6) == [7]
    assert sequencer.released == 7


@given(st.permutations(list(range(1, 40))), st.integers(0, 39))
def test_every_position_is_released_once_in_order_whatever_the_arrival_order(order: list[int], start: int) -> None:
    sequencer: Sequencer[int] = Sequencer()
    released = sequencer.cover(start)
    for seq in order:
        released += sequencer.offer(seq, seq)
        released += sequencer.offer(seq, seq)  # duplicates change nothing
    assert released == list(range(start + 1, 40))


# Paged reads


@dataclasses.dataclass
class FakeLog:
    """A log in memory answering ListEventsSince as the history service does, `page` at a time."""

    page: int
    events: dict[int, history_pb2.LoggedEvent] = dataclasses.field(default_factory=dict)
    last_seq: int = 0

    def append(self, kept: bool) -> None:
        self.last_seq += 1
        if kept:
            self.events[self.last_seq] = history_pb2.LoggedEvent(seq=self.last_seq, event="m")

    def edit(self, seq: int) -> None:
        self.last_seq += 1
        self.events[seq].change_seq = self.last_seq

    async def since(self, room_id: str, after_seq: int, limit: int) -> history_pb2.ListEventsSinceResponse:
        limit = min(limit, self.page)
        rows = [e for s, e in sorted(self.events.items()) if s > after_seq]
        changed = sorted(
            (e for s, e in self.events.items() if s <= after_seq and e.change_seq > after_seq),
            key=lambda e: e.change_seq,
        )
        events, changes, through = since_page(rows[: limit + 1], changed[: limit + 1], self.last_seq, limit)
        return history_pb2.ListEventsSinceResponse(
            events=events, changed=changes, epoch="e1", last_seq=self.last_seq, read_through=through
        )


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.sampled_from(["kept", "transient", "edit"]), min_size=1, max_size=120),
    st.integers(1, 15),
    st.integers(0, 30),
)
def test_a_paged_read_has_every_kept_event_and_change_once(ops: list[str], page: int, resume_at: int) -> None:
    log = FakeLog(page=page)
    for op in ops:
        if op == "edit" and log.events:
            log.edit(min(log.events))
        else:
            log.append(kept=op == "kept")
    after = min(resume_at, log.last_seq)
    read = asyncio.run(read_log(log, "room", after, max_positions=1000))
    assert read.complete
    assert read.contiguous
    assert read.through == log.last_seq
    assert [e.seq for e in read.events] == [s for s in sorted(log.events) if s > after]
    expected_changes = sorted(s for s, e in log.events.items() if s <= after and e.change_seq > after)
    assert sorted(c.seq for c in read.changes) == expected_changes
    assert stream_recovered(ResumePoint("e1", after), read, cap=1000) == (True, "")
