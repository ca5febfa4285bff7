"""Run-time rooms on PostgreSQL (schema `parley_room`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import psycopg

from parley.room.v1 import room_pb2
from services.room.storage import CHANNEL_TABLES, ChannelRow, CommitRow, InvitationRow, MemberRow, WrapRow
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
    """
    CREATE TABLE channels (
        space_id TEXT PRIMARY KEY,
        name TEXT UNIQUE,
        kind INTEGER NOT NULL,
        creator TEXT NOT NULL,
        created_ms BIGINT NOT NULL,
        epoch BIGINT NOT NULL,
        state BYTEA NOT NULL
    );
    CREATE TABLE channel_commits (
        space_id TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        commit_bytes BYTEA NOT NULL,
        signature BYTEA NOT NULL,
        PRIMARY KEY (space_id, epoch)
    );
    CREATE TABLE channel_wraps (
        space_id TEXT NOT NULL,
        epoch BIGINT NOT NULL,
        device_id TEXT NOT NULL,
        wrap BYTEA NOT NULL,
        signed BOOLEAN NOT NULL,
        PRIMARY KEY (space_id, epoch, device_id)
    );
    """,
    """
    CREATE TABLE channel_invitations (
        space_id TEXT NOT NULL,
        invite_id TEXT NOT NULL,
        verifier BYTEA NOT NULL,
        package BYTEA NOT NULL,
        uses_left INTEGER NOT NULL,
        expires_ms BIGINT NOT NULL,
        failures INTEGER NOT NULL,
        burned BOOLEAN NOT NULL,
        created_by TEXT NOT NULL,
        PRIMARY KEY (space_id, invite_id)
    );
    CREATE TABLE channel_grants (
        space_id TEXT NOT NULL,
        invite_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        PRIMARY KEY (space_id, invite_id, user_id)
    );
    """,
    """
    CREATE TABLE channel_join_requests (
        space_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        requested_ms BIGINT NOT NULL,
        PRIMARY KEY (space_id, user_id)
    )
    """,
]
_INVITATION = "space_id, invite_id, verifier, package, uses_left, expires_ms, failures, burned, created_by"
_CHANNEL = "space_id, COALESCE(name, ''), kind, creator, created_ms, epoch, state"


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
            for table in CHANNEL_TABLES:
                await connection.execute(f"DELETE FROM {table} WHERE space_id = %s", [room_id])
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

    async def insert_channel(self, channel: ChannelRow, commit: CommitRow, wraps: Sequence[WrapRow]) -> bool:
        async with self._db.connection() as connection, connection.transaction():
            cursor = await connection.execute(
                "INSERT INTO channels (space_id, name, kind, creator, created_ms, epoch, state) "
                "VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [
                    channel.space_id,
                    channel.name or None,
                    channel.kind,
                    channel.creator,
                    channel.created_ms,
                    channel.epoch,
                    channel.state,
                ],
            )
            if cursor.rowcount != 1:
                return False
            await _put_commit(connection, commit, wraps)
            return True

    async def channel(self, space_id: str = "", name: str = "") -> ChannelRow | None:
        column, value = ("space_id", space_id) if space_id else ("name", name)
        async with self._db.connection() as connection:
            cursor = await connection.execute(f"SELECT {_CHANNEL} FROM channels WHERE {column} = %s", [value])
            row = await cursor.fetchone()
            return ChannelRow(*row) if row else None

    async def all_channels(self) -> list[ChannelRow]:
        async with self._db.connection() as connection:
            cursor = await connection.execute(f"SELECT {_CHANNEL} FROM channels")
            return [ChannelRow(*row) for row in await cursor.fetchall()]

    async def commits(self, space_id: str, from_epoch: int) -> list[CommitRow]:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                "SELECT space_id, epoch, commit_bytes, signature FROM channel_commits "
                "WHERE space_id = %s AND epoch >= %s ORDER BY epoch",
                [space_id, from_epoch],
            )
            return [CommitRow(*row) for row in await cursor.fetchall()]

    async def append_commit(self, channel: ChannelRow, commit: CommitRow, wraps: Sequence[WrapRow]) -> bool:
        async with self._db.connection() as connection, connection.transaction():
            cursor = await connection.execute(
                "UPDATE channels SET epoch = %s, state = %s WHERE space_id = %s AND epoch = %s",
                [channel.epoch, channel.state, channel.space_id, channel.epoch - 1],
            )
            if cursor.rowcount != 1:
                return False
            await _put_commit(connection, commit, wraps)
            return True

    async def wraps(self, space_id: str, from_epoch: int, device_id: str = "") -> list[WrapRow]:
        sql = "SELECT space_id, epoch, device_id, wrap, signed FROM channel_wraps WHERE space_id = %s AND epoch >= %s"
        args: list[object] = [space_id, from_epoch]
        if device_id:
            sql += " AND device_id = %s"
            args.append(device_id)
        async with self._db.connection() as connection:
            cursor = await connection.execute(sql + " ORDER BY epoch, device_id", args)
            return [WrapRow(*row) for row in await cursor.fetchall()]

    async def add_wraps(self, wraps: Sequence[WrapRow]) -> None:
        async with self._db.connection() as connection, connection.transaction(), connection.cursor() as cursor:
            await cursor.executemany(
                "INSERT INTO channel_wraps (space_id, epoch, device_id, wrap, signed) VALUES (%s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [(w.space_id, w.epoch, w.device_id, w.wrap, w.signed) for w in wraps],
            )

    async def insert_invitation(self, invitation: InvitationRow) -> bool:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                f"INSERT INTO channel_invitations ({_INVITATION}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                list(dataclasses.astuple(invitation)),
            )
            return cursor.rowcount == 1

    async def invitation(self, space_id: str, invite_id: str) -> InvitationRow | None:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {_INVITATION} FROM channel_invitations WHERE space_id = %s AND invite_id = %s",
                [space_id, invite_id],
            )
            row = await cursor.fetchone()
            return InvitationRow(*row) if row else None

    async def take_use(self, space_id: str, invite_id: str, user_id: str, now_ms: int) -> bool:
        async with self._db.connection() as connection, connection.transaction():
            cursor = await connection.execute(
                "UPDATE channel_invitations SET uses_left = uses_left - 1 WHERE space_id = %s AND invite_id = %s "
                "AND uses_left > 0 AND NOT burned AND expires_ms > %s",
                [space_id, invite_id, now_ms],
            )
            if cursor.rowcount != 1:
                return False
            await connection.execute(
                "INSERT INTO channel_grants (space_id, invite_id, user_id) VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                [space_id, invite_id, user_id],
            )
            return True

    async def count_failure(self, space_id: str, invite_id: str, burn_at: int) -> None:
        async with self._db.connection() as connection:
            await connection.execute(
                "UPDATE channel_invitations SET failures = failures + 1, burned = (failures + 1 >= %s) "
                "WHERE space_id = %s AND invite_id = %s",
                [burn_at, space_id, invite_id],
            )

    async def has_grant(self, space_id: str, user_id: str, invite_id: str = "", now_ms: int = 0) -> bool:
        sql = (
            "SELECT 1 FROM channel_grants g JOIN channel_invitations i USING (space_id, invite_id) "
            "WHERE g.space_id = %s AND g.user_id = %s AND i.expires_ms > %s"
        )
        args: list[object] = [space_id, user_id, now_ms]
        if invite_id:
            sql += " AND g.invite_id = %s"
            args.append(invite_id)
        async with self._db.connection() as connection:
            cursor = await connection.execute(sql, args)
            return await cursor.fetchone() is not None

    async def use_grant(self, space_id: str, invite_id: str, user_id: str) -> bool:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                "DELETE FROM channel_grants WHERE space_id = %s AND invite_id = %s AND user_id = %s",
                [space_id, invite_id, user_id],
            )
            return cursor.rowcount == 1

    async def put_join_request(self, space_id: str, user_id: str, now_ms: int) -> None:
        async with self._db.connection() as connection:
            await connection.execute(
                "INSERT INTO channel_join_requests (space_id, user_id, requested_ms) VALUES (%s, %s, %s) "
                "ON CONFLICT DO NOTHING",
                [space_id, user_id, now_ms],
            )

    async def join_requests(self, space_id: str) -> list[tuple[str, int]]:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                "SELECT user_id, requested_ms FROM channel_join_requests WHERE space_id = %s ORDER BY requested_ms",
                [space_id],
            )
            return [(str(user_id), int(when)) for user_id, when in await cursor.fetchall()]

    async def drop_join_requests(self, space_id: str, user_ids: Sequence[str]) -> None:
        async with self._db.connection() as connection:
            await connection.execute(
                "DELETE FROM channel_join_requests WHERE space_id = %s AND user_id = ANY(%s)",
                [space_id, list(user_ids)],
            )

    async def close(self) -> None:
        await self._db.close()


async def _put_commit(connection: psycopg.AsyncConnection[Any], commit: CommitRow, wraps: Sequence[WrapRow]) -> None:
    await connection.execute(
        "INSERT INTO channel_commits (space_id, epoch, commit_bytes, signature) VALUES (%s, %s, %s, %s)",
        [commit.space_id, commit.epoch, commit.commit, commit.signature],
    )
    async with connection.cursor() as cursor:
        await cursor.executemany(
            "INSERT INTO channel_wraps (space_id, epoch, device_id, wrap, signed) VALUES (%s, %s, %s, %s, %s)",
            [(w.space_id, w.epoch, w.device_id, w.wrap, w.signed) for w in wraps],
        )
