"""The hot buffer mirrors the store: any page it answers equals the same page read from the store (each backend)."""

from __future__ import annotations

import asyncio
import secrets

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.history.hot import HotBuffer, row_size
from services.history.storage import AppendRequest, EventRow, HistoryStorage, LogClosed, NewEventRow, Page
from tests.storage_support import prune_all

pytest_plugins = ["tests.storage_backends"]

ROOMS = ["a", "b"]
NAMES = ["msg", "note", "pin"]


def seqs(page: Page | None) -> list[int]:
    assert page is not None, "memory did not answer"
    return [row.seq for row in page.rows]


class Mirror:
    """A store and a hot buffer changed the way the history service changes them.

    Its rooms are named afresh for each mirror, so mirrors can share one store.
    """

    def __init__(self, storage: HistoryStorage, events_per_name: int, max_bytes: int) -> None:
        self.storage = storage
        self.hot = HotBuffer(events_per_name, max_bytes)
        self.clock = 0
        self.handles = 0
        self._prefix = secrets.token_hex(4)

    def room(self, name: str) -> str:
        return f"{self._prefix}-{name}"

    async def append(self, room: str, events: list[tuple[str, bool, int, int]]) -> None:
        rows = []
        for name, transient, keep_last, keep_seconds in events:
            self.handles += 1
            self.clock += 1000
            body = f"{name}-{self.handles}".encode()
            key = f"k{self.handles % 7}" if keep_seconds else ""  # some are retries of earlier publishes
            rows.append(
                NewEventRow(name, "u", f"h{self.handles}", body, key, transient, self.clock, keep_last, keep_seconds)
            )
        (result,) = await self.storage.append_batch([AppendRequest(self.room(room), rows)], self.clock / 1000, 600)
        assert not isinstance(result, LogClosed)
        self.hot.appended(self.room(room), rows, *result)

    async def edit(self, room: str, pick: int, delete: bool = False) -> None:
        kept = (await self.storage.since(self.room(room), 0, 100_000)).events
        if not kept:
            return
        row = kept[pick % len(kept)]
        body = b"" if delete else row.body + b"!" * 40  # a tombstone shrinks, an edit grows
        rewritten = await self.storage.rewrite_event(self.room(room), row.handle, lambda stored, change_seq: body)
        assert rewritten is not None
        self.hot.changed(self.room(room), rewritten.row, rewritten.change_seq)

    async def prune(self) -> None:
        for each in await prune_all(self.storage, self.clock):
            self.hot.pruned(each.room_id, each.event, each.bound)

    async def load(self, room: str, interrupted_by: list[tuple[str, bool, int, int]] | None = None) -> None:
        if self.hot.begin_load(self.room(room)):
            snapshot = await self.storage.read_snapshot(self.room(room), self.hot.events_per_name)
            if interrupted_by:
                await self.append(room, interrupted_by)  # committed after the read, applied before the install
            self.hot.install(self.room(room), snapshot)

    async def check(self, room: str, before: int, limit: int, event: str, start: int) -> None:
        page = self.hot.page_before(self.room(room), before, limit, event)
        if page is not None:
            assert page == await self.storage.page_before(self.room(room), before, limit, event)
        ranged = self.hot.page_by_offset(self.room(room), start, start + limit, event)
        if ranged is not None:
            assert ranged.rows == (await self.storage.page_by_offset(self.room(room), start, start + limit, event)).rows

    async def since_first(self, room: str) -> EventRow:
        return (await self.storage.since(self.room(room), 0, 1)).events[0]


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


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=operations, events_per_name=st.sampled_from([1, 3, 8]), max_bytes=st.sampled_from([600, 4000, 1 << 20]))
def test_every_page_the_buffer_answers_equals_the_store(
    ops: list[tuple[object, ...]],
    events_per_name: int,
    max_bytes: int,
    runner: asyncio.Runner,
    history_on_runner: HistoryStorage,
) -> None:
    runner.run(_mirror_and_check(Mirror(history_on_runner, events_per_name, max_bytes), ops, max_bytes))


async def _mirror_and_check(mirror: Mirror, ops: list[tuple[object, ...]], max_bytes: int) -> None:
    for op in ops:
        kind, *args = op
        await getattr(mirror, str(kind))(*args)
        assert mirror.hot.bytes_held == mirror.hot.recount() <= max_bytes
    for room in ROOMS:
        for event in ["", *NAMES]:
            for before in (0, 5, 20):
                await mirror.check(room, before, 5, event, start=2)
    for room in ROOMS:  # so later examples, sharing the store, do not prune this one's rooms over and over
        await mirror.storage.drop_log(mirror.room(room), close=False)


