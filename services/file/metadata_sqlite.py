"""File metadata on SQLite: `files.sqlite3` under the data directory (see metadata.py)."""

from __future__ import annotations

from pathlib import Path

import sqlite_utils

from services.file.metadata import COLUMNS, FileRow
from services.runtime.sqlite import SqliteDatabase


def _sqlite_migration_1(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE files (
            file_id TEXT PRIMARY KEY,
            uploader_id TEXT NOT NULL,
            media_type TEXT NOT NULL,
            size INTEGER NOT NULL,
            blake2b BLOB NOT NULL,
            layout TEXT NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE uploader_usage (
            uploader_id TEXT PRIMARY KEY,
            bytes INTEGER NOT NULL
        );
        """
    )


class SqliteFileMetadata:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteFileMetadata:
        db = SqliteDatabase(path, [_sqlite_migration_1])
        await db.open()
        return cls(db)

    async def record(self, row: FileRow, quota_bytes: int | None) -> bool:
        def write(db: sqlite_utils.Database) -> bool:
            if quota_bytes is not None and _used(db, row.uploader_id) + row.size > quota_bytes:
                return False
            db.execute(
                f"INSERT INTO files ({COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [row.file_id, row.uploader_id, row.media_type, row.size, row.blake2b, row.layout, row.created_at],
            )
            db.execute(
                "INSERT INTO uploader_usage (uploader_id, bytes) VALUES (?, ?) "
                "ON CONFLICT (uploader_id) DO UPDATE SET bytes = bytes + excluded.bytes",
                [row.uploader_id, row.size],
            )
            return True

        return await self._db.transaction(write)

    async def get(self, file_id: str) -> FileRow | None:
        return await self._db.run(lambda db: _get(db, file_id))

    async def remove(self, file_id: str) -> FileRow | None:
        def delete(db: sqlite_utils.Database) -> FileRow | None:
            row = _get(db, file_id)
            if row is None:
                return None
            db.execute("DELETE FROM files WHERE file_id = ?", [file_id])
            db.execute("UPDATE uploader_usage SET bytes = bytes - ? WHERE uploader_id = ?", [row.size, row.uploader_id])
            return row

        return await self._db.transaction(delete)

    async def used_bytes(self, uploader_id: str) -> int:
        return await self._db.run(lambda db: _used(db, uploader_id))

    async def page(self, after_file_id: str, limit: int) -> list[FileRow]:
        sql = f"SELECT {COLUMNS} FROM files WHERE file_id > ? ORDER BY file_id LIMIT ?"
        rows = await self._db.run(lambda db: db.execute(sql, [after_file_id, limit]).fetchall())
        return [FileRow(*row) for row in rows]

    async def close(self) -> None:
        await self._db.close()


def _get(db: sqlite_utils.Database, file_id: str) -> FileRow | None:
    found = db.execute(f"SELECT {COLUMNS} FROM files WHERE file_id = ?", [file_id]).fetchone()
    return None if found is None else FileRow(*found)


def _used(db: sqlite_utils.Database, uploader_id: str) -> int:
    found = db.execute("SELECT bytes FROM uploader_usage WHERE uploader_id = ?", [uploader_id]).fetchone()
    return 0 if found is None else int(found[0])
