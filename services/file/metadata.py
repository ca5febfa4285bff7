"""File metadata: what the file service knows of each stored file, and each uploader's usage.

A row is written only once all of a file's shares are in place, and in the
same transaction as the uploader's usage grows by its size, so a row always
names shares that were stored and usage always sums the rows. The file's
name is not here: clients keep it in their encrypted manifest.

SQLite: `files.sqlite3` under the data directory. PostgreSQL: schema
`parley_file` on `storage.file_url` (or `storage.url`).
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from services.runtime.config import Config

SQLITE_FILE = "files.sqlite3"
POSTGRES_SCHEMA = "parley_file"


@dataclasses.dataclass(frozen=True)
class FileRow:
    file_id: str
    uploader_id: str
    media_type: str
    size: int
    # BLAKE2b-256 of the whole ciphertext.
    blake2b: bytes
    # FileLayout.to_dict() as JSON: where the shares are and how to decode them.
    layout: str
    created_at: float


COLUMNS = ", ".join(f.name for f in dataclasses.fields(FileRow))


class FileMetadataStorage(Protocol):
    async def record(self, row: FileRow, quota_bytes: int | None) -> bool:
        """Stores the row and adds its size to its uploader's usage, unless that would pass
        `quota_bytes` (None: no limit); False then, and nothing is written."""

    async def get(self, file_id: str) -> FileRow | None: ...

    async def remove(self, file_id: str) -> FileRow | None:
        """Deletes the row and takes its size off its uploader's usage; the row, or None if there was none."""

    async def used_bytes(self, uploader_id: str) -> int: ...

    async def page(self, after_file_id: str, limit: int) -> list[FileRow]:
        """At most `limit` rows with file ids after `after_file_id`, in file id order."""

    async def close(self) -> None: ...


async def open_file_metadata(config: Config) -> FileMetadataStorage:
    """The file service's metadata, opened and migrated."""
    url = config.storage.url_of("file")
    if url:
        # Imported here: psycopg is loaded only by processes that use PostgreSQL.
        from services.file.metadata_postgres import PostgresFileMetadata

        return await PostgresFileMetadata.open(url, config.storage.max_connections)
    from services.file.metadata_sqlite import SqliteFileMetadata

    return await SqliteFileMetadata.open(config.server.data_dir / SQLITE_FILE)