async def test_a_loaded_room_answers_its_newest_pages_from_memory(history_storage: HistoryStorage) -> None:
    mirror = Mirror(history_storage, events_per_name=50, max_bytes=1 << 20)
    a = mirror.room("a")
    await mirror.append("a", [("msg", False, 0, 0)] * 30 + [("note", False, 0, 0)] * 5 + [("typing", True, 0, 0)] * 3)
    mirror.hot = HotBuffer(50, 1 << 20)  # as after a restart: nothing held
    assert mirror.hot.page_before(a, 0, 10) is None
    await mirror.load("a")
    page = mirror.hot.page_before(a, 0, 10)
    assert seqs(page) == list(range(35, 25, -1))
    notes = mirror.hot.page_before(a, 0, 10, "note")  # fewer than asked: the room has no more
    assert seqs(notes) == [35, 34, 33, 32, 31]
    assert page is not None
    assert page.last_seq == 38  # transient events took numbers, not rows


async def test_a_name_past_its_capacity_sends_older_pages_to_the_store(history_storage: HistoryStorage) -> None:
    mirror = Mirror(history_storage, events_per_name=3, max_bytes=1 << 20)
    a = mirror.room("a")
    await mirror.append("a", [("msg", False, 0, 0)] * 10)
    newest = mirror.hot.page_before(a, 0, 3)
    assert seqs(newest) == [10, 9, 8]
    assert mirror.hot.page_before(a, 0, 4) is None  # the fourth newest is only in the store
    assert mirror.hot.page_before(a, 8, 2) is None


async def test_pruning_to_the_limit_makes_the_held_rows_all_there_is(history_storage: HistoryStorage) -> None:
    mirror = Mirror(history_storage, events_per_name=100, max_bytes=1 << 20)
    a = mirror.room("a")
    await mirror.append("a", [("msg", False, 3, 0)] * 10)  # keep the newest 3; the buffer holds 3 at once
    assert mirror.hot.page_before(a, 0, 5) is None  # 7 older rows wait for the pruner
    await mirror.prune()
    page = mirror.hot.page_before(a, 0, 5)
    assert seqs(page) == [10, 9, 8]


async def test_a_room_that_changed_while_it_was_read_is_not_installed(history_storage: HistoryStorage) -> None:
    mirror = Mirror(history_storage, events_per_name=10, max_bytes=1 << 20)
    a = mirror.room("a")
    await mirror.append("a", [("msg", False, 0, 0)] * 3)
    mirror.hot = HotBuffer(10, 1 << 20)
    await mirror.load("a", interrupted_by=[("msg", False, 0, 0)])
    assert not mirror.hot.holds(a)
    await mirror.load("a")
    page = mirror.hot.page_before(a, 0, 10)
    assert seqs(page) == [4, 3, 2, 1]


async def test_rooms_are_evicted_least_recently_used_within_the_byte_budget(history_storage: HistoryStorage) -> None:
    mirror = Mirror(history_storage, events_per_name=10, max_bytes=1 << 20)
    await mirror.append("a", [("msg", False, 0, 0)])
    one_room = mirror.hot.bytes_held
    assert one_room >= row_size(await mirror.since_first("a"))
    mirror.hot = HotBuffer(10, max_bytes=2 * one_room + 10)
    for room in ("a", "b", "c"):
        await mirror.append(room, [("msg", False, 0, 0)])
    assert [mirror.hot.holds(mirror.room(room)) for room in ("a", "b", "c")] == [False, True, True]
    mirror.hot.page_before(mirror.room("b"), 0, 1)  # "b" is now the most recently used
    await mirror.append("d", [("msg", False, 0, 0)])
    assert [mirror.hot.holds(mirror.room(room)) for room in ("b", "c", "d")] == [True, False, True]


async def test_turned_off_it_holds_nothing(history_storage: HistoryStorage) -> None:
    mirror = Mirror(history_storage, events_per_name=0, max_bytes=1 << 20)
    await mirror.append("a", [("msg", False, 0, 0)] * 3)
    await mirror.load("a")
    assert not mirror.hot.holds(mirror.room("a"))
    assert mirror.hot.page_before(mirror.room("a"), 0, 1) is None
