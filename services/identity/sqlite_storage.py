"""Identity storage on SQLite (`identity.sqlite3` under the data directory).

One transaction at a time (`SqliteDatabase.begin`), so the rules that run
inside one see nothing change under them.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TypeVar

import sqlite_utils

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
from services.runtime.sqlite import SqliteDatabase, SqliteTransaction


def _migration_1(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE users (
            user_id TEXT PRIMARY KEY,
            username TEXT NOT NULL UNIQUE,
            signing_key BLOB NOT NULL,
            created_at REAL NOT NULL
        );
        CREATE TABLE devices (
            device_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL REFERENCES users(user_id),
            signing_key BLOB NOT NULL UNIQUE,
            dh_key BLOB NOT NULL,
            certificate BLOB NOT NULL,
            display_name TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            revoked_at REAL
        );
        CREATE INDEX devices_by_user ON devices(user_id);
        CREATE TABLE login_challenges (
            challenge_id TEXT PRIMARY KEY,
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            nonce BLOB NOT NULL,
            expires_at REAL NOT NULL
        );
        CREATE TABLE refresh_tokens (
            token_hash BLOB PRIMARY KEY,
            family_id TEXT NOT NULL,
            user_id TEXT NOT NULL,
            device_id TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL,
            spent_at REAL,
            revoked_at REAL
        );
        CREATE INDEX refresh_tokens_by_family ON refresh_tokens(family_id);
        CREATE INDEX refresh_tokens_by_device ON refresh_tokens(device_id);
        CREATE TABLE signing_keys (
            key_id TEXT PRIMARY KEY,
            seed BLOB NOT NULL,
            public_key BLOB NOT NULL,
            created_at REAL NOT NULL,
            retired_at REAL
        );
        """
    )


