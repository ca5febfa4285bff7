"""Prekey bundles and device lists through a real server's IdentityService, on SQLite and PostgreSQL (issue 12)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import nacl.public
import pytest

from parley import Client
from parley.crypto import identity as proofs
from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from services import allinone
from tests.support import bearer, error_reason, make_config, running

pytest_plugins = ["tests.storage_backends"]


@pytest.fixture
async def address(storage_url: str, data_dir: Path) -> AsyncIterator[str]:
    config = make_config(data_dir, **{"storage.url": storage_url, "auth.prekey_fetches_per_minute": 8})
    async with running(allinone.create_server, config) as (_, bound):
        yield bound


def x25519() -> bytes:
    return bytes(nacl.public.PrivateKey.generate().public_key)


async def test_bundles_hand_out_each_one_time_prekey_once_and_fetches_are_limited(address: str, tmp_path: Path) -> None:
    async with (
        Client(address, username="bob", key_file=tmp_path / "b.json") as bob,
        Client(address, username="ann", key_file=tmp_path / "a.json") as ann,
        grpc.aio.insecure_channel(address) as channel,
    ):
        identity = identity_pb2_grpc.IdentityServiceStub(channel)
        spk = x25519()
        signature = bob.identity.device_signing_key.sign(proofs.signed_prekey_bytes(1, spk)).signature
        upload = identity_pb2.UploadPrekeysRequest(
            signed_prekey=identity_pb2.SignedPrekey(key_id=1, public_key=spk, signature=signature),
            one_time_prekeys=[identity_pb2.OneTimePrekey(key_id=n, public_key=x25519()) for n in range(5)],
        )
        uploaded = await identity.UploadPrekeys(upload, metadata=bearer(await bob.access_token()))
        assert uploaded.one_time_prekeys == 5
        assert bob.identity.user_signing_key is not None
        content = identity_pb2.DeviceListContent(user_id=bob.user_id, counter=1, device_ids=[bob.device_id])
        listed = content.SerializeToString()
        await identity.PublishDeviceList(
            identity_pb2.PublishDeviceListRequest(
                device_list=identity_pb2.SignedDeviceList(
                    list=listed,
                    signature=bob.identity.user_signing_key.sign(proofs.device_list_bytes(listed)).signature,
                )
            ),
            metadata=bearer(await bob.access_token()),
        )

        token = bearer(await ann.access_token())
        fetches = await asyncio.gather(
            *(
                identity.FetchPrekeyBundles(identity_pb2.FetchPrekeyBundlesRequest(user_id=bob.user_id), metadata=token)
                for _ in range(6)
            )
        )
        bundles = [f.bundles[0] for f in fetches]
        assert sorted(b.one_time_prekey.key_id for b in bundles if b.HasField("one_time_prekey")) == list(range(5))
        assert sum(not b.HasField("one_time_prekey") for b in bundles) == 1
        assert all(b.signed_prekey.public_key == spk and b.device.device_id == bob.device_id for b in bundles)
        assert fetches[0].device_list.list == listed
        assert fetches[0].user.signing_key == bob.identity.user_public_key
        counted = await identity.CountPrekeys(
            identity_pb2.CountPrekeysRequest(), metadata=bearer(await bob.access_token())
        )
        assert counted.one_time_prekeys == 0
        assert counted.HasField("signed_prekey_upload_time")

        for _ in range(2):
            await identity.FetchPrekeyBundles(
                identity_pb2.FetchPrekeyBundlesRequest(user_id=bob.user_id), metadata=token
            )
        with pytest.raises(grpc.aio.AioRpcError) as limited:
            await identity.FetchPrekeyBundles(
                identity_pb2.FetchPrekeyBundlesRequest(user_id=bob.user_id), metadata=token
            )
        assert error_reason(limited.value) == "RATE_LIMITED"

        got = await identity.GetDeviceList(identity_pb2.GetDeviceListRequest(user_id=bob.user_id), metadata=token)
        assert got.device_list.list == listed
        with pytest.raises(grpc.aio.AioRpcError) as anonymous:
            await identity.FetchPrekeyBundles(identity_pb2.FetchPrekeyBundlesRequest(user_id=bob.user_id))
        assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED
