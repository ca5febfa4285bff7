"""The hot buffer mirrors the store: any page it answers equals the same page read from SQLite."""

from __future__ import annotations

import sqlite3

import sqlite_utils
from hypothesis import given, settings
from hypothesis import strategies as st

from services.history import store
from services.history.hot import HotBuffer, Page, read_snapshot, row_size
from services.runtime.sqlite import apply_migrations

ROOMS = ["a", "b"]
NAMES = ["msg", "note", "pin"]


def fresh_db() -> sqlite_utils.Database:
    db = sqlite_utils.Database(sqlite3.connect(":memory:", isolation_level=None))
    apply_migrations(db, store.MIGRATIONS)
    return db


def seqs(page: Page | None) -> list[int]:
    assert page is not None, "memory did not answer"
    return [row.seq for row in page.rows]


class Mirror:
    """A store and a hot buffer changed the way the history service changes them."""

    def __init__(self, events_per_name: int, max_bytes: int) -> None:
        self.db = fresh_db()
        self.hot = HotBuffer(events_per_name, max_bytes)
        self.clock = 0
        self.handles = 0

    def append(self, room: str, events: list[tuple[str, bool, int, int]]) -> None:
        rows = []
        for name, transient, keep_last, keep_seconds in events:
            self.handles += 1
            self.clock += 1000
            body = f"{name}-{self.handles}".encode()
            key = f"k{self.handles % 7}" if keep_seconds else ""  # some are retries of earlier publishes
            rows.append(
                store.NewEventRow(
                    name, "u", f"h{self.handles}", body, key, transient, self.clock, keep_last, keep_seconds
                )
            )
        epoch, appended = store.append(self.db, room, rows, self.clock / 1000, 600)
        self.hot.appended(room, rows, epoch, appended)

    def edit(self, room: str, pick: int, delete: bool = False) -> None:
        kept = store.since(self.db, room, 0, 100_000)
        if not kept:
            return
        row = kept[pick % len(kept)]
        change_seq = store.next_change_seq(self.db, room)
        body = b"" if delete else row.body + b"!" * 40  # a tombstone shrinks, an edit grows
        store.replace_body(self.db, room, row.seq, body, change_seq)
        self.hot.changed(room, store.EventRow(row.seq, row.event, row.sender, row.handle, body), change_seq)

    def prune(self) -> None:
        for each in store.prune(self.db, self.clock):
            self.hot.pruned(each.room_id, each.event, each.bound)

    def load(self, room: str, interrupted_by: list[tuple[str, bool, int, int]] | None = None) -> None:
        if self.hot.begin_load(room):
            snapshot = read_snapshot(self.db, room, self.hot.events_per_name)
            if interrupted_by:
                self.append(room, interrupted_by)  # committed after the read, applied before the install
            self.hot.install(room, snapshot)

    def check(self, room: str, before: int, limit: int, event: str, start: int) -> None:
        page = self.hot.page_before(room, before, limit, event)
        if page is not None:
            assert page.rows == store.page_before(self.db, room, before, limit, event)
            state = store.log_state(self.db, room)
            assert state is not None
            assert (page.epoch, page.last_seq) == (state.epoch, state.last_seq)
        ranged = self.hot.page_by_offset(room, start, start + limit, event)
        if ranged is not None:
            assert ranged.rows == store.page_by_offset(self.db, room, start, start + limit, event)


event_specs = st.lists(
    st.tuples(st.sampled_from(NAMES), st.booleans(), st.sampled_from([0, 0, 2, 4]), st.sampled_from([0, 0, 3])),
    max_size=6,
)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("append"), st.sampled_from(ROOMS), event_specs),
        st.tuples(st.just("edit"), st.sampled_from(ROOMS), st.integers(0, 1000), st.booleans()),
        st.tuples(st.just("prune")),
        st.tuples(st.just("load"), st.sampled_from(ROOMS), st.one_of(st.none(), event_specs)),
        st.tuples(
            st.just("check"),
            st.sampled_from(ROOMS),
            st.integers(0, 40),
            st.integers(1, 12),
            st.sampled_from(["", *NAMES]),
            st.integers(0, 8),
        ),
    ),
    max_size=40,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.sampled_from([1, 3, 8]), st.sampled_from([600, 4000, 1 << 20]))
