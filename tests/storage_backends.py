"""Each storage test runs against both backends: SQLite files in the test's directory, and PostgreSQL.

A test module takes the fixtures with `pytest_plugins = ["tests.storage_backends"]`:
`storage_url` (one run per backend), `history_storage`, `identity_storage`,
`room_storage` (opened on it), and `postgres_url` for tests of PostgreSQL
alone. PostgreSQL runs on 127.0.0.1:5432 (trust auth); the test
session gets a database of its own, dropped at the end whatever happened,
and each test starts with the services' schemas gone (their migrations run
again when the test opens a storage).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest

from services.history.storage import StoredHistory, open_history_storage
from services.identity.storage import IdentityStorage, open_identity_storage
from services.room.storage import RoomStorage, open_room_storage
from tests.scale_out import fresh_database
from tests.storage_support import storage_config

BACKENDS = ["sqlite", "postgresql"]
SCHEMAS = ("parley_identity", "parley_room", "parley_history", "parley_mailbox", "parley_log_readers", "parley_file")


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    """This test session's database: parley_test_<pid>_<random>."""
    with fresh_database() as url:
        yield url


def empty_schemas(url: str) -> None:
    with psycopg.connect(url, autocommit=True) as connection:
        for schema in SCHEMAS:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.fixture(params=BACKENDS)
def storage_url(request: pytest.FixtureRequest) -> str:
    """`storage.url` for the backend: "" (SQLite under the data directory) or a PostgreSQL URL."""
    if request.param == "sqlite":
        return ""
    url: str = request.getfixturevalue("postgres_database")
    empty_schemas(url)
    return url


@pytest.fixture
def postgres_url(postgres_database: str) -> str:
    """A PostgreSQL `storage.url` with the services' schemas empty."""
    empty_schemas(postgres_database)
    return postgres_database


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    """An event loop for a synchronous test (hypothesis, whose examples share the fixtures)."""
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture
def history_on_runner(runner: asyncio.Runner, storage_url: str, tmp_path: Path) -> Iterator[StoredHistory]:
    """A history storage opened on `runner`'s loop, for every example of a synchronous test."""
    storage = runner.run(open_history_storage(storage_config(tmp_path, storage_url)))
    try:
        yield storage
    finally:
        runner.run(storage.close())


@pytest.fixture
async def history_storage(storage_url: str, tmp_path: Path) -> AsyncIterator[StoredHistory]:
    storage = await open_history_storage(storage_config(tmp_path, storage_url))
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
async def identity_storage(storage_url: str, tmp_path: Path) -> AsyncIterator[IdentityStorage]:
    storage = await open_identity_storage(storage_config(tmp_path, storage_url))
    try:
        yield storage
    finally:
        await storage.close()


@pytest.fixture
async def room_storage(storage_url: str, tmp_path: Path) -> AsyncIterator[RoomStorage]:
    storage = await open_room_storage(storage_config(tmp_path, storage_url))
    try:
        yield storage
    finally:
        await storage.close()
