"""Rooms created at run time, on SQLite (config rooms live in the config file)."""

from __future__ import annotations

import sqlite_utils

from parley.room.v1 import room_pb2


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


def all_rooms(db: sqlite_utils.Database) -> list[room_pb2.Room]:
    rows = db.execute("SELECT definition FROM rooms ORDER BY room_id").fetchall()
    return [room_pb2.Room.FromString(row[0]) for row in rows]


def insert_room(db: sqlite_utils.Database, room: room_pb2.Room, now: float) -> bool:
    """False when the id is taken."""
    cursor = db.execute(
        "INSERT OR IGNORE INTO rooms (room_id, definition, created_at) VALUES (?, ?, ?)",
        [room.room_id, room.SerializeToString(), now],
    )
    return cursor.rowcount == 1


def delete_room(db: sqlite_utils.Database, room_id: str) -> None:
    db.execute("DELETE FROM rooms WHERE room_id = ?", [room_id])