def test_every_page_the_buffer_answers_equals_the_store(
    ops: list[tuple[object, ...]], events_per_name: int, max_bytes: int
) -> None:
    mirror = Mirror(events_per_name, max_bytes)
    for op in ops:
        kind, *args = op
        getattr(mirror, str(kind))(*args)
        assert mirror.hot.bytes_held == mirror.hot.recount() <= max_bytes
    for room in ROOMS:
        for event in ["", *NAMES]:
            for before in (0, 5, 20):
                mirror.check(room, before, 5, event, start=2)


def test_a_loaded_room_answers_its_newest_pages_from_memory() -> None:
    mirror = Mirror(events_per_name=50, max_bytes=1 << 20)
    mirror.append("a", [("msg", False, 0, 0)] * 30 + [("note", False, 0, 0)] * 5 + [("typing", True, 0, 0)] * 3)
    mirror.hot = HotBuffer(50, 1 << 20)  # as after a restart: nothing held
    assert mirror.hot.page_before("a", 0, 10) is None
    mirror.load("a")
    page = mirror.hot.page_before("a", 0, 10)
    assert seqs(page) == list(range(35, 25, -1))
    notes = mirror.hot.page_before("a", 0, 10, "note")  # fewer than asked: the room has no more
    assert seqs(notes) == [35, 34, 33, 32, 31]
    assert page.last_seq == 38  # transient events took numbers, not rows


def test_a_name_past_its_capacity_sends_older_pages_to_the_store() -> None:
    mirror = Mirror(events_per_name=3, max_bytes=1 << 20)
    mirror.append("a", [("msg", False, 0, 0)] * 10)
    newest = mirror.hot.page_before("a", 0, 3)
    assert seqs(newest) == [10, 9, 8]
    assert mirror.hot.page_before("a", 0, 4) is None  # the fourth newest is only in the store
    assert mirror.hot.page_before("a", 8, 2) is None


def test_pruning_to_the_limit_makes_the_held_rows_all_there_is() -> None:
    mirror = Mirror(events_per_name=100, max_bytes=1 << 20)
    mirror.append("a", [("msg", False, 3, 0)] * 10)  # keep the newest 3; the buffer holds 3 at once
    assert mirror.hot.page_before("a", 0, 5) is None  # 7 older rows wait for the pruner
    mirror.prune()
    page = mirror.hot.page_before("a", 0, 5)
    assert seqs(page) == [10, 9, 8]


def test_a_room_that_changed_while_it_was_read_is_not_installed() -> None:
    mirror = Mirror(events_per_name=10, max_bytes=1 << 20)
    mirror.append("a", [("msg", False, 0, 0)] * 3)
    mirror.hot = HotBuffer(10, 1 << 20)
    mirror.load("a", interrupted_by=[("msg", False, 0, 0)])
    assert not mirror.hot.holds("a")
    mirror.load("a")
    page = mirror.hot.page_before("a", 0, 10)
    assert seqs(page) == [4, 3, 2, 1]


def test_rooms_are_evicted_least_recently_used_within_the_byte_budget() -> None:
    mirror = Mirror(events_per_name=10, max_bytes=1 << 20)
    mirror.append("a", [("msg", False, 0, 0)])
    one_room = mirror.hot.bytes_held
    row = store.since(mirror.db, "a", 0, 1)[0]
    assert one_room >= row_size(row)
    mirror.hot = HotBuffer(10, max_bytes=2 * one_room + 10)
    for room in ("a", "b", "c"):
        mirror.append(room, [("msg", False, 0, 0)])
    assert [mirror.hot.holds(room) for room in ("a", "b", "c")] == [False, True, True]
    mirror.hot.page_before("b", 0, 1)  # "b" is now the most recently used
    mirror.append("d", [("msg", False, 0, 0)])
    assert [mirror.hot.holds(room) for room in ("b", "c", "d")] == [True, False, True]


def test_turned_off_it_holds_nothing() -> None:
    mirror = Mirror(events_per_name=0, max_bytes=1 << 20)
    mirror.append("a", [("msg", False, 0, 0)] * 3)
    mirror.load("a")
    assert not mirror.hot.holds("a")
    assert mirror.hot.page_before("a", 0, 1) is None