def _migration_2(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE INDEX refresh_tokens_by_expiry ON refresh_tokens(expires_at);
        CREATE INDEX login_challenges_by_expiry ON login_challenges(expires_at);
        """
    )


def _migration_3(db: sqlite_utils.Database) -> None:
    db.executescript(
        """
        CREATE TABLE device_lists (
            user_id TEXT PRIMARY KEY,
            counter INTEGER NOT NULL,
            list BLOB NOT NULL,
            signature BLOB NOT NULL,
            published_at REAL NOT NULL
        );
        CREATE TABLE signed_prekeys (
            device_id TEXT PRIMARY KEY,
            key_id INTEGER NOT NULL,
            public_key BLOB NOT NULL,
            signature BLOB NOT NULL,
            uploaded_at REAL NOT NULL
        );
        CREATE TABLE one_time_prekeys (
            device_id TEXT NOT NULL,
            key_id INTEGER NOT NULL,
            public_key BLOB NOT NULL,
            PRIMARY KEY (device_id, key_id)
        );
        CREATE TABLE kem_prekeys (
            device_id TEXT PRIMARY KEY,
            key_id INTEGER NOT NULL,
            kem TEXT NOT NULL,
            public_key BLOB NOT NULL,
            signature BLOB NOT NULL,
            uploaded_at REAL NOT NULL
        );
        """
    )


MIGRATIONS = [_migration_1, _migration_2, _migration_3]
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


class SqliteIdentityStorage:
    def __init__(self, db: SqliteDatabase) -> None:
        self._db = db

    @classmethod
    async def open(cls, path: Path) -> SqliteIdentityStorage:
        db = SqliteDatabase(path, MIGRATIONS)
        await db.open()
        return cls(db)

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[IdentityTransaction]:
        async with self._db.begin() as transaction:
            yield SqliteIdentityTransaction(transaction)

    async def close(self) -> None:
        await self._db.close()


class SqliteIdentityTransaction:
    def __init__(self, transaction: SqliteTransaction) -> None:
        self._transaction = transaction

    async def _one(self, row_type: type[Row], sql: str, params: list[Any]) -> Row | None:
        row = await self._transaction.run(lambda db: db.execute(sql, params).fetchone())
        return None if row is None else row_type(*row)

    async def _all(self, row_type: type[Row], sql: str, params: list[Any]) -> list[Row]:
        rows = await self._transaction.run(lambda db: db.execute(sql, params).fetchall())
        return [row_type(*row) for row in rows]

    async def _count(self, sql: str, params: list[Any]) -> int:
        """Runs a change; returns the rows it changed."""
        return await self._transaction.run(lambda db: int(db.execute(sql, params).rowcount))

    async def _insert(self, table: str, row: Any, or_ignore: bool = False) -> bool:
        marks = ", ".join("?" for _ in dataclasses.fields(row))
        verb = "INSERT OR IGNORE" if or_ignore else "INSERT"
        sql = f"{verb} INTO {table} ({columns(type(row))}) VALUES ({marks})"
        return await self._count(sql, list(dataclasses.astuple(row))) == 1

    # Users and devices

    async def user_by_id(self, user_id: str) -> UserRow | None:
        return await self._one(UserRow, select(UserRow, "users", "WHERE user_id = ?"), [user_id])

    async def user_by_name(self, username: str) -> UserRow | None:
        return await self._one(UserRow, select(UserRow, "users", "WHERE username = ?"), [username])

    async def lock_user(self, user_id: str) -> UserRow | None:
        return await self.user_by_id(user_id)  # the transaction is the only one

    async def insert_user(self, user: UserRow) -> bool:
        return await self._insert("users", user, or_ignore=True)

    async def device_by_id(self, device_id: str) -> DeviceRow | None:
        return await self._one(DeviceRow, select(DeviceRow, "devices", "WHERE device_id = ?"), [device_id])

    async def devices_of(self, user_id: str, include_revoked: bool) -> list[DeviceRow]:
        where = "WHERE user_id = ?" + ("" if include_revoked else " AND revoked_at IS NULL")
        return await self._all(
            DeviceRow, select(DeviceRow, "devices", f"{where} ORDER BY created_at, device_id"), [user_id]
        )

    async def insert_device(self, device: DeviceRow) -> bool:
        return await self._insert("devices", device, or_ignore=True)

    async def devices_revoked_since(self, since: float) -> list[DeviceRow]:
        sql = select(DeviceRow, "devices", "WHERE revoked_at >= ? ORDER BY revoked_at, device_id")
        return await self._all(DeviceRow, sql, [since])

    async def revoke_device(self, device_id: str, now: float) -> bool:
        sql = "UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL"
        return await self._count(sql, [now, device_id]) == 1

    # Login challenges

    async def insert_challenge(self, challenge: ChallengeRow, now: float) -> None:
        await self._count("DELETE FROM login_challenges WHERE expires_at < ?", [now])
        await self._insert("login_challenges", challenge)

    async def take_challenge(self, challenge_id: str) -> ChallengeRow | None:
        sql = f"DELETE FROM login_challenges WHERE challenge_id = ? RETURNING {columns(ChallengeRow)}"
        return await self._one(ChallengeRow, sql, [challenge_id])

    # Refresh tokens

    async def insert_refresh_token(self, token: RefreshTokenRow) -> None:
        # Expired tokens are useless even for reuse detection, so they go here.
        await self._count("DELETE FROM refresh_tokens WHERE expires_at < ?", [token.created_at])
        await self._insert("refresh_tokens", token)

    async def refresh_token(self, token_hash: bytes) -> RefreshTokenRow | None:
        sql = select(RefreshTokenRow, "refresh_tokens", "WHERE token_hash = ?")
        return await self._one(RefreshTokenRow, sql, [token_hash])

    async def lock_refresh_token(self, token_hash: bytes) -> RefreshTokenRow | None:
        return await self.refresh_token(token_hash)  # the transaction is the only one

    async def spend_refresh_token(self, token_hash: bytes, now: float) -> None:
        await self._count("UPDATE refresh_tokens SET spent_at = ? WHERE token_hash = ?", [now, token_hash])

    async def revoke_family(self, family_id: str, now: float) -> int:
        sql = "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL"
        return 1 if await self._count(sql, [now, family_id]) else 0

    async def revoke_device_sessions(self, device_id: str, now: float) -> int:
        families = await self._transaction.run(
            lambda db: db.execute(
                "SELECT DISTINCT family_id FROM refresh_tokens WHERE device_id = ? AND revoked_at IS NULL", [device_id]
            ).fetchall()
        )
        sql = "UPDATE refresh_tokens SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL"
        await self._count(sql, [now, device_id])
        return len(families)

    # Device lists and prekeys

    async def device_list(self, user_id: str) -> DeviceListRow | None:
        return await self._one(DeviceListRow, select(DeviceListRow, "device_lists", "WHERE user_id = ?"), [user_id])

    async def put_device_list(self, row: DeviceListRow) -> bool:
        sql = (
            f"INSERT INTO device_lists ({columns(DeviceListRow)}) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(user_id) DO UPDATE SET counter = excluded.counter, list = excluded.list, "
            "signature = excluded.signature, published_at = excluded.published_at "
            "WHERE excluded.counter > device_lists.counter"
        )
        return await self._count(sql, list(dataclasses.astuple(row))) == 1

    async def signed_prekey(self, device_id: str) -> SignedPrekeyRow | None:
        sql = select(SignedPrekeyRow, "signed_prekeys", "WHERE device_id = ?")
        return await self._one(SignedPrekeyRow, sql, [device_id])

    async def put_signed_prekey(self, row: SignedPrekeyRow) -> None:
        sql = f"INSERT OR REPLACE INTO signed_prekeys ({columns(SignedPrekeyRow)}) VALUES (?, ?, ?, ?, ?)"
        await self._count(sql, list(dataclasses.astuple(row)))

    async def kem_prekey(self, device_id: str) -> KemPrekeyRow | None:
        return await self._one(KemPrekeyRow, select(KemPrekeyRow, "kem_prekeys", "WHERE device_id = ?"), [device_id])

    async def put_kem_prekey(self, row: KemPrekeyRow) -> None:
        sql = f"INSERT OR REPLACE INTO kem_prekeys ({columns(KemPrekeyRow)}) VALUES (?, ?, ?, ?, ?, ?)"
        await self._count(sql, list(dataclasses.astuple(row)))

    async def add_one_time_prekeys(self, rows: list[OneTimePrekeyRow]) -> int:
        added = 0
        for row in rows:
            added += await self._insert("one_time_prekeys", row, or_ignore=True)
        return added

    async def count_one_time_prekeys(self, device_id: str) -> int:
        return await self._transaction.run(
            lambda db: int(
                db.execute("SELECT count(*) FROM one_time_prekeys WHERE device_id = ?", [device_id]).fetchone()[0]
            )
        )

    async def take_one_time_prekey(self, device_id: str) -> OneTimePrekeyRow | None:
        # The transaction is the only one: the row it picks is its own.
        sql = (
            "DELETE FROM one_time_prekeys WHERE device_id = ? AND key_id = "
            "(SELECT min(key_id) FROM one_time_prekeys WHERE device_id = ?) "
            f"RETURNING {columns(OneTimePrekeyRow)}"
        )
        return await self._one(OneTimePrekeyRow, sql, [device_id, device_id])

    # Token signing keys

    async def signing_keys(self) -> list[SigningKeyRow]:
        return await self._all(SigningKeyRow, select(SigningKeyRow, "signing_keys", "ORDER BY created_at, key_id"), [])

    async def insert_signing_key(self, key: SigningKeyRow, now: float) -> None:
        await self._count("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL", [now])
        await self._insert("signing_keys", key)
