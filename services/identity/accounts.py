"""Users and devices: registration, adding, listing, revoking, lookup."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import grpc
import sqlite_utils

from parley.api.v1 import errors_pb2
from parley.crypto import identity as proofs
from parley.identity.v1 import identity_pb2
from services.identity import store, validation
from services.runtime.errors import ServiceError, already_exists, not_found, permission_denied, unauthenticated
from services.runtime.sqlite import SqliteDatabase


def _bad_certificate() -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_BAD_CERTIFICATE,
        "device.certificate: does not verify under the user signing key",
        field="device.certificate",
    )


def require_active_device(db: sqlite_utils.Database, user_id: str, device_id: str) -> None:
    """The caller of an identity change must be one of the user's devices, not revoked.

    Checked in the store, not just the token: a token outlives its device's
    revocation by up to its lifetime, and must not keep the power to change
    the account (add or revoke devices, end sessions, change keys).
    """
    if not device_id:
        raise permission_denied(
            errors_pb2.ERROR_REASON_NOT_OWNER, "identity changes need an access token issued to one of your devices"
        )
    device = store.device_by_id(db, device_id)
    if device is None or device.user_id != user_id:
        raise permission_denied(errors_pb2.ERROR_REASON_NOT_OWNER, f"device {device_id!r} is not one of yours")
    if device.revoked_at is not None:
        raise unauthenticated(
            errors_pb2.ERROR_REASON_DEVICE_REVOKED, f"this device ({device_id}) was revoked; its tokens change nothing"
        )


class Accounts:
    def __init__(self, db: SqliteDatabase, clock: Callable[[], float] = time.time) -> None:
        self._db = db
        self._clock = clock

    async def register(
        self, username: str, user_key: bytes, device: identity_pb2.DeviceKeys
    ) -> tuple[store.UserRow, store.DeviceRow]:
        validation.check_username(username)
        validation.check_signing_key(user_key, "user_signing_key")
        validation.check_device_keys(device)
        if not validation.certificate_verifies(user_key, device):
            raise _bad_certificate()
        now = self._clock()
        user = store.UserRow(f"u{secrets.token_hex(12)}", username, user_key, now)
        device_row = self._device_row(user.user_id, device, now)

        def insert(db: sqlite_utils.Database) -> None:
            if store.user_by_name(db, username) is not None:
                raise already_exists(
                    errors_pb2.ERROR_REASON_USERNAME_TAKEN, f"username {username!r} is taken", field="username"
                )
            self._check_device_is_new(db, device_row)
            store.insert_user(db, user)
            store.insert_device(db, device_row)

        await self._db.transaction(insert)
        return user, device_row

    async def add_device(
        self,
        user_id: str,
        caller_device: str,
        device: identity_pb2.DeviceKeys,
        max_devices: int,
        charge: Callable[[str], None],
    ) -> store.DeviceRow:
        """Adds a device; `charge(user_id)` (which may refuse) is called once every check has passed.

        So an addition that fails costs the user nothing. `charge` runs on the
        database thread, inside the transaction, before the device is written.
        """
        validation.check_device_keys(device)
        now = self._clock()

        def insert(db: sqlite_utils.Database) -> store.DeviceRow:
            user = self._user(db, user_id)
            require_active_device(db, user_id, caller_device)
            if len(store.devices_of(db, user_id, include_revoked=False)) >= max_devices:
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    errors_pb2.ERROR_REASON_QUOTA_EXCEEDED,
                    f"a user may have at most {max_devices} devices; revoke one first",
                )
            if not validation.certificate_verifies(user.signing_key, device):
                raise _bad_certificate()
            row = self._device_row(user_id, device, now)
            self._check_device_is_new(db, row)
            charge(user_id)
            store.insert_device(db, row)
            return row

        return await self._db.transaction(insert)

    async def revoke_device(self, user_id: str, caller_device: str, device_id: str) -> tuple[store.DeviceRow, bool]:
        """Revokes one of the user's devices and ends its sessions.

        Returns the device and whether this call revoked it (False: it already was, and nothing changed).
        """
        now = self._clock()

        def revoke(db: sqlite_utils.Database) -> tuple[store.DeviceRow, bool]:
            require_active_device(db, user_id, caller_device)
            device = store.device_by_id(db, device_id)
            if device is None or device.user_id != user_id:
                raise not_found(errors_pb2.ERROR_REASON_DEVICE_NOT_FOUND, f"you have no device {device_id!r}")
            newly_revoked = store.revoke_device(db, device_id, now)
            if newly_revoked:
                store.revoke_device_sessions(db, device_id, now)
            refreshed = store.device_by_id(db, device_id)
            assert refreshed is not None
            return refreshed, newly_revoked

        return await self._db.transaction(revoke)

    async def revoked_since(self, since: float) -> list[store.DeviceRow]:
        return await self._db.run(lambda db: store.devices_revoked_since(db, since))

    async def user(self, user_id: str) -> store.UserRow:
        return await self._db.run(lambda db: self._user(db, user_id))

    async def user_named(self, username: str) -> store.UserRow:
        validation.check_username(username)

        def find(db: sqlite_utils.Database) -> store.UserRow:
            user = store.user_by_name(db, username)
            if user is None:
                raise not_found(errors_pb2.ERROR_REASON_USER_NOT_FOUND, f"no user named {username!r}")
            return user

        return await self._db.run(find)

    async def devices(self, user_id: str, include_revoked: bool) -> list[store.DeviceRow]:
        def find(db: sqlite_utils.Database) -> list[store.DeviceRow]:
            self._user(db, user_id)
            return store.devices_of(db, user_id, include_revoked)

        return await self._db.run(find)

    @staticmethod
    def _user(db: sqlite_utils.Database, user_id: str) -> store.UserRow:
        user = store.user_by_id(db, user_id)
        if user is None:
            raise not_found(errors_pb2.ERROR_REASON_USER_NOT_FOUND, f"no user with id {user_id!r}")
        return user

    @staticmethod
    def _device_row(user_id: str, device: identity_pb2.DeviceKeys, now: float) -> store.DeviceRow:
        return store.DeviceRow(
            device_id=proofs.device_id_for(device.signing_key),
            user_id=user_id,
            signing_key=device.signing_key,
            dh_key=device.dh_key,
            certificate=device.certificate,
            display_name=device.display_name,
            created_at=now,
            revoked_at=None,
        )

    @staticmethod
    def _check_device_is_new(db: sqlite_utils.Database, device: store.DeviceRow) -> None:
        if store.device_by_id(db, device.device_id) is not None:
            raise already_exists(
                errors_pb2.ERROR_REASON_DEVICE_EXISTS,
                f"device {device.device_id} is already registered",
                field="device.signing_key",
            )
