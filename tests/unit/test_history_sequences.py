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
    IdempotencyKeyRow,
    LogClosed,
    NewEventRow,
    StoredHistory,
    open_history_storage,
)
from services.history.transient_keys import TransientKeys
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]

WINDOW = 600.0
ROOM = "r"


class CountingStorage:
    """Counts the appends that reach the store (each is a transaction)."""

    def __init__(self, storage: StoredHistory) -> None:
        self.storage = storage
        self.transactions = 0

    async def append_batch(self, requests: list[AppendRequest], now: float, window: float) -> list[Appends | LogClosed]:
        self.transactions += 1
        return await self.storage.append_batch(requests, now, window)

    def __getattr__(self, name: str) -> object:
        return getattr(self.storage, name)


@pytest.fixture
async def store(storage_url: str, tmp_path: Path) -> AsyncIterator[StoredHistory]:
    storage = await open_history_storage(storage_config(tmp_path, storage_url))
    try:
        yield storage
    finally:
        await storage.close()


def _event(n: int, *, transient: bool = True, key: str = "") -> NewEventRow:
    return NewEventRow("msg", "u", f"h{n}", f"body {n}".encode(), idempotency_key=key, transient=transient)


async def _append(
    storage: HistoryStorage, *events: NewEventRow, room: str = ROOM, now: float = 1000.0
) -> tuple[str, list[Appended]]:
    (result,) = await storage.append_batch([AppendRequest(room, list(events))], now, WINDOW)
    assert not isinstance(result, LogClosed)
    return result


def _seqs(placed: list[Appended]) -> list[int]:
    return [p.seq for p in placed]


async def test_transient_events_take_consecutive_numbers_with_one_write_per_block(store: StoredHistory) -> None:
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


async def test_kept_events_idempotent_retries_and_edits_continue_the_same_sequence(store: StoredHistory) -> None:
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


async def test_a_restart_continues_after_the_lost_reservation(store: StoredHistory) -> None:
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


async def test_a_dropped_log_starts_again_from_one_and_a_closed_one_refuses(store: StoredHistory) -> None:
    numbers = ReservedSequences(store, block=10)
    old_epoch, _ = await _append(numbers, _event(1), _event(2))
    await numbers.drop_log(ROOM, close=False)
    epoch, placed = await _append(numbers, _event(3))
    assert epoch != old_epoch
    assert _seqs(placed) == [1]
    await numbers.drop_log(ROOM, close=True)
    (refused,) = await numbers.append_batch([AppendRequest(ROOM, [_event(4)])], 1000.0, WINDOW)
    assert isinstance(refused, LogClosed)


