"""Where the identity service keeps users, devices, login challenges, refresh tokens and signing keys.

The rules (who may log in, when a refresh token is spent or its family
revoked) live in `accounts.py` and `sessions.py`; they run inside one
`IdentityStorage.transaction()` and read and write through its steps.
Both implementations hold them under concurrency: SQLite runs one
transaction at a time; PostgreSQL (READ COMMITTED) relies on the row locks
the steps document, so a challenge or a refresh token is used once however
many processes race for it.
"""

from __future__ import annotations

import dataclasses
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from services.runtime.config import Config


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


@dataclasses.dataclass(frozen=True)
class DeviceListRow:
    user_id: str
    counter: int
    list: bytes
    signature: bytes
    published_at: float


@dataclasses.dataclass(frozen=True)
class SignedPrekeyRow:
    device_id: str
    key_id: int
    public_key: bytes
    signature: bytes
    uploaded_at: float


@dataclasses.dataclass(frozen=True)
class OneTimePrekeyRow:
    device_id: str
    key_id: int
    public_key: bytes


@dataclasses.dataclass(frozen=True)
class KemPrekeyRow:
    device_id: str
    key_id: int
    kem: str
    public_key: bytes
    signature: bytes
    uploaded_at: float


def columns(row_type: type[Any]) -> str:
    """The column list of a row dataclass: its fields, in order (the tables have these columns)."""
    return ", ".join(f.name for f in dataclasses.fields(row_type))


def select(row_type: type[Any], table: str, where: str = "") -> str:
    """A SELECT of a row dataclass's columns (`where` in the dialect's own placeholders)."""
    return f"SELECT {columns(row_type)} FROM {table} {where}"


class IdentityTransaction(Protocol):
    """The steps of one transaction; what they write commits together when it ends."""

    # Users and devices

    async def user_by_id(self, user_id: str) -> UserRow | None: ...

    async def user_by_name(self, username: str) -> UserRow | None: ...

    async def lock_user(self, user_id: str) -> UserRow | None:
        """The user, held until the transaction ends: changes to their devices take turns."""

    async def insert_user(self, user: UserRow) -> bool:
        """False (and nothing written) when the username or id is taken."""

    async def device_by_id(self, device_id: str) -> DeviceRow | None: ...

    async def devices_of(self, user_id: str, include_revoked: bool) -> list[DeviceRow]:
        """The user's devices, oldest first."""

    async def insert_device(self, device: DeviceRow) -> bool:
        """False (and nothing written) when the device id or signing key is taken."""

    async def devices_revoked_since(self, since: float) -> list[DeviceRow]: ...

    async def revoke_device(self, device_id: str, now: float) -> bool:
        """Marks the device revoked; False when it already was."""

    # Login challenges

    async def insert_challenge(self, challenge: ChallengeRow, now: float) -> None:
        """Stores a challenge (and forgets those expired by `now`)."""

    async def take_challenge(self, challenge_id: str) -> ChallengeRow | None:
        """Removes and returns a challenge: of racing transactions, one gets it, the others None."""

    # Refresh tokens

    async def insert_refresh_token(self, token: RefreshTokenRow) -> None:
        """Stores a token (and forgets tokens expired by its creation)."""

    async def refresh_token(self, token_hash: bytes) -> RefreshTokenRow | None: ...

    async def lock_refresh_token(self, token_hash: bytes) -> RefreshTokenRow | None:
        """The token as last committed, held until the transaction ends: racing uses of it take turns."""

    async def spend_refresh_token(self, token_hash: bytes, now: float) -> None: ...

    async def revoke_family(self, family_id: str, now: float) -> int:
        """Revokes every token of a session (those being rotated too); 1 if any was live, else 0."""

    async def revoke_device_sessions(self, device_id: str, now: float) -> int:
        """Revokes every session of a device (those being rotated too); returns how many were live."""

    # Device lists and prekeys

    async def device_list(self, user_id: str) -> DeviceListRow | None: ...

    async def put_device_list(self, row: DeviceListRow) -> bool:
        """Stores the list if its counter is higher than the stored one's; False (nothing written) otherwise."""

    async def signed_prekey(self, device_id: str) -> SignedPrekeyRow | None: ...

    async def put_signed_prekey(self, row: SignedPrekeyRow) -> None:
        """Replaces the device's signed prekey."""

    async def kem_prekey(self, device_id: str) -> KemPrekeyRow | None: ...

    async def put_kem_prekey(self, row: KemPrekeyRow) -> None:
        """Replaces the device's KEM prekey."""

    async def add_one_time_prekeys(self, rows: list[OneTimePrekeyRow]) -> int:
        """Adds the keys whose (device, key id) is new; returns how many were new."""

    async def count_one_time_prekeys(self, device_id: str) -> int: ...

    async def take_one_time_prekey(self, device_id: str) -> OneTimePrekeyRow | None:
        """Removes and returns one of the device's one-time prekeys: of racing transactions each gets a
        different key (or None once there are none)."""

    # Token signing keys

    async def signing_keys(self) -> list[SigningKeyRow]:
        """Every key, oldest first."""

    async def insert_signing_key(self, key: SigningKeyRow, now: float) -> None:
        """Makes `key` the current key, retiring every other (racing rotations take turns)."""


class IdentityStorage(Protocol):
    def transaction(self) -> AbstractAsyncContextManager[IdentityTransaction]:
        """One transaction: it commits when the block ends and rolls back when it raises."""

    async def close(self) -> None: ...


async def open_identity_storage(config: Config) -> IdentityStorage:
    """The identity service's storage, opened and migrated: SQLite under the data directory, or PostgreSQL."""
    url = config.storage.url_of("identity")
    storage: IdentityStorage
    if url:
        # Imported here: psycopg is loaded only by processes that use PostgreSQL.
        from services.identity.postgres_storage import PostgresIdentityStorage

        storage = await PostgresIdentityStorage.open(url, config.storage.max_connections)
    else:
        from services.identity.sqlite_storage import SqliteIdentityStorage

        storage = await SqliteIdentityStorage.open(config.server.data_dir / "identity.sqlite3")
    return storage
