"""When held events go (services/gateway/flush_pacing.py): the streams a flush woke are a group until
they have written and for a pause after; what comes for them meanwhile goes together once no more
comes for a quiet time, or when the pause ends; other streams are not held."""

from __future__ import annotations

import pytest

from services.gateway.flush_pacing import (
    MAX_PAUSE_SECONDS,
    PAUSE_PER_WRITE,
    QUIET_SECONDS,
    QUIET_SHARE,
    STALL_SECONDS,
    FlushPacing,
)

WINDOW = 0.001
T = 100.0


def grouped(*streams: str) -> FlushPacing:
    pacing = FlushPacing(WINDOW)
    pacing.flushed(T, streams, held=False)
    return pacing


def written_by(pacing: FlushPacing, at: float, *streams: str) -> bool:
    """Every one of `streams` wrote at `at`; whether the last of the group did."""
    return [pacing.written(at, stream) for stream in streams][-1]


def test_the_streams_of_a_flush_made_while_no_group_writes_are_the_group() -> None:
    pacing = grouped("a", "b")
    assert pacing.grouping
    assert pacing.holds("a")
    assert pacing.holds("b")
    assert not pacing.holds("c")


def test_streams_flushed_beside_a_writing_group_join_its_next_round() -> None:
    """A busy room's streams are not split into groups that write by turns."""
    pacing = grouped("a")
    pacing.flushed(T + 0.001, ["c"], held=False)
    assert pacing.holds("a")
    assert pacing.holds("c")
    assert pacing.written(T + 0.002, "a")  # this round does not wait for the one that joined
    pause_ends = T + 0.002 + PAUSE_PER_WRITE * 0.002
    pacing.flushed(T + 0.003, ["d"], held=False)  # joins while the group pauses: the pause stays as it was
    assert pacing.holds("d")
    assert pacing.held_due(T + 0.003) <= pause_ends


def test_held_events_wait_until_every_stream_of_the_group_has_written() -> None:
    pacing = grouped("a", "b")
    assert pacing.held_due(T + 0.002) == T + STALL_SECONDS
    assert not pacing.written(T + 0.003, "a")
    assert not pacing.written(T + 0.003, "c")  # not of the group
    # Progress: the wait for the rest starts again.
    assert pacing.held_due(T + 0.004) == T + 0.003 + STALL_SECONDS
    assert pacing.written(T + 0.004, "b")
    # Written: they are looked at at once.
    assert pacing.held_due(T + 0.004) == T + 0.004
    assert pacing.holds("a")


def test_held_events_go_once_no_more_came_for_a_quiet_time() -> None:
    """A lone event that came while the group wrote is not held up long."""
    pacing = grouped("a", "b")
    assert written_by(pacing, T + 0.004, "a", "b")
    assert pacing.still_coming(T + 0.004, held_events=2, first_came=T + 0.003)  # came while they wrote
    assert pacing.held_due(T + 0.004) == pytest.approx(T + 0.004 + QUIET_SECONDS)
    assert not pacing.still_coming(T + 0.004 + QUIET_SECONDS, held_events=2, first_came=T + 0.003)


def test_held_events_wait_while_more_keep_coming_until_the_pause_ends() -> None:
    pacing = grouped("a", "b")
    assert written_by(pacing, T + 0.010, "a", "b")  # the writes took 10 ms
    pause_ends = T + 0.010 + PAUSE_PER_WRITE * 0.010
    now, held = T + 0.010, 2
    while pacing.still_coming(now, held, first_came=T + 0.005):
        now, held = pacing.held_due(now), held + 2
    assert now == pytest.approx(pause_ends)
    assert held > 2 * (PAUSE_PER_WRITE * 0.010) / QUIET_SECONDS  # a look every quiet time