async def test_a_batch_keeps_each_rooms_order_between_memory_and_the_store(store: StoredHistory) -> None:
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
    runner: asyncio.Runner, history_on_runner: StoredHistory, operations: list[str], block: int
) -> None:
    room = f"p{next(PROPERTY_ROOMS)}"

    async def scenario() -> None:
        assert await history_on_runner.log_state(room) is None
        keys = TransientKeys(history_on_runner, write_delay=60.0)
        numbers = ReservedSequences(history_on_runner, block=block, keys=keys)
        given_out: list[int] = []
        kept: list[str] = []
        used = 0
        for n, operation in enumerate(operations):
            if operation == "restart":
                await keys.write()  # a clean stop writes the keys held in memory
                keys = TransientKeys(history_on_runner, write_delay=60.0)
                numbers = ReservedSequences(history_on_runner, block=block, keys=keys)
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
                if used:
                    _, placed = await _append(numbers, _event(n, key=f"k{used}"), room=room)
                    assert placed[0].duplicate
                continue
            if operation == "keyed":
                used += 1
            events = {
                "transient": [_event(n)],
                "transients": [_event(n), _event(n + 10_000)],
                "kept": [_event(n, transient=False)],
                "keyed": [_event(n, key=f"k{used}")],
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


async def test_a_new_rooms_first_appends_in_one_batch_take_consecutive_numbers(store: StoredHistory) -> None:
    numbers = ReservedSequences(store, block=10)
    requests = [AppendRequest(ROOM, [_event(1)]), AppendRequest(ROOM, [_event(2)])]
    results = await numbers.append_batch(requests, 1000.0, WINDOW)
    assert [_seqs(result[1]) for result in results if not isinstance(result, LogClosed)] == [[1], [2]]


async def test_after_a_restart_reads_reach_as_far_as_numbers_may_have_gone(store: StoredHistory) -> None:
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


# Idempotency keys of transient events (services/history/transient_keys.py): checked in memory, written behind.


def _keyed(n: int, *, transient: bool = True) -> NewEventRow:
    return _event(n, key=f"key-{n}", transient=transient)


async def test_keyed_transient_events_take_no_write_each_and_a_retry_gets_the_original(store: StoredHistory) -> None:
    counting = CountingStorage(store)
    keys = TransientKeys(counting, write_delay=60.0)  # type: ignore[arg-type]
    numbers = ReservedSequences(counting, block=100, keys=keys)  # type: ignore[arg-type]
    seqs = []
    for n in range(30):
        seqs += _seqs((await _append(numbers, _keyed(n)))[1])
    assert seqs == list(range(1, 31))
    # Only the first append reached the store (it reserved the block); the rest were numbered here.
    assert counting.transactions == 1
    assert numbers.transactions == 1
    _, retried = await _append(numbers, _event(99, key="key-7"))
    assert retried == [Appended(8, "h7", duplicate=True)]
    _, twice = await _append(numbers, _event(100, key="same"), _event(101, key="same"))
    assert twice == [Appended(31, "h100", duplicate=False), Appended(31, "h100", duplicate=True)]
    assert counting.transactions == 1
    # Nothing but the first key is in the store yet; one write holds the rest.
    assert [row.key for row in await store.recent_keys(ROOM, 0.0, 100)] == ["key-0"]
    await keys.write()
    assert len(await store.recent_keys(ROOM, 0.0, 100)) == 31
    assert numbers.transactions == 2


async def test_keys_are_written_behind_and_a_retry_after_a_restart_is_recognised(store: StoredHistory) -> None:
    numbers = ReservedSequences(store, block=100, keys=TransientKeys(store, write_delay=0.05))
    await _append(numbers, *(_keyed(n) for n in range(5)))
    await _append(numbers, _keyed(5))  # numbered in memory
    for _ in range(100):
        if len(await store.recent_keys(ROOM, 0.0, 100)) == 6:
            break
        await asyncio.sleep(0.02)
    restarted = ReservedSequences(store, block=100, keys=TransientKeys(store, write_delay=60.0))
    _, retried = await _append(restarted, _event(50, key="key-5"))
    assert retried == [Appended(6, "h5", duplicate=True)]
    # Its first new event reads the room's keys once: later retries are answered from memory.
    await _append(restarted, _event(51))
    _, again = await _append(restarted, _event(52, key="key-2"))
    assert again == [Appended(3, "h2", duplicate=True)]
    assert restarted.numbered_in_memory == 1


async def test_a_kept_event_sees_the_key_of_a_transient_one_not_yet_written(store: StoredHistory) -> None:
    numbers = ReservedSequences(store, block=100, keys=TransientKeys(store, write_delay=60.0))
    await _append(numbers, _event(0))
    _, first = await _append(numbers, _event(1, key="k"))
    _, kept = await _append(numbers, _event(2, key="k", transient=False))
    assert kept == [Appended(first[0].seq, "h1", duplicate=True)]


async def test_a_busy_room_is_left_to_the_store_and_its_retries_still_recognised(store: StoredHistory) -> None:
    counting = CountingStorage(store)
    keys = TransientKeys(counting, write_delay=60.0, max_per_room=5)  # type: ignore[arg-type]
    numbers = ReservedSequences(counting, block=100, keys=keys)  # type: ignore[arg-type]
    for n in range(6):
        await _append(numbers, _keyed(n))
    assert counting.transactions == 1
    assert not keys.holds(ROOM)
    for n in range(6, 9):
        await _append(numbers, _keyed(n))
    # Over the limit: each keyed append goes to the store again.
    assert counting.transactions == 4
    for n in (2, 7):
        _, retried = await _append(numbers, _event(100 + n, key=f"key-{n}"))
        assert retried == [Appended(n + 1, f"h{n}", duplicate=True)]


async def test_a_key_older_than_the_window_is_a_new_event(store: StoredHistory) -> None:
    numbers = ReservedSequences(store, block=100, keys=TransientKeys(store, write_delay=60.0))
    await _append(numbers, _event(0))
    await _append(numbers, _event(1, key="k"))
    _, later = await _append(numbers, _event(2, key="k"), now=1000.0 + WINDOW + 1)
    assert later == [Appended(3, "h2", duplicate=False)]


async def test_a_dropped_log_forgets_its_keys(store: StoredHistory) -> None:
    keys = TransientKeys(store, write_delay=60.0)
    numbers = ReservedSequences(store, block=100, keys=keys)
    await _append(numbers, _event(0))
    await _append(numbers, _event(1, key="k"))
    await numbers.drop_log(ROOM, close=False)
    await keys.write()
    _, again = await _append(numbers, _event(2, key="k"))
    assert again == [Appended(1, "h2", duplicate=False)]
    assert await store.recent_keys(ROOM, 0.0, 10) == [IdempotencyKeyRow(ROOM, "u", "k", 1, "h2", 1000.0)]


class FailingOnce:
    """The store, whose next append_batch or recent_keys raises once."""

    def __init__(self, storage: StoredHistory) -> None:
        self.storage = storage
        self.fail_append = False
        self.fail_recent = False

    async def append_batch(self, requests: list[AppendRequest], now: float, window: float) -> list[Appends | LogClosed]:
        if self.fail_append:
            self.fail_append = False
            raise OSError("database is locked")
        return await self.storage.append_batch(requests, now, window)

    async def recent_keys(self, room_id: str, since: float, limit: int) -> list[IdempotencyKeyRow]:
        if self.fail_recent:
            self.fail_recent = False
            raise OSError("connection reset")
        return await self.storage.recent_keys(room_id, since, limit)

    def __getattr__(self, name: str) -> object:
        return getattr(self.storage, name)


async def test_a_failed_batch_takes_its_keys_back_so_the_retry_is_delivered(store: StoredHistory) -> None:
    failing = FailingOnce(store)
    numbers = ReservedSequences(failing, block=100, keys=TransientKeys(failing, write_delay=60.0))  # type: ignore[arg-type]
    await _append(numbers, _event(0))
    # One batch: a key numbered in memory, then a kept event whose store write fails.
    failing.fail_append = True
    requests = [AppendRequest(ROOM, [_event(1, key="k")]), AppendRequest("other", [_event(2, transient=False)])]
    with pytest.raises(OSError, match="locked"):
        await numbers.append_batch(requests, 1000.0, WINDOW)
    _, retried = await _append(numbers, _event(1, key="k"))
    assert not retried[0].duplicate, "nothing was delivered: the retry is the event"


async def test_keys_that_cannot_be_read_leave_the_room_with_the_store_and_the_batch_stands(
    store: StoredHistory,
) -> None:
    failing = FailingOnce(store)
    keys = TransientKeys(failing, write_delay=60.0)  # type: ignore[arg-type]
    numbers = ReservedSequences(failing, block=100, keys=keys)  # type: ignore[arg-type]
    failing.fail_recent = True
    _, first = await _append(numbers, _event(1, key="k"))
    assert first == [Appended(1, "h1", duplicate=False)]
    assert not keys.holds(ROOM)
    _, retried = await _append(numbers, _event(2, key="k"))
    assert retried == [Appended(1, "h1", duplicate=True)]


async def test_a_request_that_takes_a_room_over_its_limit_is_numbered_whole(store: StoredHistory) -> None:
    keys = TransientKeys(store, write_delay=60.0, max_per_room=3)
    numbers = ReservedSequences(store, block=100, keys=keys)
    await _append(numbers, _event(0))
    _, placed = await _append(numbers, *(_keyed(n) for n in range(1, 6)), _event(9, key="key-2"))
    assert placed[-1] == Appended(3, "h2", duplicate=True)
    assert [p.seq for p in placed[:-1]] == [2, 3, 4, 5, 6]
    assert not keys.holds(ROOM)
    # Let go of, the room's retries go to the store, which has every key.
    _, retried = await _append(numbers, _event(10, key="key-4"))
    assert retried == [Appended(5, "h4", duplicate=True)]


async def test_reopening_an_open_log_keeps_the_keys_not_yet_written(store: StoredHistory) -> None:
    numbers = ReservedSequences(store, block=100, keys=TransientKeys(store, write_delay=60.0))
    await _append(numbers, _event(0))
    _, first = await _append(numbers, _event(1, key="k"))
    await numbers.reopen_log(ROOM)
    _, retried = await _append(numbers, _event(2, key="k"))
    assert retried == [Appended(first[0].seq, "h1", duplicate=True)]


async def test_a_clean_stop_writes_the_keys_held_in_memory(storage_url: str, tmp_path: Path) -> None:
    first = await open_history_storage(storage_config(tmp_path, storage_url))
    numbers = ReservedSequences(first, block=100, keys=TransientKeys(first, write_delay=60.0))
    await _append(numbers, _event(0))
    await _append(numbers, _event(1, key="k"))
    await numbers.close()
    again = await open_history_storage(storage_config(tmp_path, storage_url))
    try:
        assert [row.key for row in await again.recent_keys(ROOM, 0.0, 10)] == ["k"]
    finally:
        await again.close()
