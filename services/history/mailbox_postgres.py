"""Mailboxes on PostgreSQL: schema `parley_mailbox` on the history service's storage URL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from services.history.mailbox_storage import COLUMNS, EnvelopeRow, NewEnvelope
from services.runtime.postgres import PostgresDatabase

POSTGRES_SCHEMA = "parley_mailbox"
POSTGRES_MIGRATIONS = [
    """
    CREATE TABLE heads (
        device_id TEXT PRIMARY KEY,
        last_seq BIGINT NOT NULL
    );
    CREATE TABLE envelopes (
        device_id TEXT NOT NULL,
        seq BIGINT NOT NULL,
        sender_user_id TEXT NOT NULL,
        sender_device_id TEXT NOT NULL,
        message_id TEXT NOT NULL,
        ciphertext BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (device_id, seq),
        UNIQUE (device_id, sender_device_id, message_id)
    );
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
        """Positions come from a counter row per device, locked (in device order) until the deposit
        commits: a device's envelopes become visible in the order of their positions, so a reader that
        has position n never later finds one below it."""
        positions = []
        async with self._db.transaction() as connection:
            heads: dict[str, int] = {}
            for device_id in sorted({e.device_id for e in envelopes}):
                await connection.execute(
                    "INSERT INTO heads (device_id, last_seq) VALUES (%s, 0) ON CONFLICT DO NOTHING", [device_id]
                )
                cursor = await connection.execute(
                    "SELECT last_seq FROM heads WHERE device_id = %s FOR UPDATE", [device_id]
                )
                row = await cursor.fetchone()
                assert row is not None
                heads[device_id] = int(row[0])
            for e in envelopes:
                cursor = await connection.execute(
                    "SELECT seq FROM envelopes WHERE device_id = %s AND sender_device_id = %s AND message_id = %s",
                    [e.device_id, e.sender_device_id, e.message_id],
                )
                stored = await cursor.fetchone()
                if stored is not None:
                    positions.append(int(stored[0]))
                    continue
                heads[e.device_id] += 1
                await connection.execute(
                    "INSERT INTO envelopes (device_id, seq, sender_user_id, sender_device_id, message_id, ciphertext, "
                    "created_at, expires_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s)",
                    [
                        e.device_id,
                        heads[e.device_id],
                        e.sender_user_id,
                        e.sender_device_id,
                        e.message_id,
                        e.ciphertext,
                        now,
                        now + ttl,
                    ],
                )
                positions.append(heads[e.device_id])
            for device_id, last_seq in heads.items():
                await connection.execute("UPDATE heads SET last_seq = %s WHERE device_id = %s", [last_seq, device_id])
        return positions

    async def pending(self, device_id: str, after_seq: int, limit: int, now: float) -> list[EnvelopeRow]:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                f"SELECT {COLUMNS} FROM envelopes WHERE device_id = %s AND seq > %s AND expires_at > %s "
                "ORDER BY seq LIMIT %s",
                [device_id, after_seq, now, limit],
            )
            return [EnvelopeRow(*row) for row in await cursor.fetchall()]

    async def held(self, device_ids: Sequence[str]) -> dict[str, int]:
        async with self._db.connection() as connection:
            cursor = await connection.execute(
                "SELECT device_id, count(*) FROM envelopes WHERE device_id = ANY(%s) GROUP BY device_id",
                [list(device_ids)],
            )
            counted = {str(row[0]): int(row[1]) for row in await cursor.fetchall()}
        return {d: counted.get(d, 0) for d in device_ids}

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
