"""Transient events numbered in memory from reserved blocks (services/history/sequences.py), on both backends:
no write per event, one gap-free sequence with kept events and changes, nothing numbered twice across a restart."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.history.sequences import ReservedSequences
from services.history.storage import (
    Appended,
    AppendRequest,
    Appends,
    EventRow,
    HistoryStorage,
    LogClosed,
    NewEventRow,
    open_history_storage,
)
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]

WINDOW = 600.0
ROOM = "r"


class CountingStorage:
    """Counts the appends that reach the store (each is a transaction)."""

    def __init__(self, storage: HistoryStorage) -> None:
        self.storage = storage
        self.transactions = 0

    async def append_batch(self, requests: list[AppendRequest], now: float, window: float) -> list[Appends | LogClosed]:
        self.transactions += 1
        return await self.storage.append_batch(requests, now, window)

    def __getattr__(self, name: str) -> object:
        return getattr(self.storage, name)


@pytest.fixture
async def store(storage_url: str, tmp_path: Path) -> AsyncIterator[HistoryStorage]:
    storage = await open_history_storage(storage_config(tmp_path, storage_url))
    try:
        yield storage
    finally:
        await storage.close()


def _event(n: int, *, transient: bool = True, key: str = "") -> NewEventRow:
    return NewEventRow("msg", "u", f"h{n}", f"body {n}".encode(), idempotency_key=key, transient=transient)


async def _append(storage: HistoryStorage, *events: NewEventRow, room: str = ROOM) -> tuple[str, list[Appended]]:
    (result,) = await storage.append_batch([AppendRequest(room, list(events))], 1000.0, WINDOW)
    assert not isinstance(result, LogClosed)
    return result


def _seqs(placed: list[Appended]) -> list[int]:
    return [p.seq for p in placed]


async def test_transient_events_take_consecutive_numbers_with_one_write_per_block(store: HistoryStorage) -> None:
    counting = CountingStorage(store)
    numbers = ReservedSequences(counting, block=10)  # type: ignore[arg-type]
    seqs = []
    for n in range(25):
        seqs += _seqs((await _append(numbers, _event(n)))[1])
    assert seqs == list(range(1, 26))
    # The first append reserves 1..11's successors, then every 10 numbers one more reservation.
    assert counting.transactions == 3
    assert numbers.numbered_in_memory == 22
    state = await numbers.log_state(ROOM)
    assert state is not None
    assert state.last_seq == 25
    stored = await store.log_state(ROOM)
    assert stored is not None
    assert stored.handed_out >= 25
    assert stored.last_seq < 25


async def test_kept_events_idempotent_retries_and_edits_continue_the_same_sequence(store: HistoryStorage) -> None:
    numbers = ReservedSequences(store, block=100)
    _, first = await _append(numbers, _event(1), _event(2))
    _, kept = await _append(numbers, _event(3, transient=False))
    _, keyed = await _append(numbers, _event(4, key="k"))
    _, retried = await _append(numbers, _event(5, key="k"))
    _, after = await _append(numbers, _event(6))

    def rewrite(row: EventRow, change_seq: int) -> bytes:
        return row.body + b" edited"

    edited = await numbers.rewrite_event(ROOM, "h3", rewrite)
    _, last = await _append(numbers, _event(7))
    assert _seqs(first) == [1, 2]
    assert _seqs(kept) == [3]
    assert _seqs(keyed) == [4]
    assert retried[0].duplicate
    assert retried[0].seq == 4
    assert _seqs(after) == [5]
    assert edited is not None
    assert edited.change_seq == 6
    assert _seqs(last) == [7]
    page = await numbers.page_before(ROOM, 0, 10)
    assert page.last_seq == 7
    assert [row.seq for row in page.rows] == [3]
    since = await numbers.since(ROOM, 0, 10)
    assert since.state is not None
    assert since.state.last_seq == 7


async def test_a_restart_continues_after_the_lost_reservation(store: HistoryStorage) -> None:
    numbers = ReservedSequences(store, block=50)
    epoch, placed = await _append(numbers, *(_event(n) for n in range(5)))
    assert _seqs(placed) == [1, 2, 3, 4, 5]
    restarted = ReservedSequences(store, block=50)
    state = await restarted.log_state(ROOM)
    assert state is not None
    assert state.epoch == epoch
    # The rest of the block may have been handed out before the restart: never again.
    assert state.handed_out == 55
    again_epoch, again = await _append(restarted, _event(9))
    assert again_epoch == epoch
    assert _seqs(again) == [56]
    _, kept = await _append(ReservedSequences(store), _event(10, transient=False))
    assert _seqs(kept) == [56 + 50 + 1]


async def test_a_dropped_log_starts_again_from_one_and_a_closed_one_refuses(store: HistoryStorage) -> None:
    numbers = ReservedSequences(store, block=10)
    old_epoch, _ = await _append(numbers, _event(1), _event(2))
    await numbers.drop_log(ROOM, close=False)
    epoch, placed = await _append(numbers, _event(3))
    assert epoch != old_epoch
    assert _seqs(placed) == [1]
    await numbers.drop_log(ROOM, close=True)
    (refused,) = await numbers.append_batch([AppendRequest(ROOM, [_event(4)])], 1000.0, WINDOW)
    assert isinstance(refused, LogClosed)


async def test_a_batch_keeps_each_rooms_order_between_memory_and_the_store(store: HistoryStorage) -> None:
    numbers = ReservedSequences(store, block=100)
    await _append(numbers, _event(0))
    requests = [
        AppendRequest(ROOM, [_event(1)]),  # in memory
        AppendRequest(ROOM, [_event(2, transient=False)]),  # to the store
        AppendRequest(ROOM, [_event(3)]),  # after a stored one of its room: to the store too
        AppendRequest("other", [_event(4)]),
    ]
    results = await numbers.append_batch(requests, 1000.0, WINDOW)
    seqs = [_seqs(result[1]) for result in results if not isinstance(result, LogClosed)]
    assert seqs == [[2], [3], [4], [1]]


# The examples of a hypothesis test share one storage: each takes a room never used before.
PROPERTY_ROOMS = itertools.count()

OPERATIONS = st.lists(
    st.sampled_from(["transient", "transients", "kept", "keyed", "retry", "edit", "restart"]), max_size=40
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=OPERATIONS, block=st.integers(min_value=1, max_value=6))
def test_numbers_handed_out_are_unique_and_increasing_whatever_happens(
    runner: asyncio.Runner, history_on_runner: HistoryStorage, operations: list[str], block: int
) -> None:
    room = f"p{next(PROPERTY_ROOMS)}"

    async def scenario() -> None:
        assert await history_on_runner.log_state(room) is None
        numbers = ReservedSequences(history_on_runner, block=block)
        given_out: list[int] = []
        kept: list[str] = []
        keys = 0
        for n, operation in enumerate(operations):
            if operation == "restart":
                numbers = ReservedSequences(history_on_runner, block=block)
                continue
            if operation == "edit":
                if kept:

                    def rewrite(row: EventRow, change_seq: int) -> bytes:
                        return row.body

                    edited = await numbers.rewrite_event(room, kept[-1], rewrite)
                    assert edited is not None
                    given_out.append(edited.change_seq)
                continue
            if operation == "retry":
                if keys:
                    _, placed = await _append(numbers, _event(n, key=f"k{keys}"), room=room)
                    assert placed[0].duplicate
                continue
            if operation == "keyed":
                keys += 1
            events = {
                "transient": [_event(n)],
                "transients": [_event(n), _event(n + 10_000)],
                "kept": [_event(n, transient=False)],
                "keyed": [_event(n, key=f"k{keys}")],
            }[operation]
            _, placed = await _append(numbers, *events, room=room)
            given_out += _seqs(placed)
            if operation == "kept":
                kept.append(f"h{n}")
            state = await numbers.log_state(room)
            assert state is not None
            assert state.last_seq == given_out[-1]
        assert given_out == sorted(set(given_out))

    runner.run(scenario())


async def test_a_new_rooms_first_appends_in_one_batch_take_consecutive_numbers(store: HistoryStorage) -> None:
    numbers = ReservedSequences(store, block=10)
    requests = [AppendRequest(ROOM, [_event(1)]), AppendRequest(ROOM, [_event(2)])]
    results = await numbers.append_batch(requests, 1000.0, WINDOW)
    assert [_seqs(result[1]) for result in results if not isinstance(result, LogClosed)] == [[1], [2]]


async def test_after_a_restart_reads_reach_as_far_as_numbers_may_have_gone(store: HistoryStorage) -> None:
    await _append(ReservedSequences(store, block=50), _event(1))
    restarted = ReservedSequences(store, block=50)
    # Numbers up to 51 may have been handed out before: a read claims them (they read as transient).
    state = await restarted.log_state(ROOM)
    assert state is not None
    assert state.last_seq == 51
    page = await restarted.page_before(ROOM, 0, 10)
    assert page.last_seq == 51
    since = await restarted.since(ROOM, 0, 10)
    assert since.state is not None
    assert since.state.last_seq == 51