def test_an_event_that_comes_to_a_group_quiet_for_a_while_goes_at_once() -> None:
    """A room at a steady low rate: its readers had the loop since the writes; nothing more is on its way."""
    pacing = grouped("a", "b")
    assert written_by(pacing, T + 0.010, "a", "b")
    quiet = max(QUIET_SECONDS, QUIET_SHARE * 0.010)
    assert not pacing.still_coming(T + 0.010 + quiet, held_events=2, first_came=T + 0.010 + quiet)
    assert pacing.still_coming(T + 0.010 + quiet, held_events=2, first_came=T + 0.010 + quiet / 2)


def test_the_quiet_time_grows_with_the_writes() -> None:
    """After a long round of writes the publishers' next commands are read late: the group waits longer for them."""
    pacing = grouped("a")
    assert pacing.written(T + 0.080, "a")
    assert pacing.still_coming(T + 0.080, held_events=1, first_came=T + 0.050)
    assert pacing.held_due(T + 0.080) == pytest.approx(T + 0.080 + 0.080 * QUIET_SHARE)


def test_the_flush_of_held_events_makes_the_next_group() -> None:
    pacing = grouped("a", "b")
    written_by(pacing, T + 0.002, "a", "b")
    pacing.flushed(T + 0.004, ["b", "c"], held=True)
    assert not pacing.holds("a")
    assert pacing.holds("b")
    assert pacing.holds("c")
    assert pacing.held_due(T + 0.005) == T + 0.004 + STALL_SECONDS


def test_a_group_holds_what_comes_during_its_pause_and_is_no_group_after_it() -> None:
    pacing = grouped("a")
    assert pacing.written(T + 0.005, "a")
    pause_ends = T + 0.005 + PAUSE_PER_WRITE * 0.005
    assert pacing.holds("a")
    pacing.flushed(pause_ends, ["c"], held=False)
    assert pacing.holds("c")  # the pause is over: a new group
    assert not pacing.holds("a")


def test_the_pause_is_bounded() -> None:
    streams = [str(n) for n in range(1000)]
    pacing = grouped(*streams)
    for n, stream in enumerate(streams):  # a second of writes, each making progress
        pacing.written(T + (n + 1) / 1000, stream)
    now = T + 1.0
    while pacing.still_coming(now, int(now * 1e6), first_came=T + 0.5):
        now = pacing.held_due(now)
    assert now == pytest.approx(T + 1.0 + MAX_PAUSE_SECONDS)


def test_writes_that_stall_hold_up_the_group_only_for_the_stall() -> None:
    pacing = grouped("reads", "stopped reading")
    pacing.written(T + 0.002, "reads")
    stalled = T + 0.002 + STALL_SECONDS
    assert pacing.held_due(stalled - 0.0001) == pytest.approx(stalled)
    assert pacing.next_update() == pytest.approx(stalled)
    pacing.update(stalled - 0.0001, holding=True)
    assert pacing.held_due(stalled - 0.0001) == pytest.approx(stalled)  # not yet
    # Given up on: looked at now, and the group's wait so far counts as its writes.
    pacing.update(stalled, holding=True)
    assert pacing.held_due(stalled) == pytest.approx(stalled)
    assert pacing.still_coming(stalled, held_events=2, first_came=T + 0.005)
    assert pacing.held_due(stalled) == pytest.approx(stalled + max(QUIET_SECONDS, QUIET_SHARE * (stalled - T)))
    assert not pacing.written(stalled + 1, "stopped reading")


def test_a_stall_is_given_up_on_while_nothing_is_held_and_the_group_ends_after_its_pause() -> None:
    """A member that stopped reading does not make a later lone event wait: its stall was noticed meanwhile."""
    pacing = grouped("reads", "stopped reading")
    pacing.written(T + 0.002, "reads")
    stalled = T + 0.002 + STALL_SECONDS
    pacing.update(stalled, holding=False)
    pause_ends = stalled + PAUSE_PER_WRITE * (stalled - T)
    assert pacing.next_update() == pytest.approx(pause_ends)
    pacing.update(pause_ends, holding=False)
    assert not pacing.grouping
    assert not pacing.holds("stopped reading")
    assert pacing.next_update() is None


