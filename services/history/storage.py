"""Where the history service keeps per-room logs: the protocol, its rows, and the implementation `storage.url` names.

A room's log numbers every write: each event takes the next sequence, and so
does each edit or delete (its change sequence). Only kept events get a row,
so a number without a row was a transient event. The counter is one row per
room, updated in the transaction that writes, so sequences stay gap-free
however many writers there are. A writer that numbers transient events
itself (services/history/sequences.py) first reserves a block of numbers
(`reserved_seq`); a write that does not say where the log stands continues
after the reservation too, so no number handed out is ever handed out again,
whatever was lost with the writer. Retention removes old rows and raises the
log's `pruned_seq`; dropping a log erases it (a new epoch follows), and a
closed log (its room was deleted) refuses writes until it is reopened.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from services.runtime.config import Config


@dataclasses.dataclass(frozen=True)
class LogStateRow:
    room_id: str
    epoch: str
    last_seq: int
    created_at: float
    # The largest sequence retention removed.
    pruned_seq: int = 0
    # Numbers up to here may have been handed out to transient events without a write.
    reserved_seq: int = 0

    @property
    def handed_out(self) -> int:
        """The largest number this log may have given anyone."""
        return max(self.last_seq, self.reserved_seq)


@dataclasses.dataclass(frozen=True)
class EventRow:
    """An event as stored: routing columns, and the encoded body served as it is."""

    seq: int
    event: str
    sender: str
    handle: str
    body: bytes


@dataclasses.dataclass(frozen=True)
class NewEventRow:
    event: str
    sender: str
    handle: str
    body: bytes
    idempotency_key: str = ""
    # Takes a sequence number but keeps nothing (body ignored): no row is
    # written, so a sequence without a row is a transient event.
    transient: bool = False
    time_ms: int = 0
    # Retention of this event name in this room (0: no limit).
    keep_last: int = 0
    keep_seconds: int = 0


@dataclasses.dataclass(frozen=True)
class AppendRequest:
    """One caller's events for one room; a batch holds many."""

    room_id: str
    events: list[NewEventRow]
    # Where the caller knows the log stands (None: it does not, and numbering continues
    # after every number the log may have handed out, `LogStateRow.handed_out`).
    after_seq: int | None = None
    # Reserve this many numbers after the request's last one (`reserved_seq`).
    reserve: int = 0


@dataclasses.dataclass(frozen=True)
class Appended:
    seq: int
    handle: str
    duplicate: bool


@dataclasses.dataclass(frozen=True, slots=True)
class IdempotencyKeyRow:
    """Where an event with an idempotency key went: a retry from its sender within the window gets it back."""

    room_id: str
    sender: str
    key: str
    seq: int
    handle: str
    created_at: float


def numbered_after(state: LogStateRow, after_seq: int | None) -> int:
    """The number a write's first sequence follows (see `AppendRequest.after_seq`)."""
    return state.handed_out if after_seq is None else max(state.last_seq, after_seq)


# A request's result: the log's epoch, and where each of its events went.
Appends = tuple[str, list[Appended]]


class LogClosed(Exception):
    """The room's log is closed (its room was deleted): nothing is appended or changed."""

    def __init__(self, room_id: str) -> None:
        super().__init__(f"the log of {room_id!r} is closed")
        self.room_id = room_id


@dataclasses.dataclass(frozen=True)
class RoomRetention:
    """A room's policies: (keep_last, keep_seconds) per event name, and `other` for names recorded but not named."""

    room_id: str
    named: dict[str, tuple[int, int]]
    other: tuple[int, int]


@dataclasses.dataclass(frozen=True)
class Pruned:
    """Retention removed the room's events of this name with seq <= bound."""

    room_id: str
    event: str
    bound: int
    removed: int


@dataclasses.dataclass(frozen=True)
class Rewritten:
    """An event changed in place: its row as now stored, and the change's own sequence."""

    row: EventRow
    epoch: str
    change_seq: int


@dataclasses.dataclass(frozen=True)
class Page:
    """Rows of a log, with the log's epoch and last sequence when they were read."""

    rows: list[EventRow]
    epoch: str
    last_seq: int
    # The log's reservation (see LogStateRow.reserved_seq).
    reserved_seq: int = 0


@dataclasses.dataclass(frozen=True)
class Since:
    """What followed a position: kept events after it, and events at or before it changed after it."""

    events: list[EventRow]
    changed: list[EventRow]
    state: LogStateRow | None


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """A room as read from the store for the hot buffer to start holding it."""

    state: LogStateRow
    # The room's newest rows, newest first, and whether they are all it has.
    rows: list[EventRow]
    complete: bool
    # keep_last per event name, from the retention policies.
    keep_last: dict[str, int]


