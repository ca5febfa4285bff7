"""Identity storage on SQLite: users, devices, challenges, refresh tokens, signing keys.

Only this module knows the tables; methods are synchronous and run on the
database thread through `SqliteDatabase.run` / `transaction`.
"""

from __future__ import annotations

import dataclasses
from typing import Any

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


def _one(db: sqlite_utils.Database, row_type: Any, sql: str, params: list[Any]) -> Any:
    cursor = db.execute(sql, params)
    row = cursor.fetchone()
    if row is None:
        return None
    names = [d[0] for d in cursor.description]
    return row_type(**dict(zip(names, row, strict=True)))


def _all(db: sqlite_utils.Database, row_type: Any, sql: str, params: list[Any]) -> list[Any]:
    cursor = db.execute(sql, params)
    names = [d[0] for d in cursor.description]
    return [row_type(**dict(zip(names, row, strict=True))) for row in cursor.fetchall()]


# Users and devices


def user_by_id(db: sqlite_utils.Database, user_id: str) -> UserRow | None:
    result: UserRow | None = _one(db, UserRow, "SELECT * FROM users WHERE user_id = ?", [user_id])
    return result


def user_by_name(db: sqlite_utils.Database, username: str) -> UserRow | None:
    result: UserRow | None = _one(db, UserRow, "SELECT * FROM users WHERE username = ?", [username])
    return result


def insert_user(db: sqlite_utils.Database, user: UserRow) -> None:
    db.execute("INSERT INTO users VALUES (?, ?, ?, ?)", list(dataclasses.astuple(user)))


def device_by_id(db: sqlite_utils.Database, device_id: str) -> DeviceRow | None:
    result: DeviceRow | None = _one(db, DeviceRow, "SELECT * FROM devices WHERE device_id = ?", [device_id])
    return result


def devices_of(db: sqlite_utils.Database, user_id: str, include_revoked: bool) -> list[DeviceRow]:
    sql = "SELECT * FROM devices WHERE user_id = ?"
    if not include_revoked:
        sql += " AND revoked_at IS NULL"
    result: list[DeviceRow] = _all(db, DeviceRow, sql + " ORDER BY created_at, device_id", [user_id])
    return result


def insert_device(db: sqlite_utils.Database, device: DeviceRow) -> None:
    db.execute("INSERT INTO devices VALUES (?, ?, ?, ?, ?, ?, ?, ?)", list(dataclasses.astuple(device)))


def revoke_device(db: sqlite_utils.Database, device_id: str, now: float) -> None:
    db.execute("UPDATE devices SET revoked_at = ? WHERE device_id = ? AND revoked_at IS NULL", [now, device_id])


# Login challenges


def insert_challenge(db: sqlite_utils.Database, challenge: ChallengeRow, now: float) -> None:
    db.execute("DELETE FROM login_challenges WHERE expires_at < ?", [now])
    db.execute("INSERT INTO login_challenges VALUES (?, ?, ?, ?, ?)", list(dataclasses.astuple(challenge)))


def take_challenge(db: sqlite_utils.Database, challenge_id: str) -> ChallengeRow | None:
    """Removes and returns a challenge: each one can be presented once."""
    challenge: ChallengeRow | None = _one(
        db, ChallengeRow, "DELETE FROM login_challenges WHERE challenge_id = ? RETURNING *", [challenge_id]
    )
    return challenge


# Refresh tokens


def insert_refresh_token(db: sqlite_utils.Database, token: RefreshTokenRow) -> None:
    # Expired tokens are useless even for reuse detection, so they go here.
    db.execute("DELETE FROM refresh_tokens WHERE expires_at < ?", [token.created_at])
    db.execute("INSERT INTO refresh_tokens VALUES (?, ?, ?, ?, ?, ?, ?, ?)", list(dataclasses.astuple(token)))


def refresh_token(db: sqlite_utils.Database, token_hash: bytes) -> RefreshTokenRow | None:
    result: RefreshTokenRow | None = _one(
        db, RefreshTokenRow, "SELECT * FROM refresh_tokens WHERE token_hash = ?", [token_hash]
    )
    return result


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
    result: list[SigningKeyRow] = _all(db, SigningKeyRow, "SELECT * FROM signing_keys ORDER BY created_at", [])
    return result


def insert_signing_key(db: sqlite_utils.Database, key: SigningKeyRow, now: float) -> None:
    db.execute("UPDATE signing_keys SET retired_at = ? WHERE retired_at IS NULL", [now])
    db.execute("INSERT INTO signing_keys VALUES (?, ?, ?, ?, ?)", list(dataclasses.astuple(key)))
