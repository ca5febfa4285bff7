"""Run-time rooms on SQLite (`room.sqlite3` under the data directory)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import sqlite_utils

from parley.room.v1 import room_pb2
from services.room.storage import MemberRow
from services.runtime.sqlite import SqliteDatabase


def _migration_1(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE rooms (
            room_id TEXT PRIMARY KEY,
            definition BLOB NOT NULL,
            created_at REAL NOT NULL
        )
        """
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    db.execute(
        """
        CREATE TABLE members (
            room_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            role INTEGER NOT NULL,
            added_ms INTEGER NOT NULL,
            PRIMARY KEY (room_id, user_id)
        )
        """
    )


MIGRATIONS = [_migration_1, _migration_2]


class SqliteRoomStorage:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteRoomStorage:
        db = SqliteDatabase(path, MIGRATIONS)
        await db.open()
        return cls(db)

    async def all_rooms(self) -> list[room_pb2.Room]:
        rows = await self._db.run(lambda db: db.execute("SELECT definition FROM rooms ORDER BY room_id").fetchall())
        return [room_pb2.Room.FromString(row[0]) for row in rows]

    async def insert_room(self, room: room_pb2.Room, now: float) -> bool:
        def insert(db: sqlite_utils.Database) -> bool:
            cursor = db.execute(
                "INSERT OR IGNORE INTO rooms (room_id, definition, created_at) VALUES (?, ?, ?)",
                [room.room_id, room.SerializeToString(), now],
            )
            return cursor.rowcount == 1

        return await self._db.transaction(insert)

    async def delete_room(self, room_id: str) -> None:
        def delete(db: sqlite_utils.Database) -> None:
            db.execute("DELETE FROM members WHERE room_id = ?", [room_id])
            db.execute("DELETE FROM rooms WHERE room_id = ?", [room_id])

        await self._db.transaction(delete)

    async def all_members(self) -> list[MemberRow]:
        rows = await self._db.run(
            lambda db: db.execute("SELECT room_id, user_id, role, added_ms FROM members ORDER BY room_id").fetchall()
        )
        return [MemberRow(*row) for row in rows]

    async def put_members(self, rows: Sequence[MemberRow]) -> None:
        def put(db: sqlite_utils.Database) -> None:
            db.conn.executemany(
                "INSERT INTO members (room_id, user_id, role, added_ms) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (room_id, user_id) DO UPDATE SET role = excluded.role",
                [(r.room_id, r.user_id, r.role, r.added_ms) for r in rows],
            )

        await self._db.transaction(put)

    async def remove_members(self, room_id: str, user_ids: Sequence[str]) -> None:
        await self._db.transaction(
            lambda db: db.conn.executemany(
                "DELETE FROM members WHERE room_id = ? AND user_id = ?", [(room_id, u) for u in user_ids]
            )
        )

    async def close(self) -> None:
        await self._db.close()
