"""The log's sequence invariants, on each storage backend."""

from __future__ import annotations

import asyncio
import secrets

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.history.storage import EventRow, HistoryStorage, NewEventRow, RoomRetention
from tests.storage_support import append_one, prune_all

pytest_plugins = ["tests.storage_backends"]

# Batches of events; each event may carry an idempotency key from a small pool,
# so retries (same sender and key) happen often.
batches = st.lists(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["", "k1", "k2", "k3", "k4"])), min_size=1, max_size=5
    ),
    min_size=1,
    max_size=20,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(plan=batches)
def test_sequences_are_gap_free_and_retries_return_the_original(
    plan: list[list[tuple[str, str]]], runner: asyncio.Runner, history_on_runner: HistoryStorage
) -> None:
    # One storage for every example, each example its own room.
    runner.run(_check_sequences(history_on_runner, f"room-{secrets.token_hex(4)}", plan))


async def _check_sequences(storage: HistoryStorage, room: str, plan: list[list[tuple[str, str]]]) -> None:
    first_seq_of_key: dict[tuple[str, str], int] = {}
    stored = 0
    epochs = set()
    for n, batch in enumerate(plan):
        rows = [
            NewEventRow("e", sender, f"h{n}.{i}", b"", idempotency_key=key) for i, (sender, key) in enumerate(batch)
        ]
        epoch, appended = await append_one(storage, room, rows, now=1000.0 + n, window=3600)
        epochs.add(epoch)
        for row, result in zip(rows, appended, strict=True):
            identity = (row.sender, row.idempotency_key)
            if row.idempotency_key and identity in first_seq_of_key:
                assert result.duplicate
                assert result.seq == first_seq_of_key[identity]
            else:
                stored += 1
                assert not result.duplicate
                assert result.seq == stored
                if row.idempotency_key:
                    first_seq_of_key[identity] = result.seq
    assert len(epochs) == 1
    page = await storage.page_before(room, 0, 10_000)
    assert [row.seq for row in page.rows] == list(range(stored, 0, -1))
    assert (page.epoch, page.last_seq) == (epochs.pop(), stored)
    state = await storage.log_state(room)
    assert state is not None
    assert state.last_seq == stored


async def test_an_idempotency_key_expires_with_its_window(history_storage: HistoryStorage) -> None:
    row = NewEventRow("e", "s", "h", b"", idempotency_key="k")
    _, first = await append_one(history_storage, "room", [row], now=0.0, window=10)
    _, retry = await append_one(history_storage, "room", [row], now=5.0, window=10)
    _, late = await append_one(history_storage, "room", [row], now=20.0, window=10)
    assert (first[0].seq, retry[0].seq, retry[0].duplicate) == (1, 1, True)
    assert (late[0].seq, late[0].duplicate) == (2, False)
    assert await history_storage.prune_idempotency_keys(older_than=15.0) == 0
    assert await history_storage.prune_idempotency_keys(older_than=30.0) == 1


async def test_rooms_have_their_own_sequences_and_epochs(history_storage: HistoryStorage) -> None:
    row = NewEventRow("e", "s", "h", b"")
    epoch_a, a = await append_one(history_storage, "a", [row, row], now=0.0, window=0)
    epoch_b, b = await append_one(history_storage, "b", [row], now=0.0, window=0)
    assert [x.seq for x in a] == [1, 2]
    assert [x.seq for x in b] == [1]
    assert epoch_a != epoch_b


async def test_transient_events_hold_their_place_but_are_not_kept(history_storage: HistoryStorage) -> None:
    kept = NewEventRow("message", "s", "h1", b"body")
    passing = NewEventRow("typing", "s", "h2", b"ignored", transient=True)
    _, appended = await append_one(history_storage, "room", [kept, passing, kept], now=0.0, window=0)
    assert [a.seq for a in appended] == [1, 2, 3]
    assert [row.seq for row in (await history_storage.page_before("room", 0, 10)).rows] == [3, 1]
    assert (await history_storage.page_by_offset("room", 0, 10, event="typing")).rows == []
    assert await history_storage.event_by_handle("room", "h2") == (None, await _epoch(history_storage))


async def _epoch(storage: HistoryStorage) -> str:
    state = await storage.log_state("room")
    assert state is not None
    return state.epoch


def _kept(name: str, time_ms: int, keep_last: int = 0, keep_seconds: int = 0) -> NewEventRow:
    return NewEventRow(
        event=name,
        sender="s",
        handle=f"h{time_ms}",
        body=b"",
        time_ms=time_ms,
        keep_last=keep_last,
        keep_seconds=keep_seconds,
    )


