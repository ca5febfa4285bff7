"""Identity storage on SQLite: users, devices, challenges, refresh tokens, signing keys.

Only this module knows the tables; methods are synchronous and run on the
database thread through `SqliteDatabase.run` / `transaction`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, TypeVar

import sqlite_utils


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


MIGRATIONS = [_migration_1, _migration_2]


@dataclasses.dataclass(frozen=True)
class UserRow:
    user_id: str
    username: str
    signing_key: bytes
    created_at: float


@dataclasses.dataclass(frozen=True)
class DeviceRow:
    device_id: str
    user_id: str
    signing_key: bytes
    dh_key: bytes
    certificate: bytes
    display_name: str
    created_at: float
    revoked_at: float | None


@dataclasses.dataclass(frozen=True)
class ChallengeRow:
    challenge_id: str
    user_id: str
    device_id: str
    nonce: bytes
    expires_at: float


@dataclasses.dataclass(frozen=True)
class RefreshTokenRow:
    token_hash: bytes
    family_id: str
    user_id: str
    device_id: str
    created_at: float
    expires_at: float
    spent_at: float | None
    revoked_at: float | None


@dataclasses.dataclass(frozen=True)
class SigningKeyRow:
    key_id: str
    seed: bytes
    public_key: bytes
    created_at: float
    retired_at: float | None


Row = TypeVar("Row", "UserRow", "DeviceRow", "ChallengeRow", "RefreshTokenRow", "SigningKeyRow")


def _columns(row_type: type[Any]) -> str:
    """The column list of a row dataclass: its fields, in order."""
    return ", ".join(f.name for f in dataclasses.fields(row_type))


def _select(row_type: type[Row], table: str, where: str = "") -> str:
    return f"SELECT {_columns(row_type)} FROM {table} {where}"


def _insert(db: sqlite_utils.Database, table: str, row: Any) -> None:
    names = _columns(type(row))
    marks = ", ".join("?" for _ in dataclasses.fields(row))
    db.execute(f"INSERT INTO {table} ({names}) VALUES ({marks})", list(dataclasses.astuple(row)))


def _one(db: sqlite_utils.Database, row_type: type[Row], sql: str, params: list[Any]) -> Row | None:
    row = db.execute(sql, params).fetchone()
    return None if row is None else row_type(*row)


def _all(db: sqlite_utils.Database, row_type: type[Row], sql: str, params: list[Any]) -> list[Row]:
    return [row_type(*row) for row in db.execute(sql, params).fetchall()]


# Users and devices


def user_by_id(db: sqlite_utils.Database, user_id: str) -> UserRow | None:
    return _one(db, UserRow, _select(UserRow, "users", "WHERE user_id = ?"), [user_id])


def user_by_name(db: sqlite_utils.Database, username: str) -> UserRow | None:
    return _one(db, UserRow, _select(UserRow, "users", "WHERE username = ?"), [username])


def insert_user(db: sqlite_utils.Database, user: UserRow) -> None:
    _insert(db, "users", user)


def device_by_id(db: sqlite_utils.Database, device_id: str) -> DeviceRow | None:
    return _one(db, DeviceRow, _select(DeviceRow, "devices", "WHERE device_id = ?"), [device_id])


def devices_of(db: sqlite_utils.Database, user_id: str, include_revoked: bool) -> list[DeviceRow]:
    where = "WHERE user_id = ?" + ("" if include_revoked else " AND revoked_at IS NULL")
    return _all(db, DeviceRow, _select(DeviceRow, "devices", where + " ORDER BY created_at, device_id"), [user_id])


def insert_device(db: sqlite_utils.Database, device: DeviceRow) -> None:
    _insert(db, "devices", device)


def devices_revoked_since(db: sqlite_utils.Database, since: float) -> list[DeviceRow]:
    return _all(
        db, DeviceRow, _select(DeviceRow, "devices", "WHERE revoked_at >= ? ORDER BY revoked_at, device_id"), [since]
    )


def revoke_device(db: sqlite_utils.Database, device_id: str, now: float) -> bool:
    """Marks the device revoked; False when it already was."""
    cursor = db.execute(
        "UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL", [now, device_id]
    )
    return bool(cursor.rowcount)


# Login challenges


def insert_challenge(db: sqlite_utils.Database, challenge: ChallengeRow, now: float) -> None:
    db.execute("DELETE FROM login_challenges WHERE expires_at < ?", [now])
    _insert(db, "login_challenges", challenge)


def take_challenge(db: sqlite_utils.Database, challenge_id: str) -> ChallengeRow | None:
    """Removes and returns a challenge: each one can be presented once."""
    sql = f"DELETE FROM login_challenges WHERE challenge_id = ? RETURNING {_columns(ChallengeRow)}"
    return _one(db, ChallengeRow, sql, [challenge_id])


# Refresh tokens


def insert_refresh_token(db: sqlite_utils.Database, token: RefreshTokenRow) -> None:
    # Expired tokens are useless even for reuse detection, so they go here.
    db.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", [token.created_at])
    _insert(db, "refresh_tokens", token)


def refresh_token(db: sqlite_utils.Database, token_hash: bytes) -> RefreshTokenRow | None:
    return _one(db, RefreshTokenRow, _select(RefreshTokenRow, "refresh_tokens", "WHERE token_hash = ?"), [token_hash])


def spend_refresh_token(db: sqlite_utils.Database, token_hash: bytes, now: float) -> None:
    db.execute("UPDATE refresh_tokens SET spent_at = ? WHERE token_hash = ?", [now, token_hash])


def revoke_family(db: sqlite_utils.Database, family_id: str, now: float) -> int:
    cursor = db.execute(
        "UPDATE refresh_tokens SET revoked_at = ? WHERE family_id = ? AND revoked_at IS NULL", [now, family_id]
    )
    return 1 if cursor.rowcount else 0


def revoke_device_sessions(db: sqlite_utils.Database, device_id: str, now: float) -> int:
    families = db.execute(
        "SELECT DISTINCT family_id FROM refresh_tokens WHERE device_id = ? AND revoked_at IS NULL", [device_id]
    ).fetchall()
    db.execute("UPDATE refresh_tokens SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL", [now, device_id])
    return len(families)


# Token signing keys


def signing_keys(db: sqlite_utils.Database) -> list[SigningKeyRow]:
    return _all(db, SigningKeyRow, _select(SigningKeyRow, "signing_keys", "ORDER BY created_at, key_id"), [])


def insert_signing_key(db: sqlite_utils.Database, key: SigningKeyRow, now: float) -> None:
    db.execute("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL", [now])
    _insert(db, "signing_keys", key)
