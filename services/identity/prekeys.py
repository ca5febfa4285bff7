"""Device lists and prekeys: what a device publishes so others can start encrypted sessions with it.

The service checks every signature it stores but holds no key that could
make one: a device list is signed by the user key, prekeys by the device
key, and clients verify them again. One-time prekeys are handed out once
each (`IdentityTransaction.take_one_time_prekey`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import grpc
from google.protobuf.message import DecodeError

from parley.api.v1 import errors_pb2
from parley.crypto import identity as proofs
from parley.identity.v1 import identity_pb2
from services.identity.accounts import require_active_device
from services.identity.storage import (
    DeviceListRow,
    DeviceRow,
    IdentityStorage,
    KemPrekeyRow,
    OneTimePrekeyRow,
    SignedPrekeyRow,
    UserRow,
)
from services.runtime.errors import ServiceError, invalid_field, not_found

# One-time prekeys a device may hold on the server (clients keep ~100 and refill when low).
MAX_ONE_TIME_PREKEYS = 200
KEMS = frozenset({"ML-KEM-768"})
KEM_PUBLIC_KEY_BYTES = {"ML-KEM-768": 1184}


@dataclasses.dataclass(frozen=True)
class Bundle:
    device: DeviceRow
    signed_prekey: SignedPrekeyRow
    one_time_prekey: OneTimePrekeyRow | None
    kem_prekey: KemPrekeyRow | None


@dataclasses.dataclass(frozen=True)
class Bundles:
    user: UserRow
    bundles: list[Bundle]
    without_prekeys: list[str]
    device_list: DeviceListRow | None


def _bad_signature(field: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_BAD_SIGNATURE,
        f"{field}: does not verify",
        field=field,
    )


class Prekeys:
    def __init__(self, storage: IdentityStorage, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._clock = clock

    async def publish_device_list(
        self, user_id: str, caller_device: str, signed: identity_pb2.SignedDeviceList
    ) -> None:
        try:
            content = identity_pb2.DeviceListContent.FromString(signed.list)
        except DecodeError:
            raise invalid_field("device_list.list", "is not a serialized DeviceListContent") from None
        if content.user_id != user_id:
            raise invalid_field("device_list.list", "names another user")
        if not content.device_ids:
            raise invalid_field("device_list.list", "names no device")
        if content.counter >= 2**63:
            raise invalid_field("device_list.list", "counter must be below 2^63")
        async with self._storage.transaction() as tx:
            await require_active_device(tx, user_id, caller_device)
            user = await tx.user_by_id(user_id)
            assert user is not None  # the caller's device is active, so the user exists
            if not proofs.verify_signature(user.signing_key, proofs.device_list_bytes(signed.list), signed.signature):
                raise _bad_signature("device_list.signature")
            mine = {d.device_id for d in await tx.devices_of(user_id, include_revoked=False)}
            strangers = sorted(set(content.device_ids) - mine)
            if strangers:
                raise invalid_field("device_list.list", f"names devices that are not yours or are revoked: {strangers}")
            row = DeviceListRow(user_id, content.counter, signed.list, signed.signature, self._clock())
            if not await tx.put_device_list(row):
                raise invalid_field("device_list.list", "counter must be higher than the published list's")

    async def device_list(self, user_id: str) -> DeviceListRow:
        async with self._storage.transaction() as tx:
            row = await tx.device_list(user_id)
        if row is None:
            raise not_found(errors_pb2.ERROR_REASON_USER_NOT_FOUND, f"user {user_id!r} has published no device list")
        return row

    async def upload(self, user_id: str, caller_device: str, request: identity_pb2.UploadPrekeysRequest) -> int:
        """Stores the calling device's prekeys; returns how many one-time prekeys it holds now."""
        now = self._clock()
        async with self._storage.transaction() as tx:
            # Held until the end: the user's uploads take turns, so the cap holds.
            await tx.lock_user(user_id)
            await require_active_device(tx, user_id, caller_device)
            device = await tx.device_by_id(caller_device)
            assert device is not None
            if request.HasField("signed_prekey"):
                await tx.put_signed_prekey(_signed_prekey(device, request.signed_prekey, now))
            if request.HasField("kem_prekey"):
                await tx.put_kem_prekey(_kem_prekey(device, request.kem_prekey, now))
            one_time = [_one_time_prekey(device, key, n) for n, key in enumerate(request.one_time_prekeys)]
            if len({key.key_id for key in one_time}) != len(one_time):
                raise invalid_field("one_time_prekeys", "key ids repeat")
            held = await tx.count_one_time_prekeys(caller_device)
            if held + len(one_time) > MAX_ONE_TIME_PREKEYS:
                raise ServiceError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    errors_pb2.ERROR_REASON_QUOTA_EXCEEDED,
                    f"a device may hold at most {MAX_ONE_TIME_PREKEYS} one-time prekeys (it holds {held})",
                )
            added = await tx.add_one_time_prekeys(one_time)
            if added != len(one_time):
                # A key id the server holds already: the client's keys and the server's would differ.
                raise invalid_field("one_time_prekeys", "key ids already held; use new ones")
            return held + added

    async def count(self, user_id: str, caller_device: str) -> tuple[int, float | None]:
        async with self._storage.transaction() as tx:
            await require_active_device(tx, user_id, caller_device)
            signed = await tx.signed_prekey(caller_device)
            return await tx.count_one_time_prekeys(caller_device), signed.uploaded_at if signed else None

    async def bundles(self, user_id: str, device_ids: list[str], caller_device: str = "") -> Bundles:
        """A bundle for each active device of the user (those named, when any) but the caller's own:
        each takes a one-time prekey."""
        async with self._storage.transaction() as tx:
            user = await tx.user_by_id(user_id)
            if user is None:
                raise not_found(errors_pb2.ERROR_REASON_USER_NOT_FOUND, f"no user with id {user_id!r}")
            devices = await tx.devices_of(user_id, include_revoked=False)
            if device_ids:
                unknown = sorted(set(device_ids) - {d.device_id for d in devices})
                if unknown:
                    raise not_found(errors_pb2.ERROR_REASON_DEVICE_NOT_FOUND, f"no active devices {unknown}")
                devices = [d for d in devices if d.device_id in set(device_ids)]
            devices = [d for d in devices if d.device_id != caller_device]
            bundles, without = [], []
            for device in devices:
                signed = await tx.signed_prekey(device.device_id)
                if signed is None:
                    without.append(device.device_id)
                    continue
                one_time = await tx.take_one_time_prekey(device.device_id)
                bundles.append(Bundle(device, signed, one_time, await tx.kem_prekey(device.device_id)))
            return Bundles(user, bundles, without, await tx.device_list(user_id))


