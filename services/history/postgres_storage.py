"""Per-room logs on PostgreSQL (schema `parley_history`).

Each room's `room_logs` row is its counter and its lock. Every write to a
room's log takes that row first (`FOR UPDATE`, after an `INSERT ... ON
CONFLICT DO NOTHING` that starts a log never seen) and raises `last_seq` in
the same transaction as the rows it writes, so sequences stay gap-free and
in commit order with any number of writers: a rolled-back transaction gives
its numbers back, and the next writer waits for the row. A batch takes the
rows of its rooms in room id order, so two batches never wait for each
other in a circle. A deleted room's log keeps its row, marked closed
(`closed_at`), so an append racing the deletion waits for the row and finds
it closed. Reads of more than one statement run in one REPEATABLE READ
transaction: they see one moment of the log.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

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
from services.runtime.postgres import Connection, PostgresDatabase

SCHEMA = "parley_history"
MIGRATIONS = [
    """
    CREATE TABLE room_logs (
        room_id TEXT PRIMARY KEY,
        epoch TEXT NOT NULL,
        last_seq BIGINT NOT NULL DEFAULT 0,
        created_at DOUBLE PRECISION NOT NULL,
        -- The largest sequence retention removed.
        pruned_seq BIGINT NOT NULL DEFAULT 0,
        -- Set when the room was deleted: the log holds nothing and refuses writes until reopened.
        closed_at DOUBLE PRECISION
    );
    CREATE TABLE events (
        room_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        event TEXT NOT NULL,
        sender TEXT NOT NULL,
        handle TEXT NOT NULL,
        -- The event as served (a LoggedEvent without its seq), encoded once.
        body BYTEA NOT NULL,
        -- Publication time, for age-based retention.
        time_ms BIGINT,
        -- The log position of the latest edit or delete of the event.
        changed_seq BIGINT,
        PRIMARY KEY (room_id, seq)
    );
    CREATE INDEX events_by_name ON events(room_id, event, seq);
    CREATE INDEX events_by_handle ON events(room_id, handle);
    CREATE INDEX events_by_change ON events(room_id, changed_seq) WHERE changed_seq IS NOT NULL;
    CREATE INDEX events_by_age ON events(room_id, event, time_ms);
    CREATE TABLE idempotency_keys (
        room_id TEXT NOT NULL,
        sender TEXT NOT NULL,
        key TEXT NOT NULL,
        seq BIGINT NOT NULL,
        handle TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (room_id, sender, key)
    );
    CREATE INDEX idempotency_keys_by_age ON idempotency_keys(created_at);
    CREATE TABLE retention (
        room_id TEXT NOT NULL,
        event TEXT NOT NULL,
        keep_last BIGINT NOT NULL,
        keep_seconds BIGINT NOT NULL,
        PRIMARY KEY (room_id, event)
    );
    """,
    """
    -- Numbers up to here may have been handed out to transient events without a write.
    ALTER TABLE room_logs ADD COLUMN reserved_seq BIGINT NOT NULL DEFAULT 0;
    """,
]
EVENT_COLUMNS = "seq, event, sender, handle, body"
STATE_COLUMNS = "room_id, epoch, last_seq, created_at, pruned_seq, reserved_seq"


@dataclasses.dataclass
class _Log:
    """A room's counter row as a batch holds it: as read, and where the batch has taken it."""

    state: LogStateRow
    closed: bool
    last: int = 0
    reserved: int = 0
    changed: bool = False


