"""Run-time rooms on SQLite (`room.sqlite3` under the data directory)."""

from __future__ import annotations

import dataclasses
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sqlite_utils

from parley.room.v1 import room_pb2
from services.room.storage import CHANNEL_TABLES, ChannelRow, CommitRow, InvitationRow, MemberRow, WrapRow
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


def _migration_3(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE channels (
            space_id TEXT PRIMARY KEY,
            name TEXT UNIQUE,
            kind INTEGER NOT NULL,
            creator TEXT NOT NULL,
            created_ms INTEGER NOT NULL,
            epoch INTEGER NOT NULL,
            state BLOB NOT NULL
        );
        CREATE TABLE channel_commits (
            space_id TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            commit_bytes BLOB NOT NULL,
            signature BLOB NOT NULL,
            PRIMARY KEY (space_id, epoch)
        );
        CREATE TABLE channel_wraps (
            space_id TEXT NOT NULL,
            epoch INTEGER NOT NULL,
            device_id TEXT NOT NULL,
            wrap BLOB NOT NULL,
            signed INTEGER NOT NULL,
            PRIMARY KEY (space_id, epoch, device_id)
        );
        """
    )


def _migration_4(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE channel_invitations (
            space_id TEXT NOT NULL,
            invite_id TEXT NOT NULL,
            verifier BLOB NOT NULL,
            package BLOB NOT NULL,
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
        """
    )


def _migration_5(db: sqlite_utils.Database) -> None:
    db.execute(
        "CREATE TABLE channel_join_requests (space_id TEXT NOT NULL, user_id TEXT NOT NULL, "
        "requested_ms INTEGER NOT NULL, PRIMARY KEY (space_id, user_id))"
    )


