"""When held events go (services/gateway/flush_pacing.py): the streams a flush woke are a group until
they have written; what comes for them meanwhile goes together after the writes and a pause as long as
they took; other streams are not held."""

from __future__ import annotations

import pytest

from services.gateway.flush_pacing import MAX_PAUSE_SECONDS, STALL_SECONDS, FlushPacing

WINDOW = 0.001
T = 100.0


def grouped(*streams: str) -> FlushPacing:
    pacing = FlushPacing(WINDOW)
    pacing.flushed(T, streams, held=False)
    return pacing


def test_the_streams_of_a_flush_made_while_no_group_writes_are_the_group() -> None:
    pacing = grouped("a", "b")
    assert pacing.grouping
    assert pacing.holds("a")
    assert pacing.holds("b")
    assert not pacing.holds("c")


def test_streams_flushed_beside_a_writing_group_are_not_held() -> None:
    pacing = grouped("a")
    pacing.flushed(T + 0.001, ["c"], held=False)
    assert pacing.holds("a")
    assert not pacing.holds("c")


def test_held_events_wait_until_every_stream_of_the_group_has_written() -> None:
    pacing = grouped("a", "b")
    assert pacing.held_due(T + 0.002, held=2, held_events=4) == T + STALL_SECONDS
    assert not pacing.written(T + 0.003, "a", held=2, held_events=4)
    assert not pacing.written(T + 0.003, "c", held=2, held_events=4)  # not of the group
    # Progress: the wait for the rest starts again.
    assert pacing.held_due(T + 0.004, held=2, held_events=4) == T + 0.003 + STALL_SECONDS
    assert pacing.written(T + 0.004, "b", held=2, held_events=4)
    # Then a pause as long as the writes took.
    assert pacing.held_due(T + 0.004, held=2, held_events=4) == pytest.approx(T + 0.008)
    assert pacing.holds("a")


def test_the_flush_of_held_events_makes_the_next_group() -> None:
    pacing = grouped("a", "b")
    pacing.written(T + 0.001, "a", held=2, held_events=4)
    pacing.written(T + 0.002, "b", held=2, held_events=4)
    pacing.flushed(T + 0.004, ["b", "c"], held=True)
    assert not pacing.holds("a")
    assert pacing.holds("b")
    assert pacing.holds("c")
    assert pacing.held_due(T + 0.005, held=2, held_events=4) == T + 0.004 + STALL_SECONDS


def test_events_held_for_few_of_the_group_go_once_it_has_written_without_a_pause() -> None:
    pacing = grouped("a", "b", "c")
    pacing.written(T + 0.001, "a", held=1, held_events=2)
    pacing.written(T + 0.002, "b", held=1, held_events=2)
    assert pacing.written(T + 0.004, "c", held=1, held_events=2)
    assert pacing.held_due(T + 0.004, held=1, held_events=2) == T + 0.004


def test_one_event_each_for_the_group_goes_once_it_has_written_without_a_pause() -> None:
    """An event that came early (a quiet room whose last writes were slow) is not held up further."""
    pacing = grouped("a", "b")
    pacing.written(T + 0.002, "a", held=2, held_events=2)
    assert pacing.written(T + 0.004, "b", held=2, held_events=2)
    assert pacing.held_due(T + 0.004, held=2, held_events=2) == T + 0.004


def test_a_group_that_wrote_with_nothing_held_is_no_group_any_more() -> None:
    pacing = grouped("a")
    assert pacing.written(T + 0.005, "a", held=0, held_events=0)
    assert not pacing.grouping
    assert not pacing.holds("a")


def test_the_pause_is_bounded() -> None:
    streams = [str(n) for n in range(1000)]
    pacing = grouped(*streams)
    for n, stream in enumerate(streams):  # a second of writes, each making progress
        pacing.written(T + (n + 1) / 1000, stream, held=1000, held_events=2000)
    assert pacing.held_due(T + 1.0, held=1000, held_events=2000) == pytest.approx(T + 1.0 + MAX_PAUSE_SECONDS)


def test_writes_that_stall_hold_up_the_group_only_for_the_stall() -> None:
    pacing = grouped("reads", "stopped reading")
    pacing.written(T + 0.002, "reads", held=2, held_events=4)
    stalled = T + 0.002 + STALL_SECONDS
    assert pacing.held_due(stalled - 0.0001, held=2, held_events=4) == pytest.approx(stalled)
    # Given up on: the pause counts the writes that made progress.
    assert pacing.held_due(stalled, held=2, held_events=4) == pytest.approx(T + 0.004)
    assert not pacing.written(stalled + 1, "stopped reading", held=2, held_events=4)


def test_a_stream_done_writing_goes_on_its_own_when_events_wait_for_few_of_its_group() -> None:
    pacing = grouped("a", "b", "c", "d")
    pacing.written(T + 0.001, "a", held=1, held_events=2)
    assert pacing.lets_go("a", held=1)
    assert not pacing.lets_go("a", held=2)  # half the group: kept together
    assert not pacing.lets_go("b", held=1)  # still writing
