"""The log's sequence invariants, on a real SQLite file."""

from __future__ import annotations

import sqlite3
import tempfile
from pathlib import Path

import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from services.history import store
from services.runtime.sqlite import apply_migrations

# Batches of events; each event may carry an idempotency key from a small pool,
# so retries (same sender and key) happen often.
batches = st.lists(
    st.lists(
        st.tuples(st.sampled_from(["a", "b"]), st.sampled_from(["", "k1", "k2", "k3", "k4"])), min_size=1, max_size=5
    ),
    min_size=1,
    max_size=20,
)


def fresh_db() -> sqlite_utils.Database:
    path = Path(tempfile.mkdtemp()) / "h.sqlite3"
    db = sqlite_utils.Database(sqlite3.connect(path, isolation_level=None))
    apply_migrations(db, store.MIGRATIONS)
    return db


@settings(max_examples=60, deadline=None)
@given(batches)
def test_sequences_are_gap_free_and_retries_return_the_original(plan: list[list[tuple[str, str]]]) -> None:
    db = fresh_db()
    first_seq_of_key: dict[tuple[str, str], int] = {}
    stored = 0
    epochs = set()
    for n, batch in enumerate(plan):
        rows = [
            store.NewEventRow("e", sender, f"h{n}.{i}", b"", idempotency_key=key)
            for i, (sender, key) in enumerate(batch)
        ]
        epoch, appended = store.append(db, "room", rows, now=1000.0 + n, idempotency_window=3600)
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
    seqs = [row.seq for row in store.page_before(db, "room", 0, 10_000)]
    assert seqs == list(range(stored, 0, -1))
    state = store.log_state(db, "room")
    assert state is not None
    assert state.last_seq == stored


def test_an_idempotency_key_expires_with_its_window() -> None:
    db = fresh_db()
    row = store.NewEventRow("e", "s", "h", b"", idempotency_key="k")
    _, first = store.append(db, "room", [row], now=0.0, idempotency_window=10)
    _, retry = store.append(db, "room", [row], now=5.0, idempotency_window=10)
    _, late = store.append(db, "room", [row], now=20.0, idempotency_window=10)
    assert (first[0].seq, retry[0].seq, retry[0].duplicate) == (1, 1, True)
    assert (late[0].seq, late[0].duplicate) == (2, False)
    assert store.prune_idempotency_keys(db, older_than=15.0) == 0
    assert store.prune_idempotency_keys(db, older_than=30.0) == 1


def test_rooms_have_their_own_sequences_and_epochs() -> None:
    db = fresh_db()
    row = store.NewEventRow("e", "s", "h", b"")
    epoch_a, a = store.append(db, "a", [row, row], now=0.0, idempotency_window=0)
    epoch_b, b = store.append(db, "b", [row], now=0.0, idempotency_window=0)
    assert [x.seq for x in a] == [1, 2]
    assert [x.seq for x in b] == [1]
    assert epoch_a != epoch_b


def test_transient_events_hold_their_place_but_are_not_kept() -> None:
    db = fresh_db()
    kept = store.NewEventRow("message", "s", "h1", b"body")
    passing = store.NewEventRow("typing", "s", "h2", b"ignored", transient=True)
    _, appended = store.append(db, "room", [kept, passing, kept], now=0.0, idempotency_window=0)
    assert [a.seq for a in appended] == [1, 2, 3]
    assert [row.seq for row in store.page_before(db, "room", 0, 10)] == [3, 1]
    assert store.page_by_offset(db, "room", 0, 10, event="typing") == []
    assert store.event_by_handle(db, "room", "h2") is None


def _kept(name: str, time_ms: int, keep_last: int = 0, keep_seconds: int = 0) -> store.NewEventRow:
    return store.NewEventRow(
        event=name,
        sender="s",
        handle=f"h{time_ms}",
        body=b"",
        time_ms=time_ms,
        keep_last=keep_last,
        keep_seconds=keep_seconds,
    )


def _seqs(db: sqlite_utils.Database, room: str) -> list[tuple[int, str]]:
    return [(row.seq, row.event) for row in store.since(db, room, 0, 1000)]