class PostgresHistoryStorage:
    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, url: str, max_connections: int) -> PostgresHistoryStorage:
        db = PostgresDatabase(url, SCHEMA, MIGRATIONS, max_connections)
        await db.open()
        return cls(db)

    async def close(self) -> None:
        await self._db.close()

    # Reads

    async def log_state(self, room_id: str) -> LogStateRow | None:
        async with self._db.connection() as connection:
            return await _log_state(connection, room_id)

    async def retention_of(self, room_id: str) -> dict[str, tuple[int, int]]:
        async with self._db.connection() as connection:
            rows = await _all(
                connection, "SELECT event, keep_last, keep_seconds FROM retention WHERE room_id = %s", [room_id]
            )
        return {name: (keep_last, keep_seconds) for name, keep_last, keep_seconds in rows}

    async def event_names(self, room_id: str) -> set[str]:
        async with self._db.connection() as connection:
            return await _event_names(connection, room_id)

    async def event_by_handle(self, room_id: str, handle: str) -> tuple[EventRow | None, str]:
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE room_id = %s AND handle = %s LIMIT 1"
        async with self._db.connection() as connection:
            state, rows = await _with_state(connection, room_id, sql, [room_id, handle], "e.seq")
        return (EventRow(*rows[0]) if rows else None), state.epoch if state else ""

    async def since(self, room_id: str, after_seq: int, limit: int) -> Since:
        # Tagged 0 (an event after the position) or 1 (an event at or before it, changed after it).
        sql = (
            f"(SELECT 0 AS kind, seq AS position, {EVENT_COLUMNS} FROM events "
            "WHERE room_id = %s AND seq > %s ORDER BY seq LIMIT %s) "
            f"UNION ALL (SELECT 1, changed_seq, {EVENT_COLUMNS} FROM events "
            "WHERE room_id = %s AND changed_seq > %s AND seq <= %s ORDER BY changed_seq LIMIT %s)"
        )
        params = [room_id, after_seq, limit, room_id, after_seq, after_seq, limit]
        async with self._db.connection() as connection:
            state, rows = await _with_state(connection, room_id, sql, params, "e.kind, e.position")
        events = [EventRow(*row[2:]) for row in rows if row[0] == 0]
        changed = [EventRow(*row[2:]) for row in rows if row[0] == 1]
        return Since(events, changed, state)

    async def page_before(self, room_id: str, before_seq: int, limit: int, event: str = "") -> Page:
        return await self._page(room_id, *_page_before_sql(room_id, before_seq, limit, event))

    async def page_by_offset(self, room_id: str, start: int, end: int, event: str = "") -> Page:
        where = "room_id = %s AND event = %s" if event else "room_id = %s"
        params: list[Any] = [room_id, event] if event else [room_id]
        sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {where} ORDER BY seq DESC LIMIT %s OFFSET %s"
        return await self._page(room_id, sql, [*params, end - start, start])

    async def _page(self, room_id: str, sql: str, params: list[Any]) -> Page:
        async with self._db.connection() as connection:
            state, rows = await _with_state(connection, room_id, sql, params, "e.seq DESC")
        if state is None:
            return Page([EventRow(*row) for row in rows], "", 0)
        return Page([EventRow(*row) for row in rows], state.epoch, state.last_seq, state.reserved_seq)

    async def read_snapshot(self, room_id: str, rows: int) -> Snapshot | None:
        async with self._db.transaction(read_only=True) as connection:
            state = await _log_state(connection, room_id)
            if state is None:
                return None
            newest = await _events(connection, *_page_before_sql(room_id, 0, rows + 1))
            limits = await _all(
                connection, "SELECT event, keep_last FROM retention WHERE room_id = %s AND keep_last > 0", [room_id]
            )
        return Snapshot(state, newest[:rows], len(newest) <= rows, {name: int(n) for name, n in limits})

    # Appends

    async def append_batch(
        self, requests: Sequence[AppendRequest], now: float, idempotency_window: float
    ) -> list[Appends | LogClosed]:
        async with self._db.transaction() as connection:
            logs = await _take_logs(connection, sorted({request.room_id for request in requests}), now)
            keys = await _recent_keys(connection, requests, now - idempotency_window)
            results: list[Appends | LogClosed] = []
            events: list[tuple[Any, ...]] = []
            new_keys: list[tuple[Any, ...]] = []
            policies: dict[tuple[str, str], tuple[int, int]] = {}
            for request in requests:
                room_id = request.room_id
                log = logs[room_id]
                if log.closed:
                    results.append(LogClosed(room_id))
                    continue
                log.last = max(log.last, numbered_after(log.state, request.after_seq))
                appended: list[Appended] = []
                for event in request.events:
                    key = (room_id, event.sender, event.idempotency_key)
                    if event.idempotency_key and key in keys:
                        seq, handle = keys[key]
                        appended.append(Appended(seq, handle, duplicate=True))
                        continue
                    log.last += 1
                    log.changed = True
                    seq = log.last
                    if not event.transient:
                        events.append(
                            (room_id, seq, event.event, event.sender, event.handle, event.body, event.time_ms)
                        )
                        policies[(room_id, event.event)] = (event.keep_last, event.keep_seconds)
                    if event.idempotency_key:
                        keys[key] = (seq, event.handle)
                        new_keys.append((*key, seq, event.handle, now))
                    appended.append(Appended(seq, event.handle, duplicate=False))
                if request.reserve:
                    log.reserved = max(log.reserved, log.last + request.reserve)
                    log.changed = True
                results.append((log.state.epoch, appended))
            await _insert_events(connection, events)
            await _record_keys(connection, new_keys)
            for (room_id, name), (keep_last, keep_seconds) in sorted(policies.items()):
                await _set_retention(connection, room_id, name, keep_last, keep_seconds)
            await _advance(connection, logs)
        return results

    # Changes

    async def rewrite_event(
        self, room_id: str, handle: str, rewrite: Callable[[EventRow, int], bytes], after_seq: int | None = None
    ) -> Rewritten | None:
        async with self._db.transaction() as connection:
            log = await _one(
                connection, "SELECT epoch FROM room_logs WHERE room_id = %s AND closed_at IS NULL FOR UPDATE", [room_id]
            )
            if log is None:
                if await _is_closed(connection, room_id):
                    raise LogClosed(room_id)
                return None
            row = await _event_by_handle(connection, room_id, handle)
            if row is None:
                return None
            state = await _log_state(connection, room_id)
            assert state is not None  # the row is locked, and open
            counter = await _one(
                connection,
                "UPDATE room_logs SET last_seq = %s WHERE room_id = %s RETURNING last_seq",
                [numbered_after(state, after_seq) + 1, room_id],
            )
            assert counter is not None  # the row is locked
            change_seq = int(counter[0])
            body = rewrite(row, change_seq)
            await connection.execute(
                "UPDATE events SET body = %s, changed_seq = %s WHERE room_id = %s AND seq = %s",
                [body, change_seq, room_id, row.seq],
            )
        return Rewritten(dataclasses.replace(row, body=body), log[0], change_seq)

    async def set_retention(self, rooms: Sequence[RoomRetention]) -> None:
        # One transaction per room: each holds only its own room's counter row, briefly.
        for room in sorted(rooms, key=lambda room: room.room_id):
            async with self._db.transaction() as connection:
                log = await _one(
                    connection, "SELECT closed_at FROM room_logs WHERE room_id = %s FOR UPDATE", [room.room_id]
                )
                if log is not None and log[0] is not None:
                    continue  # a closed log keeps no policies
                rows = await _all(connection, "SELECT event FROM retention WHERE room_id = %s", [room.room_id])
                recorded = {name for (name,) in rows}
                if any(room.other):
                    # Names kept under "*" before it had limits.
                    recorded |= await _event_names(connection, room.room_id)
                policies = {name: room.other for name in recorded - room.named.keys()} | room.named
                for name, (keep_last, keep_seconds) in sorted(policies.items()):
                    await _set_retention(connection, room.room_id, name, keep_last, keep_seconds)

    async def drop_log(self, room_id: str, close: bool) -> int:
        async with self._db.transaction() as connection:
            return await _drop(connection, room_id, close)

    async def reopen_log(self, room_id: str) -> int:
        async with self._db.transaction() as connection:
            log = await _one(connection, "SELECT closed_at FROM room_logs WHERE room_id = %s FOR UPDATE", [room_id])
            if log is None or log[0] is None:
                return 0
            return await _drop(connection, room_id, close=False)

    async def retention_rooms(self) -> list[str]:
        async with self._db.connection() as connection:
            rows = await _all(connection, "SELECT DISTINCT room_id FROM retention ORDER BY room_id", [])
        return [room_id for (room_id,) in rows]

    async def prune_room(self, room_id: str, now_ms: int) -> list[Pruned]:
        async with self._db.transaction() as connection:
            # The counter row held: the room's edits wait, so no change slips past `pruned_seq`.
            await connection.execute("SELECT 1 FROM room_logs WHERE room_id = %s FOR UPDATE", [room_id])
            policies = await _all(
                connection,
                "SELECT event, keep_last, keep_seconds FROM retention WHERE room_id = %s ORDER BY event",
                [room_id],
            )
            pruned = []
            for event, keep_last, keep_seconds in policies:
                each = await _prune_policy(connection, room_id, event, keep_last, keep_seconds, now_ms)
                if each is not None:
                    pruned.append(each)
        return pruned

    async def prune_idempotency_keys(self, older_than: float) -> int:
        async with self._db.connection() as connection:
            cursor = await connection.execute("DELETE FROM idempotency_keys WHERE created_at < %s", [older_than])
            return cursor.rowcount

    async def record_keys(self, rows: Sequence[IdempotencyKeyRow]) -> None:
        async with self._db.transaction() as connection:
            await _record_keys(
                connection, [(row.room_id, row.sender, row.key, row.seq, row.handle, row.created_at) for row in rows]
            )

    async def recent_keys(self, room_id: str, since: float, limit: int) -> list[IdempotencyKeyRow]:
        async with self._db.connection() as connection:
            rows = await _all(
                connection,
                "SELECT room_id, sender, key, seq, handle, created_at FROM idempotency_keys "
                "WHERE room_id = %s AND created_at >= %s ORDER BY created_at LIMIT %s",
                [room_id, since, limit],
            )
        return [
            IdempotencyKeyRow(room_id, sender, key, int(seq), handle, created_at)
            for room_id, sender, key, seq, handle, created_at in rows
        ]


