"""PostgreSQL through psycopg 3: a pool opened in the running loop, a schema per service, numbered migrations.

Each service keeps its tables in a schema of its own (`parley_history`, ...),
so one database can hold every service without their tables meeting; its
connections find them through `search_path`. Migrations are numbered SQL
scripts recorded in the schema's `schema_migrations`, applied at start under
an advisory lock: processes starting together take turns, and each applies
only what the others have not.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Sequence

import psycopg
from psycopg import conninfo
from psycopg.rows import TupleRow
from psycopg_pool import AsyncConnectionPool, PoolTimeout

OPEN_TIMEOUT_SECONDS = 10.0
Connection = psycopg.AsyncConnection[TupleRow]
Pool = AsyncConnectionPool[Connection]


def where(url: str) -> str:
    """The server and database a URL names, without its credentials (for messages and logs)."""
    try:
        parts = conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "an unreadable PostgreSQL URL"
    return f"{parts.get('host', 'localhost')}:{parts.get('port', 5432)}/{parts.get('dbname', '')}"


class PostgresDatabase:
    """A pool of connections to one service's schema."""

    def __init__(self, url: str, schema: str, migrations: Sequence[str], max_connections: int = 10) -> None:
        self.schema = schema
        self._url = url
        self._migrations = migrations
        self._max_connections = max_connections
        self._pool: Pool | None = None

    async def open(self) -> None:
        """Connects (in the running loop) and migrates; on failure nothing stays open."""
        pool: Pool = AsyncConnectionPool(
            self._url,
            min_size=1,
            max_size=self._max_connections,
            kwargs={"autocommit": True},
            configure=self._configure,
            open=False,
            name=self.schema,
        )
        self._pool = pool
        try:
            await self._probe()
            try:
                await pool.open(wait=True, timeout=OPEN_TIMEOUT_SECONDS)
            except PoolTimeout as exc:
                raise ConnectionError(f"storage: cannot connect to PostgreSQL at {where(self._url)}: {exc}") from None
            await self._migrate()
        except BaseException:
            await self.close()
            raise

    async def _probe(self) -> None:
        """One connection first, so a database that is missing or refuses us is named at once, with the reason."""
        try:
            probe = await psycopg.AsyncConnection.connect(self._url, connect_timeout=int(OPEN_TIMEOUT_SECONDS))
        except psycopg.OperationalError as exc:
            reason = " ".join(str(exc).split())
            raise ConnectionError(f"storage: cannot connect to PostgreSQL at {where(self._url)}: {reason}") from None
        await probe.close()

    async def _configure(self, connection: Connection) -> None:
        await connection.execute(f"SET search_path TO {self.schema}")

    @contextlib.asynccontextmanager
    async def connection(self) -> AsyncIterator[Connection]:
        """A connection of the pool in autocommit mode: each statement commits by itself."""
        task = asyncio.current_task()
        cancelling = task.cancelling() if task is not None else 0
        async with self._require().connection() as connection:
            if task is not None and task.cancelling() > cancelling:
                # The pool waits for a free connection with asyncio.wait_for, which on Python 3.11
                # loses a cancellation that arrives as the connection is handed over: raise it here.
                raise asyncio.CancelledError
            yield connection

    @contextlib.asynccontextmanager
    async def transaction(self, read_only: bool = False) -> AsyncIterator[Connection]:
        """A connection inside one transaction: it commits when the block ends, rolls back when it raises.

        READ COMMITTED, unless `read_only`: then REPEATABLE READ, so the block's
        reads see one state of the database.
        """
        async with self.connection() as connection, connection.transaction():
            if read_only:
                await connection.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield connection

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def _require(self) -> Pool:
        if self._pool is None:
            raise RuntimeError(f"the {self.schema} database is not open")
        return self._pool

    async def _migrate(self) -> None:
        async with self.connection() as connection:
            lock = migration_lock_key(self.schema)
            await connection.execute("SELECT pg_advisory_lock(%s)", [lock])
            try:
                await apply_migrations(connection, self.schema, self._migrations)
            finally:
                await connection.execute("SELECT pg_advisory_unlock(%s)", [lock])


def migration_lock_key(schema: str) -> int:
    """The advisory lock a schema's migrations are applied under: a signed 64-bit number from its name."""
    digest = hashlib.blake2b(f"parley migrations {schema}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


async def apply_migrations(connection: Connection, schema: str, migrations: Sequence[str]) -> None:
    """Applies the scripts newer than those recorded, each in its own transaction (the caller holds the lock)."""
    await connection.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
    await connection.execute(
        f"CREATE TABLE IF NOT EXISTS {schema}.schema_migrations "
        "(version INTEGER PRIMARY KEY, applied_at DOUBLE PRECISION NOT NULL)"
    )
    cursor = await connection.execute(f"SELECT version FROM {schema}.schema_migrations")
    applied = {row[0] for row in await cursor.fetchall()}
    for version, script in enumerate(migrations, start=1):
        if version in applied:
            continue
        async with connection.transaction():
            await connection.execute(script)
            await connection.execute(
                f"INSERT INTO {schema}.schema_migrations (version, applied_at) VALUES (%s, %s)", [version, time.time()]
            )
