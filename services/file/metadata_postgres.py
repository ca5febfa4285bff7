"""File metadata on PostgreSQL: schema `parley_file` on the file service's storage URL (see metadata.py)."""

from __future__ import annotations

from services.file.metadata import COLUMNS, POSTGRES_SCHEMA, FileRow
from services.runtime.postgres import Connection, PostgresDatabase

POSTGRES_MIGRATIONS = [
    """
    CREATE TABLE files (
        file_id TEXT PRIMARY KEY,
        uploader_id TEXT NOT NULL,
        media_type TEXT NOT NULL,
        size BIGINT NOT NULL,
        blake2b BYTEA NOT NULL,
        layout TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE uploader_usage (
        uploader_id TEXT PRIMARY KEY,
        bytes BIGINT NOT NULL
    );
    """,
]


class PostgresFileMetadata:
    """An uploader's usage row is locked while a file is recorded, so concurrent uploads cannot pass the quota."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, url: str, max_connections: int) -> PostgresFileMetadata:
        db = PostgresDatabase(url, POSTGRES_SCHEMA, POSTGRES_MIGRATIONS, max_connections)
        await db.open()
        return cls(db)

    async def record(self, row: FileRow, quota_bytes: int | None) -> bool:
        async with self._db.transaction() as connection:
            await connection.execute(
                "INSERT INTO uploader_usage (uploader_id, bytes) VALUES (%s, 0) ON CONFLICT DO NOTHING",
                [row.uploader_id],
            )
            cursor = await connection.execute(
                "SELECT bytes FROM uploader_usage WHERE uploader_id = %s FOR UPDATE", [row.uploader_id]
            )
            locked = await cursor.fetchone()
            assert locked is not None
            if quota_bytes is not None and int(locked[0]) + row.size > quota_bytes:
                return False
            await connection.execute(
                f"INSERT INTO files ({COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                [row.file_id, row.uploader_id, row.media_type, row.size, row.blake2b, row.layout, row.created_at],
            )
            await connection.execute(
                "UPDATE uploader_usage SET bytes = bytes + %s WHERE uploader_id = %s", [row.size, row.uploader_id]
            )
        return True

    async def get(self, file_id: str) -> FileRow | None:
        async with self._db.connection() as connection:
            return await _get(connection, file_id)

    async def remove(self, file_id: str) -> FileRow | None:
        async with self._db.transaction() as connection:
            cursor = await connection.execute(f"DELETE FROM files WHERE file_id = %s RETURNING {COLUMNS}", [file_id])
            found = await cursor.fetchone()
            if found is None:
                return None
            row = FileRow(*found)
            await connection.execute(
                "UPDATE uploader_usage SET bytes = bytes - %s WHERE uploader_id = %s", [row.size, row.uploader_id]
            )
        return row

    async def used_bytes(self, uploader_id: str) -> int:
        async with self._db.connection() as connection:
            cursor = await connection.execute("SELECT bytes FROM uploader_usage WHERE uploader_id = %s", [uploader_id])
            found = await cursor.fetchone()
        return 0 if found is None else int(found[0])

    async def page(self, after_file_id: str, limit: int) -> list[FileRow]:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {COLUMNS} FROM files WHERE file_id > %s ORDER BY file_id LIMIT %s", [after_file_id, limit]
            )
            return [FileRow(*row) for row in await cursor.fetchall()]

    async def close(self) -> None:
        await self._db.close()


async def _get(connection: Connection, file_id: str) -> FileRow | None:
    cursor = await connection.execute(f"SELECT {COLUMNS} FROM files WHERE file_id = %s", [file_id])
    found = await cursor.fetchone()
    return None if found is None else FileRow(*found)