def _removed(pruned: list[store.Pruned]) -> int:
    return sum(p.removed for p in pruned)


def test_retention_keeps_the_newest_n_of_each_event_name() -> None:
    db = fresh_db()
    store.append(db, "r", [_kept("msg", t, keep_last=2) for t in range(1, 5)] + [_kept("note", 5)], 10.0, 600)
    store.append(db, "other", [_kept("msg", t, keep_last=3) for t in range(1, 3)], 10.0, 600)
    assert _removed(store.prune(db, now_ms=10_000)) == 2
    assert _seqs(db, "r") == [(3, "msg"), (4, "msg"), (5, "note")]  # "note" has no policy
    assert _seqs(db, "other") == [(1, "msg"), (2, "msg")]  # under its limit
    state = store.log_state(db, "r")
    assert state is not None
    assert (state.pruned_seq, state.last_seq) == (2, 5)
    assert _removed(store.prune(db, now_ms=10_000)) == 0  # nothing more to do


def test_retention_by_age_and_a_policy_that_is_lifted() -> None:
    db = fresh_db()
    store.append(db, "r", [_kept("msg", t * 1000, keep_seconds=5) for t in range(1, 11)], 10.0, 600)
    # At t = 12 s, events older than 7 s (t = 1..6) are past their 5 s.
    assert _removed(store.prune(db, now_ms=12_000)) == 6
    assert [seq for seq, _ in _seqs(db, "r")] == [7, 8, 9, 10]
    store.append(db, "r", [_kept("msg", 11_000)], 10.0, 600)  # the definition no longer limits "msg"
    assert _removed(store.prune(db, now_ms=60_000)) == 0
    assert [seq for seq, _ in _seqs(db, "r")] == [7, 8, 9, 10, 11]


def test_pruning_a_changed_event_counts_its_change_as_pruned() -> None:
    db = fresh_db()
    store.append(db, "r", [_kept("msg", t, keep_last=2) for t in range(1, 4)], 10.0, 600)
    change_seq = store.next_change_seq(db, "r")
    store.replace_body(db, "r", 1, b"", change_seq)  # event 1 deleted or edited: its change is seq 4
    assert _removed(store.prune(db, now_ms=10_000)) == 1
    state = store.log_state(db, "r")
    assert state is not None
    # A client at seq 3 never saw change 4, and it is gone with event 1: its resume is not recovered.
    assert state.pruned_seq == change_seq == 4


def test_a_rooms_retention_is_replaced_whole() -> None:
    db = fresh_db()
    # Recorded at publish time: "msg" by its own definition, "x" and "y" under the room's "*".
    store.append(db, "r", [_kept("msg", 1, keep_last=5), _kept("x", 2, keep_last=1), _kept("y", 3, keep_last=1)], 0, 1)
    store.append(db, "other", [_kept("msg", 1, keep_last=9)], 0, 1)
    # "msg" is now kept for an hour without a count; "*" now keeps 3 of each other name.
    store.set_room_retention(db, "r", {"msg": (0, 3600), "new": (7, 0)}, other=(3, 0))
    assert store.retention_of(db, "r") == {"msg": (0, 3600), "new": (7, 0), "x": (3, 0), "y": (3, 0)}
    # Limits lifted everywhere: nothing is pruned any more.
    store.set_room_retention(db, "r", {"msg": (0, 0)}, other=(0, 0))
    assert store.retention_of(db, "r") == {}
    assert store.retention_of(db, "other") == {"msg": (9, 0)}  # another room's policy is its own
    # "z" was kept under an unlimited "*" (no policy recorded); "*" gains a limit: it applies to "z" too.
    store.append(db, "r", [_kept("z", 4)], 0, 1)
    store.set_room_retention(db, "r", {"msg": (0, 0)}, other=(2, 0))
    assert store.retention_of(db, "r") == {"x": (2, 0), "y": (2, 0), "z": (2, 0)}
    assert store.event_names(db, "r") == {"msg", "x", "y", "z"}
    assert store.event_names(db, "nowhere") == set()