# Statements, inside the caller's connection (and transaction)


Params = Sequence[Any] | Mapping[str, Any]


async def _one(connection: Connection, sql: str, params: Params) -> tuple[Any, ...] | None:
    cursor = await connection.execute(sql, params)
    return await cursor.fetchone()


async def _all(connection: Connection, sql: str, params: Params) -> list[tuple[Any, ...]]:
    cursor = await connection.execute(sql, params)
    return await cursor.fetchall()


async def _events(connection: Connection, sql: str, params: Params) -> list[EventRow]:
    return [EventRow(*row) for row in await _all(connection, sql, params)]


async def _log_state(connection: Connection, room_id: str) -> LogStateRow | None:
    row = await _one(
        connection, f"SELECT {STATE_COLUMNS} FROM room_logs WHERE room_id = %s AND closed_at IS NULL", [room_id]
    )
    return None if row is None else LogStateRow(*row)


async def _is_closed(connection: Connection, room_id: str) -> bool:
    row = await _one(connection, "SELECT closed_at IS NOT NULL FROM room_logs WHERE room_id = %s", [room_id])
    return row is not None and bool(row[0])


def _page_before_sql(room_id: str, before_seq: int, limit: int, event: str = "") -> tuple[str, list[Any]]:
    """Up to `limit` events with seq < before_seq (0: no bound), newest first."""
    where = ["room_id = %s"]
    params: list[Any] = [room_id]
    if event:
        where.append("event = %s")
        params.append(event)
    if before_seq:
        where.append("seq < %s")
        params.append(before_seq)
    sql = f"SELECT {EVENT_COLUMNS} FROM events WHERE {' AND '.join(where)} ORDER BY seq DESC LIMIT %s"
    return sql, [*params, limit]


