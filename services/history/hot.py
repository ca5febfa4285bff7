"""The hot buffer: each room's newest kept events in memory, per event name.

Pages of recent history are served from here without a database read;
anything older, or a room not held, comes from the store. The buffer is a
mirror, never a source: the history service applies every committed append,
edit, delete and pruning to it after the transaction, in commit order, so a
page from memory equals the same page from the store. Commit order is kept
by `commit_order`: each write holds it from its transaction to its
mirroring here, and so does each snapshot read to start holding a room.
(The mirror sees only this process's writes: one history service per log.)

Each event name keeps its newest `min(history.limit, events_per_name)` rows
and a *floor*: every stored row of that name with seq >= floor is held
(0: every stored row is held). A page is answered from memory only when the
rows it needs lie at or above the floor, or the floor is 0. Rooms are
evicted least recently used once the rows held exceed `max_bytes`.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import heapq
import itertools
import logging
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator

from services.history.storage import Appended, EventRow, NewEventRow, Page, Snapshot

log = logging.getLogger("parley.history")

# What a held room costs beyond its rows, and a row beyond its strings.
ROOM_OVERHEAD = 512
ROW_OVERHEAD = 160


def row_size(row: EventRow) -> int:
    return ROW_OVERHEAD + len(row.body) + len(row.handle) + len(row.event) + len(row.sender)


@dataclasses.dataclass
class _NameRows:
    """One event name's newest rows, oldest first."""

    floor: int
    seqs: list[int] = dataclasses.field(default_factory=list)
    rows: list[EventRow] = dataclasses.field(default_factory=list)
    sizes: list[int] = dataclasses.field(default_factory=list)

    def newest_below(self, before_seq: int, floor: int, limit: int) -> list[EventRow]:
        """Up to `limit` held rows with floor <= seq < before_seq (0: no bound), newest first."""
        high = bisect.bisect_left(self.seqs, before_seq) if before_seq else len(self.seqs)
        low = max(bisect.bisect_left(self.seqs, floor, 0, high), high - limit)
        return self.rows[low:high][::-1]


@dataclasses.dataclass
class _Room:
    epoch: str
    last_seq: int
    # The floor of names without an entry: rows of any name at or above it are held.
    floor: int
    names: dict[str, _NameRows] = dataclasses.field(default_factory=dict)
    size: int = ROOM_OVERHEAD

    def name_rows(self, event: str) -> _NameRows:
        rows = self.names.get(event)
        if rows is None:
            rows = self.names[event] = _NameRows(floor=self.floor)
        return rows

    def cover(self, event: str) -> tuple[list[_NameRows], int]:
        """The names a page reads, and the floor below which the store has rows memory lacks."""
        if event:
            rows = self.names.get(event)
            return ([rows], rows.floor) if rows else ([], self.floor)
        return list(self.names.values()), max([self.floor, *(rows.floor for rows in self.names.values())])


