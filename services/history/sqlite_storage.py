"""Per-room logs on SQLite (`history.sqlite3` under the data directory).

`events` is a WITHOUT ROWID table clustered by (room_id, seq), so a
newest-first page is one short range scan; `events_by_name` serves pages of
one event name. `room_logs.last_seq` is the sequence: every event takes the
next number, but only kept events (history enabled) get a row, so a number
without a row was a transient event. Each function below runs inside the
caller's transaction on the database thread; `SqliteHistoryStorage` runs each
of its operations as one unit of work there, so writers take turns.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import sqlite_utils

from services.history.storage import (
    Appended,
    AppendRequest,
    Appends,
    EventRow,
    IdempotencyKeyRow,
    LogClosed,
    LogStateRow,
    Page,
    Pruned,
    Rewritten,
    RoomRetention,
    Since,
    Snapshot,
    numbered_after,
)
from services.runtime.sqlite import SqliteDatabase


def _migration_1(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE room_logs (
            room_id TEXT PRIMARY KEY,
            epoch TEXT NOT NULL,
            last_seq INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        ) WITHOUT ROWID
        """
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE events (
            room_id TEXT NOT NULL,
            seq INTEGER NOT NULL,
            event TEXT NOT NULL,
            sender TEXT NOT NULL,
            handle TEXT NOT NULL,
            -- The event as served (a LoggedEvent without its seq), encoded once.
            body BLOB NOT NULL,
            PRIMARY KEY (room_id, seq)
        ) WITHOUT ROWID;
        CREATE INDEX events_by_name ON events(room_id, event, seq);
        CREATE TABLE idempotency_keys (
            room_id TEXT NOT NULL,
            sender TEXT NOT NULL,
            key TEXT NOT NULL,
            seq INTEGER NOT NULL,
            handle TEXT NOT NULL,
            created_at REAL NOT NULL,
            PRIMARY KEY (room_id, sender, key)
        ) WITHOUT ROWID;
        CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_at);
        """
    )


def _migration_3(db: sqlite_utils.Database) -> None:
    db.execute("CREATE INDEX events_by_handle ON events(room_id, handle)")


def _migration_4(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE retention (
            room_id TEXT NOT NULL,
            event TEXT NOT NULL,
            keep_last INTEGER NOT NULL,
            keep_seconds INTEGER NOT NULL,
            PRIMARY KEY (room_id, event)
        ) WITHOUT ROWID;
        ALTER TABLE room_logs ADD COLUMN pruned_seq INTEGER NOT NULL DEFAULT 0;
        -- Publication time, for age-based retention (NULL in rows from before it).
        ALTER TABLE events ADD COLUMN time_ms INTEGER;
        """
    )