async def _with_state(
    connection: Connection, room_id: str, rows_sql: str, params: list[Any], order: str
) -> tuple[LogStateRow | None, list[tuple[Any, ...]]]:
    """The log's state and the rows `rows_sql` selects (ordered by `order`, on its columns as `e.*`),
    in one statement: both as of one moment, in one round trip."""
    sql = (
        "SELECT l.room_id, l.epoch, l.last_seq, l.created_at, l.pruned_seq, l.reserved_seq, e.* "
        "FROM (SELECT 1) AS one "
        "LEFT JOIN room_logs AS l ON l.room_id = %s AND l.closed_at IS NULL "
        f"LEFT JOIN LATERAL ({rows_sql}) AS e ON true ORDER BY {order}"
    )
    rows = await _all(connection, sql, [room_id, *params])
    state = None if rows[0][0] is None else LogStateRow(*rows[0][:6])
    return state, [row[6:] for row in rows if row[6] is not None]


async def _event_by_handle(connection: Connection, room_id: str, handle: str) -> EventRow | None:
    row = await _one(
        connection, f"SELECT {EVENT_COLUMNS} FROM events WHERE room_id = %s AND handle = %s", [room_id, handle]
    )
    return None if row is None else EventRow(*row)


async def _event_names(connection: Connection, room_id: str) -> set[str]:
    """The distinct event names in the room's log, one index seek per name (not a scan of its events)."""
    rows = await _all(
        connection,
        """
        WITH RECURSIVE names(event) AS (
            SELECT MIN(event) FROM events WHERE room_id = %(room)s
            UNION ALL
            SELECT (SELECT MIN(event) FROM events WHERE room_id = %(room)s AND event > names.event)
            FROM names WHERE names.event IS NOT NULL
        )
        SELECT event FROM names WHERE event IS NOT NULL
        """,
        {"room": room_id},
    )
    return {name for (name,) in rows}


