"""Per-room logs on SQLite.

`events` is a WITHOUT ROWID table clustered by (room_id, seq), so a
newest-first page is one short range scan; `events_by_name` serves pages of
one event name. `room_logs.last_seq` is the sequence: every event takes the
next number, but only kept events (history enabled) get a row, so a number
without a row was a transient event. Every function runs inside the caller's
transaction on the database thread.
"""

from __future__ import annotations

import dataclasses
import secrets
import time

import sqlite_utils


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


MIGRATIONS = [_migration_1, _migration_2, _migration_3, _migration_4, _migration_5, _migration_6, _migration_7]
EVENT_COLUMNS = "seq, event, sender, handle, body"


@dataclasses.dataclass(frozen=True)
class LogStateRow:
    room_id: str
    epoch: str
    last_seq: int
    created_at: float
    # The largest sequence retention removed.
    pruned_seq: int = 0


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


class LogClosed(Exception):
    """The room's log is closed (its room was deleted): nothing is appended or changed."""

    def __init__(self, room_id: str) -> None:
        super().__init__(f"the log of {room_id!r} is closed")
        self.room_id = room_id


@dataclasses.dataclass(frozen=True)
class Appended:
    seq: int
    handle: str
    duplicate: bool


def log_state(db: sqlite_utils.Database, room_id: str) -> LogStateRow | None:
    """The room's log state; None for a room whose log was never started."""
    row = db.execute(
        "SELECT room_id, epoch, last_seq, created_at, pruned_seq FROM room_logs WHERE room_id = ?", [room_id]
    ).fetchone()
    return None if row is None else LogStateRow(*row)


def append(
    db: sqlite_utils.Database, room_id: str, events: list[NewEventRow], now: float, idempotency_window: float
) -> tuple[str, list[Appended]]:
    """Appends with consecutive sequences; retries within the window return the original.

    Raises LogClosed, having written nothing, when the room's log is closed.
    """
    state = log_state(db, room_id)
    if state is None:
        if is_closed(db, room_id):
            raise LogClosed(room_id)
        state = LogStateRow(room_id, secrets.token_hex(8), 0, now)
        db.execute(
            "INSERT INTO room_logs (room_id, epoch, last_seq, created_at) VALUES (?, ?, 0, ?)",
            [room_id, state.epoch, now],
        )
    last_seq = state.last_seq
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
    if last_seq != state.last_seq:
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


@dataclasses.dataclass(frozen=True)
class Pruned:
    """Retention removed the room's events of this name with seq <= bound."""

    room_id: str
    event: str
    bound: int
    removed: int


def prune(db: sqlite_utils.Database, now_ms: int) -> list[Pruned]:
    """Applies every retention policy; returns what each policy removed.

    Each room's `pruned_seq` rises to the largest sequence removed, so a
    resume from before it knows events are gone.
    """
    pruned: list[Pruned] = []
    policies = db.execute("SELECT room_id, event, keep_last, keep_seconds FROM retention").fetchall()
    for room_id, event, keep_last, keep_seconds in policies:
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


def next_change_seq(db: sqlite_utils.Database, room_id: str) -> int:
    """A change (edit, delete) takes the log's next sequence number, like an event."""
    db.execute("UPDATE room_logs SET last_seq = last_seq + 1 WHERE room_id = ?", [room_id])
    (seq,) = db.execute("SELECT last_seq FROM room_logs WHERE room_id = ?", [room_id]).fetchone()
    return int(seq)


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


def prune_idempotency_keys(db: sqlite_utils.Database, older_than: float) -> int:
    return db.execute("DELETE FROM idempotency_keys WHERE created_at < ?", [older_than]).rowcount