class HistoryStorage(Protocol):
    async def log_state(self, room_id: str) -> LogStateRow | None:
        """The room's log state; None for a log never started (or dropped, or closed)."""

    async def append_batch(
        self, requests: Sequence[AppendRequest], now: float, idempotency_window: float
    ) -> list[Appends | LogClosed]:
        """Appends every request in one transaction, in order, each result in its place.

        Events take consecutive sequences, after max(last_seq, after_seq) (after
        `handed_out` without after_seq); a kept event with an idempotency key
        seen from its sender within the window returns the original instead.
        A closed log refuses its request (LogClosed in its place, nothing
        written for it); the others go on.
        """

    async def set_retention(self, rooms: Sequence[RoomRetention]) -> None:
        """Replaces each room's policies whole (a closed log keeps none)."""

    async def retention_of(self, room_id: str) -> dict[str, tuple[int, int]]:
        """The room's recorded policies: (keep_last, keep_seconds) per event name."""

    async def event_names(self, room_id: str) -> set[str]:
        """The distinct event names in the room's log."""

    async def drop_log(self, room_id: str, close: bool) -> int:
        """Erases the room's log (events, idempotency keys, retention, epoch); returns the events erased.

        Without `close` (and if it was closed, from now on) the next append
        starts a new log under a new epoch; with it, appends raise LogClosed.
        """

    async def reopen_log(self, room_id: str) -> int:
        """Opens a closed log (erasing what it holds); an open log stays as it is."""

    async def event_by_handle(self, room_id: str, handle: str) -> tuple[EventRow | None, str]:
        """The event with this handle (None if there is none), and the log's epoch ("" if none)."""

    async def rewrite_event(
        self, room_id: str, handle: str, rewrite: Callable[[EventRow, int], bytes], after_seq: int | None = None
    ) -> Rewritten | None:
        """Changes an event in place; None when the room's log has no such event.

        The change takes the log's next sequence (numbered like an append's
        event, see `append_batch`), then `rewrite(row, change_seq)`
        (called inside the transaction; it may raise, and then nothing changes)
        returns the new body. Raises LogClosed when the event is missing because
        the log is closed.
        """

    async def since(self, room_id: str, after_seq: int, limit: int) -> Since:
        """Up to `limit` kept events after `after_seq`, oldest first; up to `limit` events at or before
        it changed after it, by change; and the log's state, all as of one moment."""

    async def page_before(self, room_id: str, before_seq: int, limit: int, event: str = "") -> Page:
        """Up to `limit` events with seq < before_seq (0: no bound), newest first."""

    async def page_by_offset(self, room_id: str, start: int, end: int, event: str = "") -> Page:
        """Events [start, end) counting from the newest (0), newest first."""

    async def read_snapshot(self, room_id: str, rows: int) -> Snapshot | None:
        """The room's state, newest `rows` rows and count limits, as of one moment; None for a log never started."""

    async def retention_rooms(self) -> list[str]:
        """The rooms with a retention policy, in room id order."""

    async def prune_room(self, room_id: str, now_ms: int) -> list[Pruned]:
        """Applies the room's retention policies; returns what each removed.

        The room's `pruned_seq` rises to the largest sequence removed (an
        event's latest change counts as removed with it), so a resume from
        before it knows events are gone.
        """

    async def prune_idempotency_keys(self, older_than: float) -> int:
        """Forgets idempotency keys recorded before `older_than`; returns how many."""

    async def close(self) -> None: ...


class KeyStore(Protocol):
    """Idempotency keys kept as rows apart from the appends that made them (services/history/transient_keys.py)."""

    async def record_keys(self, rows: Sequence[IdempotencyKeyRow]) -> None:
        """Records idempotency keys of events numbered elsewhere (transient ones numbered in memory), in one
        transaction; a key already recorded takes the new row."""

    async def recent_keys(self, room_id: str, since: float, limit: int) -> list[IdempotencyKeyRow]:
        """The room's idempotency keys recorded since `since`, oldest first, at most `limit`."""


class StoredHistory(HistoryStorage, KeyStore, Protocol):
    """A history store on disk (SQLite or PostgreSQL): the log, and idempotency keys as rows."""


async def open_history_storage(config: Config) -> StoredHistory:
    """The history service's storage, opened and migrated: SQLite under the data directory, or PostgreSQL."""
    url = config.storage.url_of("history")
    storage: StoredHistory
    if url:
        # Imported here: psycopg is loaded only by processes that use PostgreSQL.
        from services.history.postgres_storage import PostgresHistoryStorage

        storage = await PostgresHistoryStorage.open(url, config.storage.max_connections)
    else:
        from services.history.sqlite_storage import SqliteHistoryStorage

        storage = await SqliteHistoryStorage.open(config.server.data_dir / "history.sqlite3")
    return storage
