"""File metadata on SQLite and PostgreSQL: rows with their layouts, usage that follows them, a quota that
racing uploads (two storages on one database) cannot pass, and pages for the scrub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import psycopg
import pytest

from services.file.metadata import POSTGRES_SCHEMA, FileMetadataStorage, FileRow, open_file_metadata
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]


@pytest.fixture
async def metadata(storage_url: str, tmp_path: Path) -> AsyncIterator[list[FileMetadataStorage]]:
    """Two storages on one database, as two file service processes would have."""
    if storage_url:
        with psycopg.connect(storage_url, autocommit=True) as connection:
            connection.execute(f"DROP SCHEMA IF EXISTS {POSTGRES_SCHEMA} CASCADE")
    opened: list[FileMetadataStorage] = []
    try:
        for _ in range(2):
            opened.append(await open_file_metadata(storage_config(tmp_path, storage_url)))
        yield opened
    finally:
        for storage in opened:
            await storage.close()


def row(file_id: str, uploader: str = "ualice", size: int = 100) -> FileRow:
    return FileRow(file_id, uploader, "image/png", size, bytes(range(32)), f'{{"file_id": "{file_id}"}}', 1234.5)


async def test_a_recorded_file_reads_back_and_counts_for_its_uploader(metadata: list[FileMetadataStorage]) -> None:
    store = metadata[0]
    assert await store.record(row("f-1", size=100), quota_bytes=1000)
    assert await store.record(row("f-2", size=50), quota_bytes=None)
    assert await store.record(row("f-3", "ubob", size=7), quota_bytes=1000)
    assert await metadata[1].get("f-1") == row("f-1", size=100)
    assert await store.get("f-9") is None
    assert (await store.used_bytes("ualice"), await store.used_bytes("ubob"), await store.used_bytes("ueve")) == (
        150,
        7,
        0,
    )
    assert await store.remove("f-1") == row("f-1", size=100)
    assert await store.remove("f-1") is None
    assert await store.get("f-1") is None
    assert await store.used_bytes("ualice") == 50


async def test_a_file_over_the_quota_is_not_recorded(metadata: list[FileMetadataStorage]) -> None:
    store = metadata[0]
    assert await store.record(row("f-1", size=600), quota_bytes=1000)
    assert not await store.record(row("f-2", size=401), quota_bytes=1000)
    assert await store.get("f-2") is None
    assert await store.used_bytes("ualice") == 600
    assert await store.record(row("f-3", size=400), quota_bytes=1000), "exactly the quota fits"
    assert await store.record(row("f-4", "ubob", size=1000), quota_bytes=1000), "each uploader has their own"


async def test_racing_records_never_pass_the_quota(metadata: list[FileMetadataStorage]) -> None:
    results = await asyncio.gather(
        *(metadata[i % 2].record(row(f"f-{i:02d}", size=100), quota_bytes=1050) for i in range(30))
    )
    assert sum(results) == 10
    assert await metadata[0].used_bytes("ualice") == 1000
    recorded = [f"f-{i:02d}" for i, kept in enumerate(results) if kept]
    assert [r.file_id for r in await metadata[1].page("", 100)] == recorded


async def test_pages_go_through_every_file_in_id_order(metadata: list[FileMetadataStorage]) -> None:
    ids = [f"f-{i:03d}" for i in range(25)]
    for file_id in reversed(ids):
        assert await metadata[0].record(row(file_id, size=1), quota_bytes=None)
    seen: list[str] = []
    after = ""
    while page := await metadata[1].page(after, 10):
        assert len(page) <= 10
        seen += [r.file_id for r in page]
        after = page[-1].file_id
    assert seen == ids
