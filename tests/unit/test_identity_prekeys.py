"""Device lists and prekeys in the identity service, on SQLite and PostgreSQL, with two identity storages on
one database as two processes would be: each one-time prekey is handed out once however many fetch at once,
a device list's counter only grows, every stored signature verifies (issue 12 part 1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import nacl.public
import pytest

from parley.crypto import identity as proofs
from parley.device_identity import DeviceIdentity
from parley.identity.v1 import identity_pb2
from services.identity.accounts import Accounts
from services.identity.prekeys import MAX_ONE_TIME_PREKEYS, Prekeys
from services.identity.storage import IdentityStorage, open_identity_storage
from services.runtime.errors import ServiceError
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]


@dataclass
class Process:
    storage: IdentityStorage
    accounts: Accounts
    prekeys: Prekeys


@pytest.fixture
async def processes(storage_url: str, tmp_path: Path) -> AsyncIterator[list[Process]]:
    opened = []
    try:
        for _ in range(2):
            storage = await open_identity_storage(storage_config(tmp_path, storage_url))
            opened.append(Process(storage, Accounts(storage), Prekeys(storage)))
        yield opened
    finally:
        for process in opened:
            await process.storage.close()


async def register(process: Process, name: str) -> DeviceIdentity:
    identity = DeviceIdentity.generate(name)
    user, _ = await process.accounts.register(name, identity.user_public_key, identity.certify(identity))
    identity.user_id = user.user_id
    return identity


def signed_prekey(device: DeviceIdentity, key_id: int) -> identity_pb2.SignedPrekey:
    public = bytes(nacl.public.PrivateKey.generate().public_key)
    signature = device.device_signing_key.sign(proofs.signed_prekey_bytes(key_id, public)).signature
    return identity_pb2.SignedPrekey(key_id=key_id, public_key=public, signature=signature)


def one_time(first: int, count: int) -> list[identity_pb2.OneTimePrekey]:
    return [
        identity_pb2.OneTimePrekey(key_id=n, public_key=bytes(nacl.public.PrivateKey.generate().public_key))
        for n in range(first, first + count)
    ]


def device_list(identity: DeviceIdentity, counter: int, device_ids: list[str]) -> identity_pb2.SignedDeviceList:
    assert identity.user_signing_key is not None
    content = identity_pb2.DeviceListContent(user_id=identity.user_id, counter=counter, device_ids=device_ids)
    serialized = content.SerializeToString()
    signature = identity.user_signing_key.sign(proofs.device_list_bytes(serialized)).signature
    return identity_pb2.SignedDeviceList(list=serialized, signature=signature)


async def test_each_one_time_prekey_is_handed_out_once_however_many_fetch_at_once(processes: list[Process]) -> None:
    bob = await register(processes[0], "bob")
    upload = identity_pb2.UploadPrekeysRequest(signed_prekey=signed_prekey(bob, 1), one_time_prekeys=one_time(1, 30))
    assert await processes[0].prekeys.upload(bob.user_id, bob.device_id, upload) == 30
    fetched = await asyncio.gather(*(processes[n % 2].prekeys.bundles(bob.user_id, []) for n in range(40)))
    taken = [f.bundles[0].one_time_prekey for f in fetched]
    handed_out = [key.key_id for key in taken if key is not None]
    assert sorted(handed_out) == list(range(1, 31)), "every key once, none twice"
    assert taken.count(None) == 10, "once they are gone, bundles come without one"
    assert all(f.bundles[0].signed_prekey.key_id == 1 for f in fetched)
    held, uploaded_at = await processes[1].prekeys.count(bob.user_id, bob.device_id)
    assert held == 0
    assert uploaded_at is not None


async def test_every_stored_signature_verifies_and_keys_are_checked(processes: list[Process]) -> None:
    bob = await register(processes[0], "bob")
    prekeys = processes[0].prekeys
    forged = signed_prekey(bob, 1)
    forged.signature = bytes(64)
    with pytest.raises(ServiceError) as bad:
        await prekeys.upload(bob.user_id, bob.device_id, identity_pb2.UploadPrekeysRequest(signed_prekey=forged))
    assert bad.value.reason == "BAD_SIGNATURE"
    low_order = identity_pb2.OneTimePrekey(key_id=1, public_key=bytes(32))
    with pytest.raises(ServiceError) as weak:
        await prekeys.upload(
            bob.user_id, bob.device_id, identity_pb2.UploadPrekeysRequest(one_time_prekeys=[low_order])
        )
    assert weak.value.metadata["field"] == "one_time_prekeys[0].public_key"
    repeated = one_time(1, 2)
    repeated[1].key_id = 1
    with pytest.raises(ServiceError, match="repeat"):
        await prekeys.upload(bob.user_id, bob.device_id, identity_pb2.UploadPrekeysRequest(one_time_prekeys=repeated))
    assert (await prekeys.count(bob.user_id, bob.device_id))[0] == 0, "a refused upload stores nothing"
    await prekeys.upload(
        bob.user_id, bob.device_id, identity_pb2.UploadPrekeysRequest(one_time_prekeys=one_time(1, 150))
    )
    with pytest.raises(ServiceError) as full:
        await prekeys.upload(
            bob.user_id, bob.device_id, identity_pb2.UploadPrekeysRequest(one_time_prekeys=one_time(151, 51))
        )
    assert full.value.reason == "QUOTA_EXCEEDED"
    assert MAX_ONE_TIME_PREKEYS == 200


async def test_a_device_without_a_signed_prekey_is_named_and_revoked_devices_are_left_out(
    processes: list[Process],
) -> None:
    bob = await register(processes[0], "bob")
    phone = bob.new_device("phone")
    await processes[0].accounts.add_device(bob.user_id, bob.device_id, bob.certify(phone), 10, lambda _: None)
    await processes[0].prekeys.upload(
        bob.user_id, bob.device_id, identity_pb2.UploadPrekeysRequest(signed_prekey=signed_prekey(bob, 7))
    )
    found = await processes[1].prekeys.bundles(bob.user_id, [])
    assert [b.device.device_id for b in found.bundles] == [bob.device_id]
    assert found.without_prekeys == [phone.device_id]
    await processes[0].accounts.revoke_device(bob.user_id, bob.device_id, phone.device_id)
    assert (await processes[1].prekeys.bundles(bob.user_id, [])).without_prekeys == []
    with pytest.raises(ServiceError) as gone:
        await processes[1].prekeys.bundles(bob.user_id, [phone.device_id])
    assert gone.value.reason == "DEVICE_NOT_FOUND"


async def test_a_device_list_is_signed_by_the_user_and_its_counter_only_grows(processes: list[Process]) -> None:
    bob = await register(processes[0], "bob")
    ann = await register(processes[0], "ann")
    prekeys = processes[0].prekeys
    with pytest.raises(ServiceError) as missing:
        await prekeys.device_list(bob.user_id)
    assert missing.value.reason == "USER_NOT_FOUND"
    await prekeys.publish_device_list(bob.user_id, bob.device_id, device_list(bob, 2, [bob.device_id]))
    racing = [device_list(bob, counter, [bob.device_id]) for counter in (3, 5, 4)]
    results = await asyncio.gather(
        *(processes[n % 2].prekeys.publish_device_list(bob.user_id, bob.device_id, r) for n, r in enumerate(racing)),
        return_exceptions=True,
    )
    assert sum(not isinstance(r, BaseException) for r in results) >= 1
    stored = identity_pb2.DeviceListContent.FromString((await prekeys.device_list(bob.user_id)).list)
    assert stored.counter == 5, "the highest counter stays"
    for stale in (device_list(bob, 5, [bob.device_id]), device_list(bob, 1, [bob.device_id])):
        with pytest.raises(ServiceError, match="counter"):
            await prekeys.publish_device_list(bob.user_id, bob.device_id, stale)
    not_by_bob = device_list(ann, 9, [bob.device_id])
    with pytest.raises(ServiceError, match="another user"):
        await prekeys.publish_device_list(bob.user_id, bob.device_id, not_by_bob)
    forged = device_list(bob, 9, [bob.device_id])
    assert ann.user_signing_key is not None
    forged.signature = ann.user_signing_key.sign(proofs.device_list_bytes(forged.list)).signature
    with pytest.raises(ServiceError) as bad:
        await prekeys.publish_device_list(bob.user_id, bob.device_id, forged)
    assert bad.value.reason == "BAD_SIGNATURE"
    with pytest.raises(ServiceError, match="not yours"):
        await prekeys.publish_device_list(bob.user_id, bob.device_id, device_list(bob, 9, [ann.device_id]))


async def test_key_ids_held_already_are_refused_and_a_callers_own_device_is_skipped(processes: list[Process]) -> None:
    bob = await register(processes[0], "bob")
    prekeys = processes[0].prekeys
    upload = identity_pb2.UploadPrekeysRequest(signed_prekey=signed_prekey(bob, 1), one_time_prekeys=one_time(1, 3))
    await prekeys.upload(bob.user_id, bob.device_id, upload)
    with pytest.raises(ServiceError, match="already held"):
        await prekeys.upload(
            bob.user_id, bob.device_id, identity_pb2.UploadPrekeysRequest(one_time_prekeys=one_time(3, 2))
        )
    assert (await prekeys.count(bob.user_id, bob.device_id))[0] == 3, "nothing of a refused upload is kept"
    mine = await prekeys.bundles(bob.user_id, [], caller_device=bob.device_id)
    assert mine.bundles == []
    assert mine.without_prekeys == []
    assert (await prekeys.count(bob.user_id, bob.device_id))[0] == 3, "fetching your own user spends none of yours"
    with pytest.raises(ServiceError, match="2\\^63"):
        await prekeys.publish_device_list(bob.user_id, bob.device_id, device_list(bob, 2**63, [bob.device_id]))