class HotBuffer:
    def __init__(self, events_per_name: int, max_bytes: int) -> None:
        self.events_per_name = events_per_name
        self._max_bytes = max_bytes
        # Held from a write's transaction to its mirroring, and by a snapshot read until its install.
        self.commit_order = asyncio.Lock()
        self._rooms: OrderedDict[str, _Room] = OrderedDict()
        self._bytes = 0
        # Rooms being read for `install`, and whether they changed meanwhile.
        self._loading: dict[str, bool] = {}
        self.hits = 0
        self.misses = 0

    @property
    def enabled(self) -> bool:
        return self.events_per_name > 0 and self._max_bytes > 0

    @property
    def bytes_held(self) -> int:
        return self._bytes

    def holds(self, room_id: str) -> bool:
        return room_id in self._rooms

    # Reads

    def page_before(self, room_id: str, before_seq: int, limit: int, event: str = "") -> Page | None:
        """Like `HistoryStorage.page_before`; None when memory cannot answer it whole."""
        return self._newest(room_id, event, before_seq, limit, skip=0)

    def page_by_offset(self, room_id: str, start: int, end: int, event: str = "") -> Page | None:
        """Like `HistoryStorage.page_by_offset`; None when memory cannot answer it whole."""
        return self._newest(room_id, event, 0, end, skip=start)

    def _newest(self, room_id: str, event: str, before_seq: int, count: int, skip: int) -> Page | None:
        room = self._rooms.get(room_id)
        rows: list[EventRow] = []
        if room is not None:
            self._rooms.move_to_end(room_id)
            names, floor = room.cover(event)
            runs = [n.newest_below(before_seq, floor, count) for n in names]
            rows = list(itertools.islice(_merge_newest_first(runs), count))
        # Sequences start at 1: a floor of 0 or 1 means every stored row is held.
        if room is None or (len(rows) < count and floor > 1):
            self.misses += 1
            return None
        self.hits += 1
        return Page(rows[skip:], room.epoch, room.last_seq)

    # Loading a room that is not held

    def begin_load(self, room_id: str) -> bool:
        """True when the caller should read a snapshot of the room and `install` it."""
        if not self.enabled or room_id in self._rooms or room_id in self._loading:
            return False
        self._loading[room_id] = False
        return True

    def install(self, room_id: str, snapshot: Snapshot | None) -> None:
        """Holds the room as read, unless it changed while it was read (the next miss tries again)."""
        changed = self._loading.pop(room_id, True)
        if snapshot is None or changed or room_id in self._rooms:
            return
        oldest = snapshot.rows[-1].seq if snapshot.rows else 0
        room = _Room(snapshot.state.epoch, snapshot.state.last_seq, floor=0 if snapshot.complete else oldest)
        self._rooms[room_id] = room
        self._bytes += room.size
        for event, rows in _by_name(reversed(snapshot.rows)).items():
            self._extend(room, event, rows, self._capacity(snapshot.keep_last.get(event, 0)))
        self._evict()

    # Changes, applied after their transaction commits, in commit order

    def appended(self, room_id: str, events: list[NewEventRow], epoch: str, appended: list[Appended]) -> None:
        """A committed append of `events`, with its result (retried duplicates change nothing)."""
        new = [(event, a.seq) for event, a in zip(events, appended, strict=True) if not a.duplicate]
        if not new:
            return
        room = self._rooms.get(room_id)
        if room is None:
            if room_id in self._loading:
                self._loading[room_id] = True
                return
            if not self.enabled:
                return
            # A room first seen by an append is held from the append on.
            room = self._rooms[room_id] = _Room(epoch, last_seq=0, floor=new[0][1])
            self._bytes += room.size
        self._rooms.move_to_end(room_id)
        room.epoch = epoch
        room.last_seq = max(room.last_seq, new[-1][1])
        kept = [(event, seq) for event, seq in new if not event.transient]
        keep_last = {event.event: event.keep_last for event, _ in kept}
        rows = (EventRow(seq, event.event, event.sender, event.handle, event.body) for event, seq in kept)
        for name, named in _by_name(rows).items():
            self._extend(room, name, named, self._capacity(keep_last[name]))
        self._evict()

    def changed(self, room_id: str, row: EventRow, change_seq: int) -> None:
        """An edit or delete replaced a stored body; the change took `change_seq`."""
        room = self._rooms.get(room_id)
        if room is None:
            if room_id in self._loading:
                self._loading[room_id] = True
            return
        room.last_seq = max(room.last_seq, change_seq)
        names = room.names.get(row.event)
        if names is None:
            return
        i = bisect.bisect_left(names.seqs, row.seq)
        if i < len(names.seqs) and names.seqs[i] == row.seq:
            size = row_size(row)
            delta = size - names.sizes[i]
            names.rows[i], names.sizes[i] = row, size
            room.size += delta
            self._bytes += delta
            self._evict()

    def apply(self, room_id: str, change: Callable[[], None]) -> None:
        """Applies a committed change; if that fails, stops holding the room rather than serve it wrong."""
        try:
            change()
        except Exception:
            log.exception("the hot buffer could not follow a change; the room is read from the store")
            self.forget(room_id)

    def forget(self, room_id: str) -> None:
        """Stops holding a room (the next read loads it again from the store)."""
        room = self._rooms.pop(room_id, None)
        if room is not None:
            self._bytes -= room.size
        if room_id in self._loading:
            self._loading[room_id] = True

    def recount(self) -> int:
        """The bytes the held rooms take, counted afresh from their rows (a check on `bytes_held`)."""
        return sum(
            ROOM_OVERHEAD + sum(row_size(row) for names in room.names.values() for row in names.rows)
            for room in self._rooms.values()
        )

    def pruned(self, room_id: str, event: str, bound: int) -> None:
        """Retention removed the stored rows of `event` with seq <= bound."""
        room = self._rooms.get(room_id)
        if room is None:
            if room_id in self._loading:
                self._loading[room_id] = True
            return
        names = room.name_rows(event)
        cut = bisect.bisect_right(names.seqs, bound)
        self._drop_oldest(room, names, cut)
        if names.floor <= bound + 1:
            names.floor = 0  # the store has no row of this name that memory lacks

    # Internals

    def _capacity(self, keep_last: int) -> int:
        return min(keep_last, self.events_per_name) if keep_last else self.events_per_name

    def _extend(self, room: _Room, event: str, rows: list[EventRow], capacity: int) -> None:
        """Adds newer rows of one name, keeping its newest `capacity`."""
        names = room.name_rows(event)
        dropped = len(rows) > capacity
        if dropped:
            rows = rows[-capacity:]
        sizes = [row_size(row) for row in rows]
        names.rows += rows
        names.seqs += [row.seq for row in rows]
        names.sizes += sizes
        added = sum(sizes)
        room.size += added
        self._bytes += added
        if len(names.rows) > capacity:
            self._drop_oldest(room, names, len(names.rows) - capacity)
            dropped = True
        if dropped:
            names.floor = names.seqs[0]  # what went is still stored, below the held rows

    def _drop_oldest(self, room: _Room, names: _NameRows, count: int) -> None:
        if count <= 0:
            return
        size = sum(names.sizes[:count])
        del names.rows[:count], names.seqs[:count], names.sizes[:count]
        room.size -= size
        self._bytes -= size

    def _evict(self) -> None:
        while self._bytes > self._max_bytes and self._rooms:
            _, room = self._rooms.popitem(last=False)
            self._bytes -= room.size


def _by_name(rows: Iterable[EventRow]) -> dict[str, list[EventRow]]:
    grouped: dict[str, list[EventRow]] = {}
    for row in rows:
        grouped.setdefault(row.event, []).append(row)
    return grouped


def _merge_newest_first(runs: list[list[EventRow]]) -> Iterator[EventRow]:
    if len(runs) == 1:
        return iter(runs[0])
    return heapq.merge(*runs, key=lambda row: row.seq, reverse=True)
