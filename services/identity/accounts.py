"""Users and devices: registration, adding, listing, revoking, lookup."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable

import grpc

from parley.api.v1 import errors_pb2
from parley.crypto import identity as proofs
from parley.identity.v1 import identity_pb2
from services.identity import validation
from services.identity.storage import DeviceRow, IdentityStorage, IdentityTransaction, UserRow
from services.runtime.errors import ServiceError, already_exists, not_found, permission_denied, unauthenticated


def _bad_certificate() -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_BAD_CERTIFICATE,
        "device.certificate: does not verify under the user signing key",
        field="device.certificate",
    )


def _username_taken(username: str) -> ServiceError:
    return already_exists(errors_pb2.ERROR_REASON_USERNAME_TAKEN, f"username {username!r} is taken", field="username")


def _device_exists(device: DeviceRow) -> ServiceError:
    return already_exists(
        errors_pb2.ERROR_REASON_DEVICE_EXISTS,
        f"device {device.device_id} is already registered",
        field="device.signing_key",
    )


async def require_active_device(tx: IdentityTransaction, user_id: str, device_id: str) -> None:
    """The caller of an identity change must be one of the user's devices, not revoked.

    Checked in the store, not just the token: a token outlives its device's
    revocation by up to its lifetime, and must not keep the power to change
    the account (add or revoke devices, end sessions, change keys).
    """
    if not device_id:
        raise permission_denied(
            errors_pb2.ERROR_REASON_NOT_OWNER, "identity changes need an access token issued to one of your devices"
        )
    device = await tx.device_by_id(device_id)
    if device is None or device.user_id != user_id:
        raise permission_denied(errors_pb2.ERROR_REASON_NOT_OWNER, f"device {device_id!r} is not one of yours")
    if device.revoked_at is not None:
        raise unauthenticated(
            errors_pb2.ERROR_REASON_DEVICE_REVOKED, f"this device ({device_id}) was revoked; its tokens change nothing"
        )


class Accounts:
    def __init__(self, storage: IdentityStorage, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._clock = clock

    async def register(
        self, username: str, user_key: bytes, device: identity_pb2.DeviceKeys
    ) -> tuple[UserRow, DeviceRow]:
        validation.check_username(username)
        validation.check_signing_key(user_key, "user_signing_key")
        validation.check_device_keys(device)
        if not validation.certificate_verifies(user_key, device):
            raise _bad_certificate()
        now = self._clock()
        user = UserRow(f"u{secrets.token_hex(12)}", username, user_key, now)
        device_row = self._device_row(user.user_id, device, now)
        async with self._storage.transaction() as tx:
            if await tx.user_by_name(username) is not None:
                raise _username_taken(username)
            await self._check_device_is_new(tx, device_row)
            # A registration racing this one may have taken the name or key meanwhile.
            if not await tx.insert_user(user):
                raise _username_taken(username)
            if not await tx.insert_device(device_row):
                raise _device_exists(device_row)
        return user, device_row

    async def add_device(
        self,
        user_id: str,
        caller_device: str,
        device: identity_pb2.DeviceKeys,
        max_devices: int,
        charge: Callable[[str], None],
    ) -> DeviceRow:
        """Adds a device; `charge(user_id)` (which may refuse) is called once every check has passed.

        So an addition that fails costs the user nothing. `charge` runs inside
        the transaction, before the device is written.
        """
        validation.check_device_keys(device)
        now = self._clock()
        async with self._storage.transaction() as tx:
            # Held until the end: the user's device additions take turns, so the limit holds.
            user = await tx.lock_user(user_id)
            if user is None:
                raise _no_user(user_id)
            await require_active_device(tx, user_id, caller_device)
            if len(await tx.devices_of(user_id, include_revoked=False)) >= max_devices:
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    errors_pb2.ERROR_REASON_QUOTA_EXCEEDED,
                    f"a user may have at most {max_devices} devices; revoke one first",
                )
            if not validation.certificate_verifies(user.signing_key, device):
                raise _bad_certificate()
            row = self._device_row(user_id, device, now)
            await self._check_device_is_new(tx, row)
            charge(user_id)
            if not await tx.insert_device(row):
                raise _device_exists(row)
        return row

    async def revoke_device(self, user_id: str, caller_device: str, device_id: str) -> tuple[DeviceRow, bool]:
        """Revokes one of the user's devices and ends its sessions.

        Returns the device and whether this call revoked it (False: it already was, and nothing changed).
        """
        now = self._clock()
        async with self._storage.transaction() as tx:
            await require_active_device(tx, user_id, caller_device)
            device = await tx.device_by_id(device_id)
            if device is None or device.user_id != user_id:
                raise not_found(errors_pb2.ERROR_REASON_DEVICE_NOT_FOUND, f"you have no device {device_id!r}")
            newly_revoked = await tx.revoke_device(device_id, now)
            if newly_revoked:
                await tx.revoke_device_sessions(device_id, now)
            refreshed = await tx.device_by_id(device_id)
        assert refreshed is not None
        return refreshed, newly_revoked

    async def revoked_since(self, since: float) -> list[DeviceRow]:
        async with self._storage.transaction() as tx:
            return await tx.devices_revoked_since(since)

    async def user(self, user_id: str) -> UserRow:
        async with self._storage.transaction() as tx:
            user = await tx.user_by_id(user_id)
        if user is None:
            raise _no_user(user_id)
        return user

    async def user_named(self, username: str) -> UserRow:
        validation.check_username(username)
        async with self._storage.transaction() as tx:
            user = await tx.user_by_name(username)
        if user is None:
            raise not_found(errors_pb2.ERROR_REASON_USER_NOT_FOUND, f"no user named {username!r}")
        return user

    async def devices(self, user_id: str, include_revoked: bool) -> list[DeviceRow]:
        async with self._storage.transaction() as tx:
            if await tx.user_by_id(user_id) is None:
                raise _no_user(user_id)
            return await tx.devices_of(user_id, include_revoked)

    @staticmethod
    def _device_row(user_id: str, device: identity_pb2.DeviceKeys, now: float) -> DeviceRow:
        return DeviceRow(
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
    async def _check_device_is_new(tx: IdentityTransaction, device: DeviceRow) -> None:
        if await tx.device_by_id(device.device_id) is not None:
            raise _device_exists(device)


def _no_user(user_id: str) -> ServiceError:
    return not_found(errors_pb2.ERROR_REASON_USER_NOT_FOUND, f"no user with id {user_id!r}")
