"""Mailboxes on PostgreSQL: schema `parley_mailbox` on the history service's storage URL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.history.mailbox_storage import COLUMNS, EnvelopeRow, NewEnvelope
from services.runtime.postgres import PostgresDatabase

POSTGRES_SCHEMA = "parley_mailbox"
POSTGRES_MIGRATIONS = [
    """
    CREATE TABLE envelopes (
        seq BIGSERIAL PRIMARY KEY,
        device_id TEXT NOT NULL,
        sender_user_id TEXT NOT NULL,
        sender_device_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        ciphertext BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        UNIQUE (device_id, sender_device_id, message_id)
    );
    CREATE INDEX envelopes_by_device ON envelopes(device_id, seq);
    CREATE INDEX envelopes_by_expiry ON envelopes(expires_at);
    """,
]


class PostgresMailboxStorage:
    """Each deposit is one transaction; a repeat (the unique key) keeps the first row and its position."""

    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, url: str, max_connections: int) -> PostgresMailboxStorage:
        db = PostgresDatabase(url, POSTGRES_SCHEMA, POSTGRES_MIGRATIONS, max_connections)
        await db.open()
        return cls(db)

    async def deposit(self, envelopes: Sequence[NewEnvelope], now: float, ttl: float) -> list[int]:
        positions = []
        async with self._db.transaction() as connection:
            for e in envelopes:
                cursor = await connection.execute(
                    "INSERT INTO envelopes (device_id, sender_user_id, sender_device_id, message_id, ciphertext, "
                    "created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                    "ON CONFLICT (device_id, sender_device_id, message_id) "
                    "DO UPDATE SET device_id = excluded.device_id RETURNING seq",
                    [e.device_id, e.sender_user_id, e.sender_device_id, e.message_id, e.ciphertext, now, now + ttl],
                )
                row = await cursor.fetchone()
                assert row is not None
                positions.append(int(row[0]))
        return positions

    async def pending(self, device_id: str, after_seq: int, limit: int, now: float) -> list[EnvelopeRow]:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {COLUMNS} FROM envelopes WHERE device_id = %s AND seq > %s AND expires_at > %s "
                "ORDER BY seq LIMIT %s",
                [device_id, after_seq, now, limit],
            )
            return [EnvelopeRow(*row) for row in await cursor.fetchall()]

    async def ack(self, device_id: str, up_to_seq: int) -> int:
        return await self._change("DELETE FROM envelopes WHERE device_id = %s AND seq <= %s", [device_id, up_to_seq])

    async def prune(self, now: float) -> int:
        return await self._change("DELETE FROM envelopes WHERE expires_at <= %s", [now])

    async def _change(self, sql: str, params: list[Any]) -> int:
        async with self._db.connection() as connection:
            cursor = await connection.execute(sql, params)
            return cursor.rowcount

    async def close(self) -> None:
        await self._db.close()