async def _seqs(storage: HistoryStorage, room: str) -> list[tuple[int, str]]:
    return [(row.seq, row.event) for row in (await storage.since(room, 0, 1000)).events]


async def _removed(storage: HistoryStorage, now_ms: int) -> int:
    return sum(p.removed for p in await prune_all(storage, now_ms))


async def test_retention_keeps_the_newest_n_of_each_event_name(history_storage: HistoryStorage) -> None:
    storage = history_storage
    await append_one(storage, "r", [_kept("msg", t, keep_last=2) for t in range(1, 5)] + [_kept("note", 5)], 10.0, 600)
    await append_one(storage, "other", [_kept("msg", t, keep_last=3) for t in range(1, 3)], 10.0, 600)
    assert await _removed(storage, now_ms=10_000) == 2
    assert await _seqs(storage, "r") == [(3, "msg"), (4, "msg"), (5, "note")]  # "note" has no policy
    assert await _seqs(storage, "other") == [(1, "msg"), (2, "msg")]  # under its limit
    state = await storage.log_state("r")
    assert state is not None
    assert (state.pruned_seq, state.last_seq) == (2, 5)
    assert await _removed(storage, now_ms=10_000) == 0  # nothing more to do


async def test_retention_by_age_and_a_policy_that_is_lifted(history_storage: HistoryStorage) -> None:
    storage = history_storage
    await append_one(storage, "r", [_kept("msg", t * 1000, keep_seconds=5) for t in range(1, 11)], 10.0, 600)
    # At t = 12 s, events older than 7 s (t = 1..6) are past their 5 s.
    assert await _removed(storage, now_ms=12_000) == 6
    assert [seq for seq, _ in await _seqs(storage, "r")] == [7, 8, 9, 10]
    await append_one(storage, "r", [_kept("msg", 11_000)], 10.0, 600)  # the definition no longer limits "msg"
    assert await _removed(storage, now_ms=60_000) == 0
    assert [seq for seq, _ in await _seqs(storage, "r")] == [7, 8, 9, 10, 11]


async def test_pruning_a_changed_event_counts_its_change_as_pruned(history_storage: HistoryStorage) -> None:
    storage = history_storage
    await append_one(storage, "r", [_kept("msg", t, keep_last=2) for t in range(1, 4)], 10.0, 600)

    def emptied(row: EventRow, change_seq: int) -> bytes:
        return b""

    rewritten = await storage.rewrite_event("r", "h1", emptied)  # event 1 deleted or edited: its change is seq 4
    assert rewritten is not None
    assert (rewritten.row.seq, rewritten.change_seq) == (1, 4)
    assert await _removed(storage, now_ms=10_000) == 1
    state = await storage.log_state("r")
    assert state is not None
    # A client at seq 3 never saw change 4, and it is gone with event 1: its resume is not recovered.
    assert state.pruned_seq == rewritten.change_seq == 4


async def test_a_rooms_retention_is_replaced_whole(history_storage: HistoryStorage) -> None:
    storage = history_storage
    # Recorded at publish time: "msg" by its own definition, "x" and "y" under the room's "*".
    await append_one(
        storage, "r", [_kept("msg", 1, keep_last=5), _kept("x", 2, keep_last=1), _kept("y", 3, keep_last=1)], 0, 1
    )
    await append_one(storage, "other", [_kept("msg", 1, keep_last=9)], 0, 1)
    # "msg" is now kept for an hour without a count; "*" now keeps 3 of each other name.
    await storage.set_retention([RoomRetention("r", {"msg": (0, 3600), "new": (7, 0)}, other=(3, 0))])
    assert await storage.retention_of("r") == {"msg": (0, 3600), "new": (7, 0), "x": (3, 0), "y": (3, 0)}
    # Limits lifted everywhere: nothing is pruned any more.
    await storage.set_retention([RoomRetention("r", {"msg": (0, 0)}, other=(0, 0))])
    assert await storage.retention_of("r") == {}
    assert await storage.retention_of("other") == {"msg": (9, 0)}  # another room's policy is its own
    # "z" was kept under an unlimited "*" (no policy recorded); "*" gains a limit: it applies to "z" too.
    await append_one(storage, "r", [_kept("z", 4)], 0, 1)
    await storage.set_retention([RoomRetention("r", {"msg": (0, 0)}, other=(2, 0))])
    assert await storage.retention_of("r") == {"x": (2, 0), "y": (2, 0), "z": (2, 0)}
    assert await storage.event_names("r") == {"msg", "x", "y", "z"}
    assert await storage.event_names("nowhere") == set()