def test_a_round_of_writes_not_yet_seen_done_by_a_busy_loop_still_gets_its_pause() -> None:
    """A loop busy with a thousand writes sees none of them done before the stall is due: the pause after
    counts the whole wait, so the commands that come meanwhile are read before the next round."""
    pacing = grouped(*[str(n) for n in range(1000)])
    busy = T + 0.150  # the first look after the writes, none reported yet
    pacing.update(busy, holding=True)
    assert pacing.held_due(busy) == pytest.approx(busy)
    now, held = busy, 1000
    while pacing.still_coming(now, held, first_came=T + 0.100):
        now, held = pacing.held_due(now), held + 1000
    assert now == pytest.approx(busy + MAX_PAUSE_SECONDS)


# The first look after a round of a thousand writes, none of them seen done yet: given up on as stalled.
STALLED = T + 0.080


def stalled_round(*, holding: bool, seen_done_every: float) -> tuple[FlushPacing, list[tuple[float, str]]]:
    """A round of a thousand writes given up on at STALLED, and when the loop sees each of them done."""
    streams = [str(n) for n in range(1000)]
    pacing = grouped(*streams)
    pacing.update(STALLED, holding=holding)
    return pacing, [(STALLED + n * seen_done_every, stream) for n, stream in enumerate(streams)]


def seen_done(pacing: FlushPacing, completions: list[tuple[float, str]], until: float) -> None:
    while completions and completions[0][0] <= until:
        pacing.written(*completions.pop(0))


def goes_at(pacing: FlushPacing, completions: list[tuple[float, str]], now: float, first_came: float) -> float:
    """When what is held (nothing more coming) goes, looked at as the scheduler looks, from `now` on."""
    while True:
        now = pacing.held_due(now)
        seen_done(pacing, completions, now)
        if not pacing.still_coming(now, held_events=1000, first_came=first_came):
            return now


def test_a_loop_still_seeing_a_stalled_rounds_writes_done_is_not_quiet() -> None:
    """A round of a thousand writes given up on as stalled: the loop goes on seeing them done for a while,
    and the commands sent meanwhile wait behind them (measured: a publisher's next command was handed over
    only then). An event that comes during that time is no lone one after a quiet spell, and what is held
    goes once no write has been seen done for a quiet time, within the pause."""
    # Seen done one every 50 µs, for 50 ms; an event comes 20 ms in, twice the quiet time after the stall.
    pacing, completions = stalled_round(holding=False, seen_done_every=0.00005)
    quiet = QUIET_SHARE * (STALLED - T)
    last_done = completions[-1][0]
    came = STALLED + 0.020
    seen_done(pacing, completions, came)
    assert pacing.held_due(came) <= came
    assert pacing.still_coming(came, held_events=1000, first_came=came)
    went = goes_at(pacing, completions, came, first_came=came)
    assert last_done < went <= last_done + 2 * quiet
    assert went < STALLED + MAX_PAUSE_SECONDS


def test_a_stalled_round_seen_done_slowly_holds_events_until_its_pause_ends_not_longer() -> None:
    pacing, completions = stalled_round(holding=True, seen_done_every=0.001)  # a second of them
    assert goes_at(pacing, completions, STALLED, first_came=STALLED) == pytest.approx(STALLED + MAX_PAUSE_SECONDS)


def test_a_stream_done_writing_goes_on_its_own_when_events_wait_for_few_of_its_group() -> None:
    pacing = grouped("a", "b", "c", "d")
    pacing.written(T + 0.001, "a")
    assert pacing.lets_go("a", held=1)
    assert not pacing.lets_go("a", held=2)  # half the group: kept together
    assert not pacing.lets_go("b", held=1)  # still writing
