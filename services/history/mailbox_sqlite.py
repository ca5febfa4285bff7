"""Mailboxes on SQLite: `mailbox.sqlite3` under the data directory (see mailbox_storage.py)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlite_utils

from services.history.mailbox_storage import COLUMNS, EnvelopeRow, NewEnvelope
from services.runtime.sqlite import SqliteDatabase


def _sqlite_migration_1(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE envelopes (
            seq INTEGER PRIMARY KEY AUTOINCREMENT,
            device_id TEXT NOT NULL,
            sender_user_id TEXT NOT NULL,
            sender_device_id TEXT NOT NULL,
            message_id TEXT NOT NULL,
            ciphertext BLOB NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            UNIQUE (device_id, sender_device_id, message_id)
        );
        CREATE INDEX envelopes_by_device ON envelopes(device_id, seq);
        CREATE INDEX envelopes_by_expiry ON envelopes(expires_at);
        """
    )


class SqliteMailboxStorage:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteMailboxStorage:
        db = SqliteDatabase(path, [_sqlite_migration_1])
        await db.open()
        return cls(db)

    async def deposit(self, envelopes: Sequence[NewEnvelope], now: float, ttl: float) -> list[int]:
        def write(db: sqlite_utils.Database) -> list[int]:
            positions = []
            for e in envelopes:
                db.execute(
                    "INSERT OR IGNORE INTO envelopes (device_id, sender_user_id, sender_device_id, message_id, "
                    "ciphertext, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [e.device_id, e.sender_user_id, e.sender_device_id, e.message_id, e.ciphertext, now, now + ttl],
                )
                row = db.execute(
                    "SELECT seq FROM envelopes WHERE device_id = ? AND sender_device_id = ? AND message_id = ?",
                    [e.device_id, e.sender_device_id, e.message_id],
                ).fetchone()
                positions.append(int(row[0]))
            return positions

        return await self._db.transaction(write)

    async def pending(self, device_id: str, after_seq: int, limit: int, now: float) -> list[EnvelopeRow]:
        sql = f"SELECT {COLUMNS} FROM envelopes WHERE device_id = ? AND seq > ? AND expires_at > ? ORDER BY seq LIMIT ?"
        rows = await self._db.run(lambda db: db.execute(sql, [device_id, after_seq, now, limit]).fetchall())
        return [EnvelopeRow(*row) for row in rows]

    async def held(self, device_ids: Sequence[str]) -> dict[str, int]:
        def count(db: sqlite_utils.Database) -> dict[str, int]:
            sql = "SELECT count(*) FROM envelopes WHERE device_id = ?"
            return {d: int(db.execute(sql, [d]).fetchone()[0]) for d in device_ids}

        return await self._db.run(count)

    async def ack(self, device_id: str, up_to_seq: int) -> int:
        sql = "DELETE FROM envelopes WHERE device_id = ? AND seq <= ?"
        return await self._db.transaction(lambda db: int(db.execute(sql, [device_id, up_to_seq]).rowcount))

    async def prune(self, now: float) -> int:
        return await self._db.transaction(
            lambda db: int(db.execute("DELETE FROM envelopes WHERE expires_at <= ?", [now]).rowcount)
        )

    async def close(self) -> None:
        await self._db.close()
