"""Every service's storage migrates once: opened again, or by several processes at once, on each backend."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest

from services.file.metadata import open_file_metadata
from services.history.log_readers import open_log_readers
from services.history.mailbox_storage import open_mailbox_storage
from services.history.storage import open_history_storage
from services.identity.storage import open_identity_storage
from services.room.storage import open_room_storage
from services.runtime.config import Config
from services.runtime.postgres import PostgresDatabase
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]

Opener = Callable[[Config], Awaitable[Any]]
SERVICES: dict[str, Opener] = {
    "identity": open_identity_storage,
    "room": open_room_storage,
    "history": open_history_storage,
    "mailbox": open_mailbox_storage,
    "log_readers": open_log_readers,
    "file": open_file_metadata,
}
# Services whose SQLite file is not named after them.
SQLITE_FILES = {"file": "files"}


def applied_versions(service: str, url: str, data_dir: Path) -> list[int]:
    """The migrations recorded for a service, in order, with repeats."""
    sql = "SELECT version FROM {} ORDER BY version"
    if not url:
        path = data_dir / f"{SQLITE_FILES.get(service, service)}.sqlite3"
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
            return [row[0] for row in db.execute(sql.format("schema_migrations")).fetchall()]
    with psycopg.connect(url) as connection:
        return [row[0] for row in connection.execute(sql.format(f"parley_{service}.schema_migrations")).fetchall()]


@pytest.mark.parametrize("service", SERVICES)
async def test_a_storage_opened_again_applies_nothing_twice(service: str, storage_url: str, tmp_path: Path) -> None:
    config = storage_config(tmp_path, storage_url)
    await (await SERVICES[service](config)).close()
    first = applied_versions(service, storage_url, tmp_path)
    assert first == list(range(1, len(first) + 1))
    await (await SERVICES[service](config)).close()
    assert applied_versions(service, storage_url, tmp_path) == first


@pytest.mark.parametrize("service", SERVICES)
async def test_storages_opening_at_once_migrate_once(service: str, storage_url: str, tmp_path: Path) -> None:
    config = storage_config(tmp_path, storage_url)
    opened = await asyncio.gather(*(SERVICES[service](config) for _ in range(4)))
    for storage in opened:
        await storage.close()
    versions = applied_versions(service, storage_url, tmp_path)
    assert versions == list(range(1, len(versions) + 1))


async def test_services_sharing_one_database_keep_to_their_own_schemas(postgres_url: str, tmp_path: Path) -> None:
    config = storage_config(tmp_path, postgres_url)
    for open_storage in SERVICES.values():
        await (await open_storage(config)).close()
    with psycopg.connect(postgres_url) as connection:
        rows = connection.execute(
            "SELECT table_schema, table_name FROM information_schema.tables "
            "WHERE table_schema IN ('parley_history', 'parley_identity', 'parley_mailbox', 'parley_room', "
            "'parley_log_readers', 'parley_file') ORDER BY 1, 2"
        ).fetchall()
    tables: dict[str, set[str]] = {}
    for schema, table in rows:
        tables.setdefault(schema, set()).add(table)
    assert tables == {
        "parley_history": {"schema_migrations", "room_logs", "events", "idempotency_keys", "retention"},
        "parley_identity": {
            "schema_migrations",
            "users",
            "devices",
            "login_challenges",
            "refresh_tokens",
            "signing_keys",
            "device_lists",
            "signed_prekeys",
            "one_time_prekeys",
            "kem_prekeys",
        },
        "parley_mailbox": {"schema_migrations", "heads", "envelopes"},
        "parley_room": {
            "schema_migrations",
            "rooms",
            "members",
            "channels",
            "channel_commits",
            "channel_wraps",
            "channel_invitations",
            "channel_grants",
            "channel_join_requests",
        },
        "parley_log_readers": {"schema_migrations", "restricted_logs"},
        "parley_file": {"schema_migrations", "files", "uploader_usage"},
    }
    assert _schemas_outside_parley(postgres_url) == []


def _schemas_outside_parley(url: str) -> list[str]:
    """Tables the services made anywhere else (none: not even in `public`)."""
    with psycopg.connect(url) as connection:
        rows = connection.execute(
            "SELECT table_schema || '.' || table_name FROM information_schema.tables "
            "WHERE table_schema NOT LIKE 'parley_%' AND table_schema NOT IN ('pg_catalog', 'information_schema')"
        ).fetchall()
    return [row[0] for row in rows]


async def test_a_later_migration_is_applied_once_over_an_older_schema(postgres_url: str) -> None:
    schema = "parley_test_migrations"
    first = ["CREATE TABLE things (id INTEGER PRIMARY KEY)"]
    later = [*first, "ALTER TABLE things ADD COLUMN name TEXT NOT NULL DEFAULT ''"]
    try:
        for scripts in (first, later, later):
            db = PostgresDatabase(postgres_url, schema, scripts)
            await db.open()
            await db.close()
        with psycopg.connect(postgres_url) as connection:
            versions = connection.execute(f"SELECT version FROM {schema}.schema_migrations ORDER BY 1").fetchall()
            columns = connection.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = %s AND table_name = 'things' "
                "ORDER BY ordinal_position",
                [schema],
            ).fetchall()
        assert [v for (v,) in versions] == [1, 2]
        assert [c for (c,) in columns] == ["id", "name"]
    finally:
        with psycopg.connect(postgres_url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


@pytest.mark.parametrize(
    ("url", "named", "reason"),
    [
        ("postgresql://parley:s3cret@127.0.0.1:1/nowhere", "127.0.0.1:1/nowhere", "Connection refused"),
        (
            "postgresql://postgres:s3cret@127.0.0.1:5432/parley_missing",
            "127.0.0.1:5432/parley_missing",
            "does not exist",
        ),
    ],
)
async def test_a_database_that_cannot_be_used_is_named_with_the_reason_and_without_the_password(
    url: str, named: str, reason: str
) -> None:
    with pytest.raises(ConnectionError) as failed:
        await PostgresDatabase(url, "parley_history", []).open()
    assert named in str(failed.value)
    assert reason in str(failed.value)
    assert "s3cret" not in str(failed.value)
