"""Run-time rooms on PostgreSQL (schema `parley_room`)."""

from __future__ import annotations

from collections.abc import Sequence

from parley.room.v1 import room_pb2
from services.room.storage import MemberRow
from services.runtime.postgres import PostgresDatabase

SCHEMA = "parley_room"
MIGRATIONS = [
    """
    CREATE TABLE rooms (
        room_id TEXT PRIMARY KEY,
        definition BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    )
    """,
    """
    CREATE TABLE members (
        room_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        role INTEGER NOT NULL,
        added_ms BIGINT NOT NULL,
        PRIMARY KEY (room_id, user_id)
    )
    """,
]


class PostgresRoomStorage:
    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, url: str, max_connections: int) -> PostgresRoomStorage:
        db = PostgresDatabase(url, SCHEMA, MIGRATIONS, max_connections)
        await db.open()
        return cls(db)

    async def all_rooms(self) -> list[room_pb2.Room]:
        async with self._db.connection() as connection:
            cursor = await connection.execute("SELECT definition FROM rooms ORDER BY room_id")
            return [room_pb2.Room.FromString(row[0]) for row in await cursor.fetchall()]

    async def insert_room(self, room: room_pb2.Room, now: float) -> bool:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                "INSERT INTO rooms (room_id, definition, created_at) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [room.room_id, room.SerializeToString(), now],
            )
            return cursor.rowcount == 1

    async def delete_room(self, room_id: str) -> None:
        async with self._db.connection() as connection, connection.transaction():
            await connection.execute("DELETE FROM members WHERE room_id = %s", [room_id])
            await connection.execute("DELETE FROM rooms WHERE room_id = %s", [room_id])

    async def all_members(self) -> list[MemberRow]:
        async with self._db.connection() as connection:
            cursor = await connection.execute("SELECT room_id, user_id, role, added_ms FROM members ORDER BY room_id")
            return [MemberRow(*row) for row in await cursor.fetchall()]

    async def put_members(self, rows: Sequence[MemberRow]) -> None:
        async with self._db.connection() as connection, connection.transaction(), connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO members (room_id, user_id, role, added_ms) VALUES (%s, %s, %s, %s) "
                "ON CONFLICT (room_id, user_id) DO UPDATE SET role = excluded.role",
                [(r.room_id, r.user_id, r.role, r.added_ms) for r in rows],
            )

    async def remove_members(self, room_id: str, user_ids: Sequence[str]) -> None:
        async with self._db.connection() as connection:
            await connection.execute(
                "DELETE FROM members WHERE room_id = %s AND user_id = ANY(%s)", [room_id, list(user_ids)]
            )

    async def close(self) -> None:
        await self._db.close()