async def _take_logs(connection: Connection, room_ids: list[str], now: float) -> dict[str, _Log]:
    """Starts the logs never seen, then locks every room's counter row, in room id order."""
    epochs = [secrets.token_hex(8) for _ in room_ids]
    await connection.execute(
        "INSERT INTO room_logs (room_id, epoch, last_seq, created_at) "
        "SELECT room_id, epoch, 0, %s FROM unnest(%s::text[], %s::text[]) AS new(room_id, epoch) "
        "ORDER BY room_id ON CONFLICT (room_id) DO NOTHING",
        [now, room_ids, epochs],
    )
    rows = await _all(
        connection,
        f"SELECT {STATE_COLUMNS}, closed_at IS NOT NULL FROM room_logs "
        "WHERE room_id = ANY(%s) ORDER BY room_id FOR UPDATE",
        [room_ids],
    )
    logs = {}
    for row in rows:
        state = LogStateRow(*row[:-1])
        logs[state.room_id] = _Log(state, bool(row[-1]), last=state.last_seq, reserved=state.reserved_seq)
    return logs


async def _recent_keys(
    connection: Connection, requests: Sequence[AppendRequest], since: float
) -> dict[tuple[str, str, str], tuple[int, str]]:
    """The idempotency keys of the batch's events recorded since `since`: where each event went."""
    asked = {
        (request.room_id, event.sender, event.idempotency_key)
        for request in requests
        for event in request.events
        if event.idempotency_key
    }
    if not asked:
        return {}
    rooms, senders, keys = (list(column) for column in zip(*asked, strict=True))
    rows = await _all(
        connection,
        "SELECT k.room_id, k.sender, k.key, k.seq, k.handle FROM idempotency_keys AS k "
        "JOIN unnest(%s::text[], %s::text[], %s::text[]) AS asked(room_id, sender, key) "
        "USING (room_id, sender, key) WHERE k.created_at >= %s",
        [rooms, senders, keys, since],
    )
    return {(room_id, sender, key): (int(seq), handle) for room_id, sender, key, seq, handle in rows}