MIGRATIONS = [_migration_1, _migration_2, _migration_3, _migration_4, _migration_5]
_INVITATION = "space_id, invite_id, verifier, package, uses_left, expires_ms, failures, burned, created_by"
_CHANNEL = "space_id, COALESCE(name, ''), kind, creator, created_ms, epoch, state"


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
            for table in CHANNEL_TABLES:
                db.execute(f"DELETE FROM {table} WHERE space_id = ?", [room_id])
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

    async def insert_channel(self, channel: ChannelRow, commit: CommitRow, wraps: Sequence[WrapRow]) -> bool:
        def insert(db: sqlite_utils.Database) -> bool:
            try:
                db.execute(
                    "INSERT INTO channels (space_id, name, kind, creator, created_ms, epoch, state) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
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
            except sqlite3.IntegrityError:
                return False
            _put_commit(db, commit, wraps)
            return True

        return await self._db.transaction(insert)

    async def channel(self, space_id: str = "", name: str = "") -> ChannelRow | None:
        column, value = ("space_id", space_id) if space_id else ("name", name)
        row = await self._db.run(
            lambda db: db.execute(f"SELECT {_CHANNEL} FROM channels WHERE {column} = ?", [value]).fetchone()
        )
        return ChannelRow(*row) if row else None

    async def all_channels(self) -> list[ChannelRow]:
        rows = await self._db.run(lambda db: db.execute(f"SELECT {_CHANNEL} FROM channels").fetchall())
        return [ChannelRow(*row) for row in rows]

    async def commits(self, space_id: str, from_epoch: int) -> list[CommitRow]:
        rows = await self._db.run(
            lambda db: db.execute(
                "SELECT space_id, epoch, commit_bytes, signature FROM channel_commits "
                "WHERE space_id = ? AND epoch >= ? ORDER BY epoch",
                [space_id, from_epoch],
            ).fetchall()
        )
        return [CommitRow(*row) for row in rows]

    async def append_commit(self, channel: ChannelRow, commit: CommitRow, wraps: Sequence[WrapRow]) -> bool:
        def append(db: sqlite_utils.Database) -> bool:
            cursor = db.execute(
                "UPDATE channels SET epoch = ?, state = ? WHERE space_id = ? AND epoch = ?",
                [channel.epoch, channel.state, channel.space_id, channel.epoch - 1],
            )
            if cursor.rowcount != 1:
                return False
            _put_commit(db, commit, wraps)
            return True

        return await self._db.transaction(append)

    async def wraps(self, space_id: str, from_epoch: int, device_id: str = "") -> list[WrapRow]:
        sql = "SELECT space_id, epoch, device_id, wrap, signed FROM channel_wraps WHERE space_id = ? AND epoch >= ?"
        args: list[object] = [space_id, from_epoch]
        if device_id:
            sql += " AND device_id = ?"
            args.append(device_id)
        rows = await self._db.run(lambda db: db.execute(sql + " ORDER BY epoch, device_id", args).fetchall())
        return [WrapRow(s, e, d, w, bool(signed)) for s, e, d, w, signed in rows]

    async def add_wraps(self, wraps: Sequence[WrapRow]) -> None:
        await self._db.transaction(
            lambda db: db.conn.executemany(
                "INSERT OR IGNORE INTO channel_wraps (space_id, epoch, device_id, wrap, signed) VALUES (?, ?, ?, ?, ?)",
                [(w.space_id, w.epoch, w.device_id, w.wrap, int(w.signed)) for w in wraps],
            )
        )

    async def insert_invitation(self, invitation: InvitationRow) -> bool:
        def insert(db: sqlite_utils.Database) -> bool:
            cursor = db.execute(
                f"INSERT OR IGNORE INTO channel_invitations ({_INVITATION}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                list(dataclasses.astuple(invitation)),
            )
            return cursor.rowcount == 1

        return await self._db.transaction(insert)

    async def invitation(self, space_id: str, invite_id: str) -> InvitationRow | None:
        row = await self._db.run(
            lambda db: db.execute(
                f"SELECT {_INVITATION} FROM channel_invitations WHERE space_id = ? AND invite_id = ?",
                [space_id, invite_id],
            ).fetchone()
        )
        return _invitation(row) if row else None

    async def take_use(self, space_id: str, invite_id: str, user_id: str, now_ms: int) -> bool:
        def take(db: sqlite_utils.Database) -> bool:
            cursor = db.execute(
                "UPDATE channel_invitations SET uses_left = uses_left - 1 WHERE space_id = ? AND invite_id = ? "
                "AND uses_left > 0 AND NOT burned AND expires_ms > ?",
                [space_id, invite_id, now_ms],
            )
            if cursor.rowcount != 1:
                return False
            db.execute(
                "INSERT OR IGNORE INTO channel_grants (space_id, invite_id, user_id) VALUES (?, ?, ?)",
                [space_id, invite_id, user_id],
            )
            return True

        return await self._db.transaction(take)

    async def count_failure(self, space_id: str, invite_id: str, burn_at: int) -> None:
        await self._db.transaction(
            lambda db: db.execute(
                "UPDATE channel_invitations SET failures = failures + 1, burned = (failures + 1 >= ?) "
                "WHERE space_id = ? AND invite_id = ?",
                [burn_at, space_id, invite_id],
            )
        )

    async def has_grant(self, space_id: str, user_id: str, invite_id: str = "", now_ms: int = 0) -> bool:
        sql = (
            "SELECT 1 FROM channel_grants g JOIN channel_invitations i USING (space_id, invite_id) "
            "WHERE g.space_id = ? AND g.user_id = ? AND i.expires_ms > ?"
        )
        args: list[object] = [space_id, user_id, now_ms]
        if invite_id:
            sql += " AND g.invite_id = ?"
            args.append(invite_id)
        return bool(await self._db.run(lambda db: db.execute(sql, args).fetchone()))

    async def use_grant(self, space_id: str, invite_id: str, user_id: str) -> bool:
        def use(db: sqlite_utils.Database) -> bool:
            cursor = db.execute(
                "DELETE FROM channel_grants WHERE space_id = ? AND invite_id = ? AND user_id = ?",
                [space_id, invite_id, user_id],
            )
            return cursor.rowcount == 1

        return await self._db.transaction(use)

    async def put_join_request(self, space_id: str, user_id: str, now_ms: int) -> None:
        await self._db.transaction(
            lambda db: db.execute(
                "INSERT OR IGNORE INTO channel_join_requests (space_id, user_id, requested_ms) VALUES (?, ?, ?)",
                [space_id, user_id, now_ms],
            )
        )

    async def join_requests(self, space_id: str) -> list[tuple[str, int]]:
        rows = await self._db.run(
            lambda db: db.execute(
                "SELECT user_id, requested_ms FROM channel_join_requests WHERE space_id = ? ORDER BY requested_ms",
                [space_id],
            ).fetchall()
        )
        return [(str(user_id), int(when)) for user_id, when in rows]

    async def drop_join_requests(self, space_id: str, user_ids: Sequence[str]) -> None:
        await self._db.transaction(
            lambda db: db.conn.executemany(
                "DELETE FROM channel_join_requests WHERE space_id = ? AND user_id = ?",
                [(space_id, u) for u in user_ids],
            )
        )

    async def close(self) -> None:
        await self._db.close()


def _put_commit(db: sqlite_utils.Database, commit: CommitRow, wraps: Sequence[WrapRow]) -> None:
    db.execute(
        "INSERT INTO channel_commits (space_id, epoch, commit_bytes, signature) VALUES (?, ?, ?, ?)",
        [commit.space_id, commit.epoch, commit.commit, commit.signature],
    )
    db.conn.executemany(
        "INSERT INTO channel_wraps (space_id, epoch, device_id, wrap, signed) VALUES (?, ?, ?, ?, ?)",
        [(w.space_id, w.epoch, w.device_id, w.wrap, int(w.signed)) for w in wraps],
    )


def _invitation(row: Any) -> InvitationRow:
    """A row as SQLite returns it (`burned` as 0 or 1)."""
    return InvitationRow(row[0], row[1], row[2], row[3], row[4], row[5], row[6], bool(row[7]), row[8])