def _migration_5(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        -- The log position of the latest edit or delete of the event.
        ALTER TABLE events ADD COLUMN changed_seq INTEGER;
        CREATE INDEX events_by_change ON events(room_id, changed_seq) WHERE changed_seq IS NOT NULL;
        """
    )


def _migration_6(db: sqlite_utils.Database) -> None:
    # Age-based retention finds the newest expired event of a name without a scan.
    db.execute("CREATE INDEX events_by_age ON events(room_id, event, time_ms)")


def _migration_7(db: sqlite_utils.Database) -> None:
    # Logs of deleted rooms: erased, and refusing appends until reopened. A closed
    # log has no room_logs row, so an append looks here only to start a log.
    db.execute("CREATE TABLE closed_logs (room_id TEXT PRIMARY KEY, closed_at REAL NOT NULL) WITHOUT ROWID")


def _migration_8(db: sqlite_utils.Database) -> None:
    db.execute("ALTER TABLE room_logs ADD COLUMN reserved_seq INTEGER NOT NULL DEFAULT 0")


MIGRATIONS = [
    _migration_1,
    _migration_2,
    _migration_3,
    _migration_4,
    _migration_5,
    _migration_6,
    _migration_7,
    _migration_8,
]
EVENT_COLUMNS = "seq, event, sender, handle, body"


def log_state(db: sqlite_utils.Database, room_id: str) -> LogStateRow | None:
    """The room's log state; None for a room whose log was never started."""
    row = db.execute(
        "SELECT room_id, epoch, last_seq, created_at, pruned_seq, reserved_seq FROM room_logs WHERE room_id = ?",
        [room_id],
    ).fetchone()
    return None if row is None else LogStateRow(*row)


def append(db: sqlite_utils.Database, request: AppendRequest, now: float, idempotency_window: float) -> Appends:
    """Appends with consecutive sequences; retries within the window return the original.

    Raises LogClosed, having written nothing, when the room's log is closed.
    """
    room_id, events = request.room_id, request.events
    state = log_state(db, room_id)
    if state is None:
        if is_closed(db, room_id):
            raise LogClosed(room_id)
        state = LogStateRow(room_id, secrets.token_hex(8), 0, now)
        db.execute(
            "INSERT INTO room_logs (room_id, epoch, last_seq, created_at) VALUES (?, ?, 0, ?)",
            [room_id, state.epoch, now],
        )
    last_seq = numbered_after(state, request.after_seq)
    appended: list[Appended] = []
    policies: dict[str, tuple[int, int]] = {}
    kept: list[tuple[object, ...]] = []
    for event in events:
        if event.idempotency_key:
            earlier = db.execute(
                "SELECT seq, handle FROM idempotency_keys "
                "WHERE room_id = ? AND sender = ? AND key = ? AND created_at >= ?",
                [room_id, event.sender, event.idempotency_key, now - idempotency_window],
            ).fetchone()
            if earlier is not None:
                appended.append(Appended(earlier[0], earlier[1], duplicate=True))
                continue
        last_seq += 1
        if not event.transient:
            kept.append((room_id, last_seq, event.event, event.sender, event.handle, event.body, event.time_ms))
            policies[event.event] = (event.keep_last, event.keep_seconds)
        if event.idempotency_key:
            db.execute(
                "INSERT OR REPLACE INTO idempotency_keys (room_id, sender, key, seq, handle, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                [room_id, event.sender, event.idempotency_key, last_seq, event.handle, now],
            )
        appended.append(Appended(last_seq, event.handle, duplicate=False))
    db.conn.executemany(f"INSERT INTO events (room_id, {EVENT_COLUMNS}, time_ms) VALUES (?, ?, ?, ?, ?, ?, ?)", kept)
    if request.reserve:
        db.execute(
            "UPDATE room_logs SET last_seq = ?, reserved_seq = ? WHERE room_id = ?",
            [last_seq, last_seq + request.reserve, room_id],
        )
    elif last_seq != state.last_seq:
        db.execute("UPDATE room_logs SET last_seq = ? WHERE room_id = ?", [last_seq, room_id])
    for name, (keep_last, keep_seconds) in policies.items():
        _set_retention(db, room_id, name, keep_last, keep_seconds)
    return state.epoch, appended


def set_room_retention(
    db: sqlite_utils.Database, room_id: str, named: dict[str, tuple[int, int]], other: tuple[int, int]
) -> None:
    """Replaces the room's policies: `named` per event name, `other` for names recorded but not named.

    A closed log keeps none (a gateway may not have heard of the deletion yet).
    """
    if is_closed(db, room_id):
        return
    recorded = {name for (name,) in db.execute("SELECT event FROM retention WHERE room_id = ?", [room_id])}
    if any(other):
        recorded |= event_names(db, room_id)  # names kept under "*" before it had limits
    for name in recorded - named.keys():
        _set_retention(db, room_id, name, *other)
    for name, (keep_last, keep_seconds) in named.items():
        _set_retention(db, room_id, name, keep_last, keep_seconds)


def event_names(db: sqlite_utils.Database, room_id: str) -> set[str]:
    """The distinct event names in the room's log, one index seek per name (not a scan of its events)."""
    rows = db.execute(
        """
        WITH RECURSIVE names(event) AS (
            SELECT MIN(event) FROM events WHERE room_id = :room
            UNION ALL
            SELECT (SELECT MIN(event) FROM events WHERE room_id = :room AND event > names.event)
            FROM names WHERE names.event IS NOT NULL
        )
        SELECT event FROM names WHERE event IS NOT NULL
        """,
        {"room": room_id},
    )
    return {name for (name,) in rows.fetchall()}


def retention_of(db: sqlite_utils.Database, room_id: str) -> dict[str, tuple[int, int]]:
    rows = db.execute("SELECT event, keep_last, keep_seconds FROM retention WHERE room_id = ?", [room_id])
    return {name: (keep_last, keep_seconds) for name, keep_last, keep_seconds in rows.fetchall()}


def _set_retention(db: sqlite_utils.Database, room_id: str, event: str, keep_last: int, keep_seconds: int) -> None:
    """Records the policy the pruner applies; a policy without limits is forgotten."""
    if not (keep_last or keep_seconds):
        db.execute("DELETE FROM retention WHERE room_id = ? AND event = ?", [room_id, event])
        return
    db.execute(
        "INSERT INTO retention (room_id, event, keep_last, keep_seconds) VALUES (?, ?, ?, ?) "
        "ON CONFLICT (room_id, event) DO UPDATE SET keep_last = excluded.keep_last, "
        "keep_seconds = excluded.keep_seconds "
        "WHERE keep_last != excluded.keep_last OR keep_seconds != excluded.keep_seconds",
        [room_id, event, keep_last, keep_seconds],
    )


def retention_rooms(db: sqlite_utils.Database) -> list[str]:
    return [room_id for (room_id,) in db.execute("SELECT DISTINCT room_id FROM retention ORDER BY room_id")]


def prune(db: sqlite_utils.Database, room_id: str, now_ms: int) -> list[Pruned]:
    """Applies the room's retention policies; returns what each policy removed.

    The room's `pruned_seq` rises to the largest sequence removed, so a
    resume from before it knows events are gone.
    """
    pruned: list[Pruned] = []
    policies = db.execute(
        "SELECT event, keep_last, keep_seconds FROM retention WHERE room_id = ? ORDER BY event", [room_id]
    ).fetchall()
    for event, keep_last, keep_seconds in policies:
        bound = 0  # remove rows with seq <= bound
        if keep_last:
            row = db.execute(
                "SELECT seq FROM events WHERE room_id = ? AND event = ? ORDER BY seq DESC LIMIT 1 OFFSET ?",
                [room_id, event, keep_last],
            ).fetchone()
            bound = row[0] if row else 0
        if keep_seconds:
            (oldest_kept,) = db.execute(
                "SELECT MAX(seq) FROM events WHERE room_id = ? AND event = ? AND time_ms < ?",
                [room_id, event, max(0, now_ms - keep_seconds * 1000)],
            ).fetchone()
            bound = max(bound, oldest_kept or 0)
        if not bound:
            continue
        # A removed event's latest change counts as removed too: a resume from before it cannot replay it.
        (last_change,) = db.execute(
            "SELECT MAX(changed_seq) FROM events WHERE room_id = ? AND event = ? AND seq <= ?", [room_id, event, bound]
        ).fetchone()
        removed = db.execute(
            "DELETE FROM events WHERE room_id = ? AND event = ? AND seq <= ?", [room_id, event, bound]
        ).rowcount
        gone = max(bound, last_change or 0)
        db.execute("UPDATE room_logs SET pruned_seq = MAX(pruned_seq, ?) WHERE room_id = ?", [gone, room_id])
        pruned.append(Pruned(room_id, event, bound, removed))
    return pruned


def keep_last_by_name(db: sqlite_utils.Database, room_id: str) -> dict[str, int]:
    """The count limit recorded for each event name of the room that has one."""
    rows = db.execute("SELECT event, keep_last FROM retention WHERE room_id = ? AND keep_last > 0", [room_id])
    return dict(rows.fetchall())


def page_before(
    db: sqlite_utils.Database, room_id: str, before_seq: int, limit: int, event: str = ""
) -> list[EventRow]:
    """Up to `limit` events with seq < before_seq (0: no bound), newest first."""
    where = ["room_id = ?"]
    params: list[object] = [room_id]
    if event:
        where.append("event = ?")
        params.append(event)
    if before_seq:
        where.append("seq < ?")
        params.append(before_seq)
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT ?"
    return [EventRow(*row) for row in db.execute(sql, [*params, limit]).fetchall()]


def since(db: sqlite_utils.Database, room_id: str, after_seq: int, limit: int) -> list[EventRow]:
    """Up to `limit` kept events with seq > after_seq, oldest first."""
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ? AND seq > ? ORDER BY seq LIMIT ?"
    return [EventRow(*row) for row in db.execute(sql, [room_id, after_seq, limit]).fetchall()]


def page_by_offset(db: sqlite_utils.Database, room_id: str, start: int, end: int, event: str = "") -> list[EventRow]:
    """Events [start, end) counting from the newest (0), newest first."""
    where = "room_id = ? AND event = ?" if event else "room_id = ?"
    params: list[object] = [room_id, event] if event else [room_id]
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq DESC LIMIT ? OFFSET ?"
    return [EventRow(*row) for row in db.execute(sql, [*params, end - start, start]).fetchall()]


def event_by_handle(db: sqlite_utils.Database, room_id: str, handle: str) -> EventRow | None:
    row = db.execute(
        f"SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ? AND handle = ?", [room_id, handle]
    ).fetchone()
    return None if row is None else EventRow(*row)


def next_change_seq(db: sqlite_utils.Database, state: LogStateRow, after_seq: int | None) -> int:
    """A change (edit, delete) takes the log's next sequence number, like an event."""
    seq = numbered_after(state, after_seq) + 1
    db.execute("UPDATE room_logs SET last_seq = ? WHERE room_id = ?", [seq, state.room_id])
    return seq


def replace_body(db: sqlite_utils.Database, room_id: str, seq: int, body: bytes, change_seq: int) -> None:
    """Edits and tombstones change an event in place; its sequence stays, the change has its own."""
    db.execute(
        "UPDATE events SET body = ?, changed_seq = ? WHERE room_id = ? AND seq = ?", [body, change_seq, room_id, seq]
    )


def changed_since(db: sqlite_utils.Database, room_id: str, after_seq: int, limit: int) -> list[EventRow]:
    """Events at or before `after_seq` changed after it, by change, oldest first."""
    sql = (
        f"SELECT {EVENT_COLUMNS} FROM events WHERE room_id = ? AND changed_seq > ? AND seq <= ? "
        "ORDER BY changed_seq LIMIT ?"
    )
    return [EventRow(*row) for row in db.execute(sql, [room_id, after_seq, after_seq, limit]).fetchall()]


def drop_log(db: sqlite_utils.Database, room_id: str, close: bool = False) -> int:
    """Erases the room's log: events, idempotency keys, retention, and its epoch; returns the events erased.

    Without `close` (and if it was closed, from now on) the room's next append
    starts a new log under a new epoch; with it, appends raise LogClosed.
    """
    dropped = db.execute("DELETE FROM events WHERE room_id = ?", [room_id]).rowcount
    db.execute("DELETE FROM idempotency_keys WHERE room_id = ?", [room_id])
    db.execute("DELETE FROM retention WHERE room_id = ?", [room_id])
    db.execute("DELETE FROM room_logs WHERE room_id = ?", [room_id])
    if close:
        db.execute("INSERT OR IGNORE INTO closed_logs (room_id, closed_at) VALUES (?, ?)", [room_id, time.time()])
    else:
        db.execute("DELETE FROM closed_logs WHERE room_id = ?", [room_id])
    return int(dropped)


def reopen_log(db: sqlite_utils.Database, room_id: str) -> int:
    """Opens a closed log (erasing what it holds: nothing, or a stale retention); an open log stays as it is."""
    return drop_log(db, room_id) if is_closed(db, room_id) else 0


def is_closed(db: sqlite_utils.Database, room_id: str) -> bool:
    return db.execute("SELECT 1 FROM closed_logs WHERE room_id = ?", [room_id]).fetchone() is not None


def record_keys(db: sqlite_utils.Database, rows: Sequence[IdempotencyKeyRow]) -> None:
    db.conn.executemany(
        "INSERT OR REPLACE INTO idempotency_keys (room_id, sender, key, seq, handle, created_at) "
        "VALUES (?, ?, ?, ?, ?, ?)",
        [(row.room_id, row.sender, row.key, row.seq, row.handle, row.created_at) for row in rows],
    )


def recent_keys(db: sqlite_utils.Database, room_id: str, since: float, limit: int) -> list[IdempotencyKeyRow]:
    rows = db.execute(
        "SELECT room_id, sender, key, seq, handle, created_at FROM idempotency_keys "
        "WHERE room_id = ? AND created_at >= ? ORDER BY created_at LIMIT ?",
        [room_id, since, limit],
    )
    return [IdempotencyKeyRow(*row) for row in rows.fetchall()]


def prune_idempotency_keys(db: sqlite_utils.Database, older_than: float) -> int:
    return db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", [older_than]).rowcount


def read_snapshot(db: sqlite_utils.Database, room_id: str, rows: int) -> Snapshot | None:
    """What `HotBuffer.install` needs; None for a room whose log was never started."""
    state = log_state(db, room_id)
    if state is None:
        return None
    newest = page_before(db, room_id, 0, rows + 1)
    return Snapshot(state, newest[:rows], len(newest) <= rows, keep_last_by_name(db, room_id))


def rewrite_event(
    db: sqlite_utils.Database,
    room_id: str,
    handle: str,
    rewrite: Callable[[EventRow, int], bytes],
    after_seq: int | None = None,
) -> Rewritten | None:
    row = event_by_handle(db, room_id, handle)
    if row is None:
        if is_closed(db, room_id):
            raise LogClosed(room_id)
        return None
    state = log_state(db, room_id)
    assert state is not None  # the log has the event
    change_seq = next_change_seq(db, state, after_seq)
    body = rewrite(row, change_seq)
    replace_body(db, room_id, row.seq, body, change_seq)
    return Rewritten(EventRow(row.seq, row.event, row.sender, row.handle, body), state.epoch, change_seq)


def _append_or_refuse(
    db: sqlite_utils.Database, request: AppendRequest, now: float, window: float
) -> Appends | LogClosed:
    """One request's part of a batch; a closed log refuses it (writing nothing) and the others go on."""
    try:
        return append(db, request, now, window)
    except LogClosed as closed:
        return closed


def _page(db: sqlite_utils.Database, room_id: str, rows: list[EventRow]) -> Page:
    state = log_state(db, room_id)
    if state is None:
        return Page(rows, "", 0)
    return Page(rows, state.epoch, state.last_seq, state.reserved_seq)


class SqliteHistoryStorage:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteHistoryStorage:
        db = SqliteDatabase(path, MIGRATIONS)
        await db.open()
        return cls(db)

    async def log_state(self, room_id: str) -> LogStateRow | None:
        return await self._db.run(lambda db: log_state(db, room_id))

    async def append_batch(
        self, requests: Sequence[AppendRequest], now: float, idempotency_window: float
    ) -> list[Appends | LogClosed]:
        def append_all(db: sqlite_utils.Database) -> list[Appends | LogClosed]:
            results: list[Appends | LogClosed] = []
            seen: set[str] = set()
            for request in requests:
                if request.after_seq is None and request.room_id in seen:
                    # Numbered after the reservation as it stood when the batch began, like PostgreSQL's.
                    request = dataclasses.replace(request, after_seq=0)
                seen.add(request.room_id)
                results.append(_append_or_refuse(db, request, now, idempotency_window))
            return results

        return await self._db.transaction(append_all)

    async def set_retention(self, rooms: Sequence[RoomRetention]) -> None:
        def apply(db: sqlite_utils.Database) -> None:
            for room in rooms:
                set_room_retention(db, room.room_id, room.named, room.other)

        await self._db.transaction(apply)

    async def retention_of(self, room_id: str) -> dict[str, tuple[int, int]]:
        return await self._db.run(lambda db: retention_of(db, room_id))

    async def event_names(self, room_id: str) -> set[str]:
        return await self._db.run(lambda db: event_names(db, room_id))

    async def drop_log(self, room_id: str, close: bool) -> int:
        return await self._db.transaction(lambda db: drop_log(db, room_id, close=close))

    async def reopen_log(self, room_id: str) -> int:
        return await self._db.transaction(lambda db: reopen_log(db, room_id))

    async def event_by_handle(self, room_id: str, handle: str) -> tuple[EventRow | None, str]:
        def read(db: sqlite_utils.Database) -> tuple[EventRow | None, str]:
            state = log_state(db, room_id)
            return event_by_handle(db, room_id, handle), state.epoch if state else ""

        return await self._db.run(read)

    async def rewrite_event(
        self, room_id: str, handle: str, rewrite: Callable[[EventRow, int], bytes], after_seq: int | None = None
    ) -> Rewritten | None:
        return await self._db.transaction(lambda db: rewrite_event(db, room_id, handle, rewrite, after_seq))

    async def since(self, room_id: str, after_seq: int, limit: int) -> Since:
        return await self._db.run(
            lambda db: Since(
                since(db, room_id, after_seq, limit),
                changed_since(db, room_id, after_seq, limit),
                log_state(db, room_id),
            )
        )

    async def page_before(self, room_id: str, before_seq: int, limit: int, event: str = "") -> Page:
        return await self._db.run(lambda db: _page(db, room_id, page_before(db, room_id, before_seq, limit, event)))

    async def page_by_offset(self, room_id: str, start: int, end: int, event: str = "") -> Page:
        return await self._db.run(lambda db: _page(db, room_id, page_by_offset(db, room_id, start, end, event)))

    async def read_snapshot(self, room_id: str, rows: int) -> Snapshot | None:
        return await self._db.run(lambda db: read_snapshot(db, room_id, rows))

    async def retention_rooms(self) -> list[str]:
        return await self._db.run(retention_rooms)

    async def prune_room(self, room_id: str, now_ms: int) -> list[Pruned]:
        return await self._db.transaction(lambda db: prune(db, room_id, now_ms))

    async def prune_idempotency_keys(self, older_than: float) -> int:
        return await self._db.transaction(lambda db: prune_idempotency_keys(db, older_than))

    async def record_keys(self, rows: Sequence[IdempotencyKeyRow]) -> None:
        await self._db.transaction(lambda db: record_keys(db, rows))

    async def recent_keys(self, room_id: str, since: float, limit: int) -> list[IdempotencyKeyRow]:
        return await self._db.run(lambda db: recent_keys(db, room_id, since, limit))

    async def close(self) -> None:
        await self._db.close()
