"""Identity storage on PostgreSQL (schema `parley_identity`).

Transactions run at READ COMMITTED; the steps that guard a rule take row
locks, and a step that follows a wait starts a new statement, so it sees what
the transaction it waited for committed:

- `take_challenge` deletes the row: of racing logins one gets it.
- `lock_refresh_token` locks the token (`FOR UPDATE`): racing refreshes take
  turns, and the second finds it spent (reuse: the family is revoked).
- `revoke_family` / `revoke_device_sessions` first lock the tokens they
  revoke (waiting for rotations under way), then revoke with a new
  statement that sees the successors those rotations wrote.
- `lock_user` serialises changes to one user's devices (the device limit).
- `take_one_time_prekey` deletes one row it locked, skipping rows others
  hold: racing fetches each get a different key.
- `put_device_list` replaces the row only when the new counter is higher
  (a conditional upsert): of racing publishes the highest counter stays.
- Clean-ups of expired rows skip rows others hold, so they never wait, and
  locks on several rows are taken in key order: no deadlocks between them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any, TypeVar

from services.identity.storage import (
    ChallengeRow,
    DeviceListRow,
    DeviceRow,
    IdentityTransaction,
    KemPrekeyRow,
    OneTimePrekeyRow,
    RefreshTokenRow,
    SignedPrekeyRow,
    SigningKeyRow,
    UserRow,
    columns,
    select,
)
from services.runtime.postgres import Connection, PostgresDatabase

SCHEMA = "parley_identity"
MIGRATIONS = [
    """
    CREATE TABLE users (
        user_id TEXT PRIMARY KEY,
        username TEXT NOT NULL UNIQUE,
        signing_key BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE devices (
        device_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL REFERENCES users(user_id),
        signing_key BYTEA NOT NULL UNIQUE,
        dh_key BYTEA NOT NULL,
        certificate BYTEA NOT NULL,
        display_name TEXT NOT NULL DEFAULT '',
        created_at DOUBLE PRECISION NOT NULL,
        revoked_at DOUBLE PRECISION
    );
    CREATE INDEX devices_by_user ON devices(user_id);
    CREATE INDEX devices_by_revocation ON devices(revoked_at) WHERE revoked_at IS NOT NULL;
    CREATE TABLE login_challenges (
        challenge_id TEXT PRIMARY KEY,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        nonce BYTEA NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL
    );
    CREATE INDEX login_challenges_by_expiry ON login_challenges(expires_at);
    CREATE TABLE refresh_tokens (
        token_hash BYTEA PRIMARY KEY,
        family_id TEXT NOT NULL,
        user_id TEXT NOT NULL,
        device_id TEXT NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        expires_at DOUBLE PRECISION NOT NULL,
        spent_at DOUBLE PRECISION,
        revoked_at DOUBLE PRECISION
    );
    CREATE INDEX refresh_tokens_by_family ON refresh_tokens(family_id);
    CREATE INDEX refresh_tokens_by_device ON refresh_tokens(device_id);
    CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens(expires_at);
    CREATE TABLE signing_keys (
        key_id TEXT PRIMARY KEY,
        seed BYTEA NOT NULL,
        public_key BYTEA NOT NULL,
        created_at DOUBLE PRECISION NOT NULL,
        retired_at DOUBLE PRECISION
    );
    """,
    """
    CREATE TABLE device_lists (
        user_id TEXT PRIMARY KEY,
        counter BIGINT NOT NULL,
        list BYTEA NOT NULL,
        signature BYTEA NOT NULL,
        published_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE signed_prekeys (
        device_id TEXT PRIMARY KEY,
        key_id BIGINT NOT NULL,
        public_key BYTEA NOT NULL,
        signature BYTEA NOT NULL,
        uploaded_at DOUBLE PRECISION NOT NULL
    );
    CREATE TABLE one_time_prekeys (
        device_id TEXT NOT NULL,
        key_id BIGINT NOT NULL,
        public_key BYTEA NOT NULL,
        PRIMARY KEY (device_id, key_id)
    );
    CREATE TABLE kem_prekeys (
        device_id TEXT PRIMARY KEY,
        key_id BIGINT NOT NULL,
        kem TEXT NOT NULL,
        public_key BYTEA NOT NULL,
        signature BYTEA NOT NULL,
        uploaded_at DOUBLE PRECISION NOT NULL
    );
    """,
]
Row = TypeVar(
    "Row",
    UserRow,
    DeviceRow,
    ChallengeRow,
    RefreshTokenRow,
    SigningKeyRow,
    DeviceListRow,
    SignedPrekeyRow,
    OneTimePrekeyRow,
    KemPrekeyRow,
)


class PostgresIdentityStorage:
    def __init__(self, db: PostgresDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, url: str, max_connections: int) -> PostgresIdentityStorage:
        db = PostgresDatabase(url, SCHEMA, MIGRATIONS, max_connections)
        await db.open()
        return cls(db)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[IdentityTransaction]:
        async with self._db.transaction() as connection:
            yield PostgresIdentityTransaction(connection)

    async def close(self) -> None:
        await self._db.close()


class PostgresIdentityTransaction:
    def __init__(self, connection: Connection) -> None:
        self._connection = connection

    async def _one(self, row_type: type[Row], sql: str, params: list[Any]) -> Row | None:
        cursor = await self._connection.execute(sql, params)
        row = await cursor.fetchone()
        return None if row is None else row_type(*row)

    async def _all(self, row_type: type[Row], sql: str, params: list[Any]) -> list[Row]:
        cursor = await self._connection.execute(sql, params)
        return [row_type(*row) for row in await cursor.fetchall()]

    async def _count(self, sql: str, params: list[Any]) -> int:
        """Runs a change; returns the rows it changed."""
        cursor = await self._connection.execute(sql, params)
        return cursor.rowcount

    async def _insert(self, table: str, row: Any, on_conflict_nothing: bool = False) -> bool:
        marks = ", ".join("%s" for _ in dataclasses.fields(row))
        tail = " ON CONFLICT DO NOTHING" if on_conflict_nothing else ""
        sql = f"INSERT INTO {table} ({columns(type(row))}) VALUES ({marks}){tail}"
        return await self._count(sql, list(dataclasses.astuple(row))) == 1

    # Users and devices

    async def user_by_id(self, user_id: str) -> UserRow | None:
        return await self._one(UserRow, select(UserRow, "users", "WHERE user_id = %s"), [user_id])

    async def user_by_name(self, username: str) -> UserRow | None:
        return await self._one(UserRow, select(UserRow, "users", "WHERE username = %s"), [username])

    async def lock_user(self, user_id: str) -> UserRow | None:
        return await self._one(UserRow, select(UserRow, "users", "WHERE user_id = %s FOR UPDATE"), [user_id])

    async def insert_user(self, user: UserRow) -> bool:
        return await self._insert("users", user, on_conflict_nothing=True)

    async def device_by_id(self, device_id: str) -> DeviceRow | None:
        return await self._one(DeviceRow, select(DeviceRow, "devices", "WHERE device_id = %s"), [device_id])

    async def devices_of(self, user_id: str, include_revoked: bool) -> list[DeviceRow]:
        where = "WHERE user_id = %s" + ("" if include_revoked else " AND revoked_at IS NULL")
        sql = select(DeviceRow, "devices", f"{where} ORDER BY created_at, device_id")
        return await self._all(DeviceRow, sql, [user_id])

    async def insert_device(self, device: DeviceRow) -> bool:
        return await self._insert("devices", device, on_conflict_nothing=True)

    async def devices_revoked_since(self, since: float) -> list[DeviceRow]:
        sql = select(DeviceRow, "devices", "WHERE revoked_at >= %s ORDER BY revoked_at, device_id")
        return await self._all(DeviceRow, sql, [since])

    async def revoke_device(self, device_id: str, now: float) -> bool:
        sql = "UPDATE devices SET revoked_at = %s WHERE device_id = %s AND revoked_at IS NULL"
        return await self._count(sql, [now, device_id]) == 1

    # Login challenges

    async def insert_challenge(self, challenge: ChallengeRow, now: float) -> None:
        await self._count(
            "DELETE FROM login_challenges WHERE challenge_id IN "
            "(SELECT challenge_id FROM login_challenges WHERE expires_at < %s FOR UPDATE SKIP LOCKED)",
            [now],
        )
        await self._insert("login_challenges", challenge)

    async def take_challenge(self, challenge_id: str) -> ChallengeRow | None:
        sql = f"DELETE FROM login_challenges WHERE challenge_id = %s RETURNING {columns(ChallengeRow)}"
        return await self._one(ChallengeRow, sql, [challenge_id])

    # Refresh tokens

    async def insert_refresh_token(self, token: RefreshTokenRow) -> None:
        # Expired tokens are useless even for reuse detection, so they go here.
        await self._count(
            "DELETE FROM refresh_tokens WHERE token_hash IN "
            "(SELECT token_hash FROM refresh_tokens WHERE expires_at < %s FOR UPDATE SKIP LOCKED)",
            [token.created_at],
        )
        await self._insert("refresh_tokens", token)

    async def refresh_token(self, token_hash: bytes) -> RefreshTokenRow | None:
        sql = select(RefreshTokenRow, "refresh_tokens", "WHERE token_hash = %s")
        return await self._one(RefreshTokenRow, sql, [token_hash])

    async def lock_refresh_token(self, token_hash: bytes) -> RefreshTokenRow | None:
        sql = select(RefreshTokenRow, "refresh_tokens", "WHERE token_hash = %s FOR UPDATE")
        return await self._one(RefreshTokenRow, sql, [token_hash])

    async def spend_refresh_token(self, token_hash: bytes, now: float) -> None:
        await self._count("UPDATE refresh_tokens SET spent_at = %s WHERE token_hash = %s", [now, token_hash])

    async def revoke_family(self, family_id: str, now: float) -> int:
        await self._count(
            "SELECT 1 FROM refresh_tokens WHERE family_id = %s ORDER BY token_hash FOR UPDATE", [family_id]
        )
        sql = "UPDATE refresh_tokens SET revoked_at = %s WHERE family_id = %s AND revoked_at IS NULL"
        return 1 if await self._count(sql, [now, family_id]) else 0

    async def revoke_device_sessions(self, device_id: str, now: float) -> int:
        await self._count(
            "SELECT 1 FROM refresh_tokens WHERE device_id = %s AND revoked_at IS NULL ORDER BY token_hash FOR UPDATE",
            [device_id],
        )
        cursor = await self._connection.execute(
            "UPDATE refresh_tokens SET revoked_at = %s WHERE device_id = %s AND revoked_at IS NULL RETURNING family_id",
            [now, device_id],
        )
        return len({row[0] for row in await cursor.fetchall()})

    # Device lists and prekeys

    async def device_list(self, user_id: str) -> DeviceListRow | None:
        sql = select(DeviceListRow, "device_lists", "WHERE user_id = %s")
        return await self._one(DeviceListRow, sql, [user_id])

    async def put_device_list(self, row: DeviceListRow) -> bool:
        sql = (
            f"INSERT INTO device_lists ({columns(DeviceListRow)}) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (user_id) DO UPDATE SET counter = excluded.counter, list = excluded.list, "
            "signature = excluded.signature, published_at = excluded.published_at "
            "WHERE excluded.counter > device_lists.counter"
        )
        return await self._count(sql, list(dataclasses.astuple(row))) == 1

    async def signed_prekey(self, device_id: str) -> SignedPrekeyRow | None:
        sql = select(SignedPrekeyRow, "signed_prekeys", "WHERE device_id = %s")
        return await self._one(SignedPrekeyRow, sql, [device_id])

    async def put_signed_prekey(self, row: SignedPrekeyRow) -> None:
        sql = (
            f"INSERT INTO signed_prekeys ({columns(SignedPrekeyRow)}) VALUES (%s, %s, %s, %s, %s) "
            "ON CONFLICT (device_id) DO UPDATE SET key_id = excluded.key_id, public_key = excluded.public_key, "
            "signature = excluded.signature, uploaded_at = excluded.uploaded_at"
        )
        await self._count(sql, list(dataclasses.astuple(row)))

    async def kem_prekey(self, device_id: str) -> KemPrekeyRow | None:
        return await self._one(KemPrekeyRow, select(KemPrekeyRow, "kem_prekeys", "WHERE device_id = %s"), [device_id])

    async def put_kem_prekey(self, row: KemPrekeyRow) -> None:
        sql = (
            f"INSERT INTO kem_prekeys ({columns(KemPrekeyRow)}) VALUES (%s, %s, %s, %s, %s, %s) "
            "ON CONFLICT (device_id) DO UPDATE SET key_id = excluded.key_id, kem = excluded.kem, "
            "public_key = excluded.public_key, signature = excluded.signature, uploaded_at = excluded.uploaded_at"
        )
        await self._count(sql, list(dataclasses.astuple(row)))

    async def add_one_time_prekeys(self, rows: list[OneTimePrekeyRow]) -> int:
        added = 0
        for row in rows:
            added += await self._insert("one_time_prekeys", row, on_conflict_nothing=True)
        return added

    async def count_one_time_prekeys(self, device_id: str) -> int:
        sql = "SELECT count(*) FROM one_time_prekeys WHERE device_id = %s"
        cursor = await self._connection.execute(sql, [device_id])
        row = await cursor.fetchone()
        return int(row[0]) if row is not None else 0

    async def take_one_time_prekey(self, device_id: str) -> OneTimePrekeyRow | None:
        sql = (
            "DELETE FROM one_time_prekeys WHERE (device_id, key_id) = "
            "(SELECT device_id, key_id FROM one_time_prekeys WHERE device_id = %s "
            "ORDER BY key_id LIMIT 1 FOR UPDATE SKIP LOCKED) "
            f"RETURNING {columns(OneTimePrekeyRow)}"
        )
        return await self._one(OneTimePrekeyRow, sql, [device_id])

    # Token signing keys

    async def signing_keys(self) -> list[SigningKeyRow]:
        return await self._all(SigningKeyRow, select(SigningKeyRow, "signing_keys", "ORDER BY created_at, key_id"), [])

    async def insert_signing_key(self, key: SigningKeyRow, now: float) -> None:
        await self._connection.execute("LOCK TABLE signing_keys IN SHARE ROW EXCLUSIVE MODE")
        await self._count("UPDATE signing_keys SET retired_at = %s WHERE retired_at IS NULL", [now])
        await self._insert("signing_keys", key)
