"""Who may read a private room's log: the room service says (SetLogReaders), user reads are checked here.

Kept beside the logs (`log_readers.sqlite3` under the data directory, or
schema `parley_log_readers` on the history service's PostgreSQL URL) and
held in memory, so a check costs no read. A log with no entry is readable
by any signed-in user; services read every log.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import grpc
import sqlite_utils

from parley.api.v1 import errors_pb2
from services.runtime.config import Config
from services.runtime.errors import ServiceError
from services.runtime.principal import Principal
from services.runtime.sqlite import SqliteDatabase

if TYPE_CHECKING:
    from services.runtime.postgres import PostgresDatabase

POSTGRES_SCHEMA = "parley_log_readers"
_TABLE = "CREATE TABLE restricted_logs (room_id TEXT PRIMARY KEY, readers TEXT NOT NULL)"


class ReadersStorage(Protocol):
    async def all(self) -> dict[str, set[str]]: ...

    async def put(self, room_id: str, readers: set[str] | None) -> None:
        """Restricts the log to `readers`; None lifts the restriction."""

    async def close(self) -> None: ...


class LogReaders:
    def __init__(self, storage: ReadersStorage) -> None:
        self._storage = storage
        self._restricted: dict[str, set[str]] = {}

    async def load(self) -> None:
        self._restricted = await self._storage.all()

    async def set(self, room_id: str, restricted: bool, user_ids: list[str]) -> None:
        readers = set(user_ids) if restricted else None
        await self._storage.put(room_id, readers)
        if readers is None:
            self._restricted.pop(room_id, None)
        else:
            self._restricted[room_id] = readers

    def check(self, room_id: str, caller: Principal) -> None:
        readers = self._restricted.get(room_id)
        if readers is None or caller.is_service or caller.user_id in readers:
            return
        raise ServiceError(
            grpc.StatusCode.PERMISSION_DENIED,
            errors_pb2.ERROR_REASON_NOT_A_MEMBER,
            f"room {room_id!r} is private and you are not a member",
            room_id=room_id,
        )

    async def close(self) -> None:
        await self._storage.close()


async def open_log_readers(config: Config) -> LogReaders:
    url = config.storage.url_of("history")
    storage: ReadersStorage
    if url:
        storage = await PostgresReadersStorage.open(url, config.storage.max_connections)
    else:
        storage = await SqliteReadersStorage.open(config.server.data_dir / "log_readers.sqlite3")
    readers = LogReaders(storage)
    await readers.load()
    return readers


def _sqlite_migration_1(db: sqlite_utils.Database) -> None:
    db.execute(_TABLE)


class SqliteReadersStorage:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteReadersStorage:
        db = SqliteDatabase(path, [_sqlite_migration_1])
        await db.open()
        return cls(db)

    async def all(self) -> dict[str, set[str]]:
        rows = await self._db.run(lambda db: db.execute("SELECT room_id, readers FROM restricted_logs").fetchall())
        return {room_id: set(json.loads(readers)) for room_id, readers in rows}

    async def put(self, room_id: str, readers: set[str] | None) -> None:
        def write(db: sqlite_utils.Database) -> None:
            if readers is None:
                db.execute("DELETE FROM restricted_logs WHERE room_id = ?", [room_id])
            else:
                db.execute(
                    "INSERT INTO restricted_logs (room_id, readers) VALUES (?, ?) "
                    "ON CONFLICT (room_id) DO UPDATE SET readers = excluded.readers",
                    [room_id, json.dumps(sorted(readers))],
                )

        await self._db.transaction(write)

    async def close(self) -> None:
        await self._db.close()


class PostgresReadersStorage:
    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, url: str, max_connections: int) -> PostgresReadersStorage:
        # Imported here: psycopg is loaded only by processes that use PostgreSQL.
        from services.runtime.postgres import PostgresDatabase

        db = PostgresDatabase(url, POSTGRES_SCHEMA, [_TABLE], max_connections)
        await db.open()
        return cls(db)

    async def all(self) -> dict[str, set[str]]:
        async with self._db.connection() as connection:
            cursor = await connection.execute("SELECT room_id, readers FROM restricted_logs")
            return {room_id: set(json.loads(readers)) for room_id, readers in await cursor.fetchall()}

    async def put(self, room_id: str, readers: set[str] | None) -> None:
        async with self._db.connection() as connection:
            if readers is None:
                await connection.execute("DELETE FROM restricted_logs WHERE room_id = %s", [room_id])
            else:
                await connection.execute(
                    "INSERT INTO restricted_logs (room_id, readers) VALUES (%s, %s) "
                    "ON CONFLICT (room_id) DO UPDATE SET readers = excluded.readers",
                    [room_id, json.dumps(sorted(readers))],
                )

    async def close(self) -> None:
        await self._db.close()
