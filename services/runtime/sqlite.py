"""SQLite through sqlite-utils: WAL, numbered migrations, off-loop execution.

Each store owns one connection used from one worker thread, so blocking
statements never run on the event loop and the connection is never shared
across threads. Callers take turns: a unit of work (`run`, `transaction`, or
a transaction filled step by step from async code, `begin`) has the
connection to itself until it ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import sqlite_utils

T = TypeVar("T")
WAL_ATTEMPTS = 100
Migration = Callable[[sqlite_utils.Database], None]


class SqliteDatabase:
    """An sqlite-utils database with its own worker thread."""

    def __init__(self, path: Path, migrations: Sequence[Migration]) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-{path.stem}")
        self._db: sqlite_utils.Database | None = None
        self._migrations = migrations
        self._turn = asyncio.Lock()

    async def open(self) -> None:
        """Opens (creating if needed) and migrates; on failure nothing stays open."""
        try:
            await self._submit(self._open)
        except BaseException:
            await self.close()
            raise

    def _open(self) -> None:
        # Owner-only: the databases hold secrets (e.g. token signing keys).
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_CREAT | os.O_RDWR, 0o600))
        connection = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db = sqlite_utils.Database(connection)
        self._db = db
        db.execute("PRAGMA busy_timeout=5000")  # first: another connection may be opening the file too
        _use_wal(db)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA foreign_keys=ON")
        apply_migrations(db, self._migrations)

    async def run(self, work: Callable[[sqlite_utils.Database], T]) -> T:
        """Runs `work(db)` on the database thread."""
        async with self._turn:
            return await self._submit(lambda: work(self._require()))

    async def transaction(self, work: Callable[[sqlite_utils.Database], T]) -> T:
        """Runs `work(db)` inside one IMMEDIATE transaction."""

        def atomically() -> T:
            db = self._require()
            db.execute("BEGIN IMMEDIATE")
            try:
                result = work(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")
            return result

        async with self._turn:
            return await self._submit(atomically)

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[SqliteTransaction]:
        """One IMMEDIATE transaction filled step by step (`SqliteTransaction.run`) by async code.

        It commits when the block ends, and rolls back when it raises. Nothing
        else uses the connection meanwhile, so the block must not call `run`,
        `transaction` or `begin` itself.
        """
        async with self._turn:
            try:
                await self._submit(lambda: self._require().execute("BEGIN IMMEDIATE"))
                yield SqliteTransaction(self)
            except BaseException:
                await self._end(_rollback)
                raise
            try:
                await self._end(lambda db: db.execute("COMMIT"))
            except BaseException:
                await self._end(_rollback)
                raise

    async def _end(self, statement: Callable[[sqlite_utils.Database], object]) -> None:
        # Queued on the database thread even if this task is cancelled while it waits,
        # so whatever runs next finds no transaction open.
        await asyncio.shield(self._submit(lambda: statement(self._require())))

    async def close(self) -> None:
        if self._db is not None:
            await self._submit(self._db.conn.close)
            self._db = None
        self._executor.shutdown(wait=True)

    def _require(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError(f"database {self.path} is not open")
        return self._db

    async def _submit(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)


def _use_wal(db: sqlite_utils.Database) -> None:
    """Switches a new file to WAL; another connection switching it at the same moment makes SQLite
    answer "locked" at once (the busy timeout does not apply), so it is tried again for a while."""
    for attempt in range(WAL_ATTEMPTS):
        try:
            db.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or attempt == WAL_ATTEMPTS - 1:
                raise
            time.sleep(0.05)


def _rollback(db: sqlite_utils.Database) -> None:
    if db.conn.in_transaction:
        db.execute("ROLLBACK")


class SqliteTransaction:
    """The steps of one `SqliteDatabase.begin` transaction."""

    def __init__(self, database: SqliteDatabase) -> None:
        self._database = database

    async def run(self, work: Callable[[sqlite_utils.Database], T]) -> T:
        """Runs `work(db)` on the database thread, inside the transaction."""
        return await self._database._submit(lambda: work(self._database._require()))


def apply_migrations(db: sqlite_utils.Database, migrations: Sequence[Migration]) -> None:
    """Applies migrations newer than the recorded schema version, each atomically."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at REAL)")
    applied = {row[0] for row in db.execute("SELECT version FROM schema_migrations").fetchall()}
    for version, migrate in enumerate(migrations, start=1):
        if version in applied:
            continue
        db.execute("BEGIN IMMEDIATE")
        try:
            # Another connection opening the same file may have applied it meanwhile.
            if db.execute("SELECT 1 FROM schema_migrations WHERE version = ?", [version]).fetchone() is None:
                migrate(db)
                db.execute("INSERT INTO schema_migrations VALUES (?, ?)", [version, time.time()])
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")