async def _insert_events(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    columns = [list(column) for column in zip(*rows, strict=True)]
    await connection.execute(
        "INSERT INTO events (room_id, seq, event, sender, handle, body, time_ms) "
        "SELECT * FROM unnest(%s::text[], %s::bigint[], %s::text[], %s::text[], %s::text[], %s::bytea[], %s::bigint[])",
        columns,
    )


async def _record_keys(connection: Connection, rows: list[tuple[Any, ...]]) -> None:
    if not rows:
        return
    columns = [list(column) for column in zip(*rows, strict=True)]
    # A key past its window is replaced by the event that now uses it.
    await connection.execute(
        "INSERT INTO idempotency_keys (room_id, sender, key, seq, handle, created_at) "
        "SELECT * FROM unnest(%s::text[], %s::text[], %s::text[], %s::bigint[], %s::text[], %s::float8[]) "
        "ON CONFLICT (room_id, sender, key) DO UPDATE SET "
        "seq = excluded.seq, handle = excluded.handle, created_at = excluded.created_at",
        columns,
    )


async def _advance(connection: Connection, logs: dict[str, _Log]) -> None:
    """Writes each counter the batch moved."""
    advanced = {room_id: log for room_id, log in logs.items() if log.changed}
    if not advanced:
        return
    await connection.execute(
        "UPDATE room_logs AS l SET last_seq = d.last, reserved_seq = d.reserved "
        "FROM unnest(%s::text[], %s::bigint[], %s::bigint[]) AS d(room_id, last, reserved) "
        "WHERE l.room_id = d.room_id",
        [list(advanced), [log.last for log in advanced.values()], [log.reserved for log in advanced.values()]],
    )


async def _set_retention(connection: Connection, room_id: str, event: str, keep_last: int, keep_seconds: int) -> None:
    """Records the policy the pruner applies; a policy without limits is forgotten."""
    if not (keep_last or keep_seconds):
        await connection.execute("DELETE FROM retention WHERE room_id = %s AND event = %s", [room_id, event])
        return
    await connection.execute(
        "INSERT INTO retention (room_id, event, keep_last, keep_seconds) VALUES (%s, %s, %s, %s) "
        "ON CONFLICT (room_id, event) DO UPDATE SET keep_last = excluded.keep_last, "
        "keep_seconds = excluded.keep_seconds "
        "WHERE retention.keep_last != excluded.keep_last OR retention.keep_seconds != excluded.keep_seconds",
        [room_id, event, keep_last, keep_seconds],
    )


async def _drop(connection: Connection, room_id: str, close: bool) -> int:
    """Erases the log; with `close` its row stays, marked closed, else the row goes too (a new epoch follows)."""
    # The counter row first (created if need be): appends to the room wait until this commits.
    now = time.time()
    await connection.execute(
        "INSERT INTO room_logs (room_id, epoch, last_seq, created_at, closed_at) VALUES (%s, '', 0, %s, %s) "
        "ON CONFLICT (room_id) DO UPDATE SET epoch = '', last_seq = 0, pruned_seq = 0, "
        "closed_at = COALESCE(room_logs.closed_at, excluded.closed_at)",
        [room_id, now, now if close else None],
    )
    cursor = await connection.execute("DELETE FROM events WHERE room_id = %s", [room_id])
    dropped = cursor.rowcount
    await connection.execute("DELETE FROM idempotency_keys WHERE room_id = %s", [room_id])
    await connection.execute("DELETE FROM retention WHERE room_id = %s", [room_id])
    if not close:
        await connection.execute("DELETE FROM room_logs WHERE room_id = %s", [room_id])
    return dropped


async def _prune_policy(
    connection: Connection, room_id: str, event: str, keep_last: int, keep_seconds: int, now_ms: int
) -> Pruned | None:
    bound = 0  # remove rows with seq <= bound
    if keep_last:
        row = await _one(
            connection,
            "SELECT seq FROM events WHERE room_id = %s AND event = %s ORDER BY seq DESC LIMIT 1 OFFSET %s",
            [room_id, event, keep_last],
        )
        bound = int(row[0]) if row else 0
    if keep_seconds:
        row = await _one(
            connection,
            "SELECT MAX(seq) FROM events WHERE room_id = %s AND event = %s AND time_ms < %s",
            [room_id, event, max(0, now_ms - keep_seconds * 1000)],
        )
        bound = max(bound, int(row[0] or 0) if row else 0)
    if not bound:
        return None
    # A removed event's latest change counts as removed too: a resume from before it cannot replay it.
    row = await _one(
        connection,
        "SELECT MAX(changed_seq) FROM events WHERE room_id = %s AND event = %s AND seq <= %s",
        [room_id, event, bound],
    )
    last_change = int(row[0] or 0) if row else 0
    cursor = await connection.execute(
        "DELETE FROM events WHERE room_id = %s AND event = %s AND seq <= %s", [room_id, event, bound]
    )
    removed = cursor.rowcount
    await connection.execute(
        "UPDATE room_logs SET pruned_seq = GREATEST(pruned_seq, %s) WHERE room_id = %s",
        [max(bound, last_change), room_id],
    )
    return Pruned(room_id, event, bound, removed)
