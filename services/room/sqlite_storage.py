"""Run-time rooms on SQLite (`room.sqlite3` under the data directory)."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from parley.room.v1 import room_pb2
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


MIGRATIONS = [_migration_1]


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
        await self._db.transaction(lambda db: db.execute("DELETE FROM rooms WHERE room_id = ?", [room_id]))

    async def close(self) -> None:
        await self._db.close()