def _signed_prekey(device: DeviceRow, key: identity_pb2.SignedPrekey, now: float) -> SignedPrekeyRow:
    if not proofs.is_valid_dh_key(key.public_key):
        raise invalid_field("signed_prekey.public_key", "must be a 32-byte X25519 key that is not of low order")
    message = proofs.signed_prekey_bytes(key.key_id, key.public_key)
    if not proofs.verify_signature(device.signing_key, message, key.signature):
        raise _bad_signature("signed_prekey.signature")
    return SignedPrekeyRow(device.device_id, key.key_id, key.public_key, key.signature, now)


def _kem_prekey(device: DeviceRow, key: identity_pb2.KemPrekey, now: float) -> KemPrekeyRow:
    if key.kem not in KEMS:
        raise invalid_field("kem_prekey.kem", f"must be one of {sorted(KEMS)}")
    if len(key.public_key) != KEM_PUBLIC_KEY_BYTES[key.kem]:
        raise invalid_field("kem_prekey.public_key", f"must be {KEM_PUBLIC_KEY_BYTES[key.kem]} bytes for {key.kem}")
    message = proofs.kem_prekey_bytes(key.kem, key.key_id, key.public_key)
    if not proofs.verify_signature(device.signing_key, message, key.signature):
        raise _bad_signature("kem_prekey.signature")
    return KemPrekeyRow(device.device_id, key.key_id, key.kem, key.public_key, key.signature, now)


def _one_time_prekey(device: DeviceRow, key: identity_pb2.OneTimePrekey, index: int) -> OneTimePrekeyRow:
    if not proofs.is_valid_dh_key(key.public_key):
        raise invalid_field(
            f"one_time_prekeys[{index}].public_key", "must be a 32-byte X25519 key that is not of low order"
        )
    return OneTimePrekeyRow(device.device_id, key.key_id, key.public_key)
