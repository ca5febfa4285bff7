"""Revocation takes effect at once, streams live only as long as their token, registration is limited.

Each test plays the attacker: a device that was revoked (or a token that
expired) tries to keep its power.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client, ParleyError, RateLimitedError
from parley.api.v1 import errors_pb2
from parley.device_identity import DeviceIdentity
from parley.gateway.v1 import gateway_pb2
from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from parley.reasons import reason_name
from parley.room.v1 import room_pb2, room_pb2_grpc
from services import allinone
from services.identity import server as identity_server
from tests.streams import Stream, value
from tests.support import SERVICE_SECRET, bearer, error_reason, make_config, running, wait_until

pytestmark = pytest.mark.timeout(60)
REVOKED = reason_name(errors_pb2.ERROR_REASON_DEVICE_REVOKED)
EXPIRED = reason_name(errors_pb2.ERROR_REASON_TOKEN_EXPIRED)


async def _phone_of(laptop: Client, address: str) -> tuple[DeviceIdentity, Client]:
    phone = await laptop.add_device("phone")
    client = Client(address, identity=phone, reconnect=False)
    await client.connect()
    return phone, client


async def _go_away(stream: Stream) -> gateway_pb2.GoAway:
    while True:
        frame = await asyncio.wait_for(stream.others.get(), 10)
        if frame.WhichOneof("frame") == "go_away":
            return frame.go_away


@pytest.fixture
async def address(data_dir: Path) -> AsyncIterator[str]:
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        yield address


async def test_a_revoked_device_cannot_lock_its_owner_out(address: str, tmp_path: Path) -> None:
    async with Client(address, username="owner", key_file=tmp_path / "owner.json") as laptop:
        phone, thief = await _phone_of(laptop, address)
        stolen = await thief.access_token()
        await laptop.revoke_device(phone.device_id)
        async with grpc.aio.insecure_channel(address) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            attempts = [
                stub.RevokeDevice(
                    identity_pb2.RevokeDeviceRequest(device_id=laptop.device_id), metadata=bearer(stolen)
                ),
                stub.AddDevice(
                    identity_pb2.AddDeviceRequest(device=laptop.identity.certify(laptop.identity.new_device("x"))),
                    metadata=bearer(stolen),
                ),
                stub.Logout(identity_pb2.LogoutRequest(), metadata=bearer(stolen)),
            ]
            for attempt in attempts:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await attempt
                assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert error_reason(refused.value) == REVOKED
        assert [d.device_id for d in await laptop.devices()] == [laptop.device_id]
        await thief.close()


async def test_the_identity_service_checks_the_calling_device_in_its_store(data_dir: Path, tmp_path: Path) -> None:
    """The identity process on its own follows no revocation feed: its own store must refuse."""
    async with running(identity_server.create_server, make_config(data_dir)) as (_, address):
        async with Client(address, username="owner", key_file=tmp_path / "owner.json") as laptop:
            phone, thief = await _phone_of(laptop, address)
            stolen = await thief.access_token()
            await laptop.revoke_device(phone.device_id)
            async with grpc.aio.insecure_channel(address) as channel:
                stub = identity_pb2_grpc.IdentityServiceStub(channel)
                # The token itself still verifies here...
                who = await stub.WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer(stolen))
                assert who.device_id == phone.device_id
                # ...but changes nothing.
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await stub.RevokeDevice(
                        identity_pb2.RevokeDeviceRequest(device_id=laptop.device_id), metadata=bearer(stolen)
                    )
                assert error_reason(refused.value) == REVOKED
            assert [d.device_id for d in await laptop.devices()] == [laptop.device_id]
            await thief.close()


async def test_revoking_a_device_ends_its_streams_and_its_tokens_at_once(address: str, tmp_path: Path) -> None:
    async with Client(address, username="owner", key_file=tmp_path / "owner.json") as laptop:
        phone, thief = await _phone_of(laptop, address)
        stolen = await thief.access_token()
        await laptop.create_room("family")
        async with grpc.aio.insecure_channel(address) as channel:
            stream = await Stream(channel, stolen).open()
            joined = await stream.command(join=gateway_pb2.JoinCommand(room_id="family"))
            assert joined.status.code == 0, joined.status
            await laptop.revoke_device(phone.device_id)
            go_away = await _go_away(stream)
            assert go_away.status.reason == REVOKED
            ended = await asyncio.wait_for(stream.ended, 10)
            assert ended is not None
            assert ended.code() == grpc.StatusCode.UNAUTHENTICATED
            # Neither a new stream nor any other call takes the token any more.
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await Stream(channel, stolen).open()
            assert error_reason(refused.value) == REVOKED
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await rooms.ListRooms(room_pb2.ListRoomsRequest(), metadata=bearer(stolen))
            assert error_reason(refused.value) == REVOKED
        await thief.close()


@pytest.fixture
async def short_tokens(data_dir: Path) -> AsyncIterator[str]:
    # Token times are whole seconds: a 3 s token lives 2 to 3 s.
    settings = {"auth.access_token_ttl_seconds": 3, "auth.clock_skew_seconds": 0.0}
    async with running(allinone.create_server, make_config(data_dir, **settings)) as (_, address):
        yield address


async def test_a_stream_ends_when_its_token_expires(short_tokens: str, tmp_path: Path) -> None:
    async with Client(short_tokens, username="ann", key_file=tmp_path / "ann.json") as ann:
        token = await ann.access_token()
        async with grpc.aio.insecure_channel(short_tokens) as channel:
            stream = await Stream(channel, token).open()
            assert stream.welcome is not None
            expires_ms = stream.welcome.token_expire_time_ms
            assert abs(expires_ms / 1000 - (time.time() + 3)) < 2
            go_away = await _go_away(stream)
            assert go_away.status.reason == EXPIRED
            assert time.time() * 1000 >= expires_ms
            ended = await asyncio.wait_for(stream.ended, 10)
            assert ended is not None
            assert ended.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_refresh_command_keeps_the_stream(short_tokens: str, tmp_path: Path) -> None:
    async with (
        Client(short_tokens, username="ann", key_file=tmp_path / "ann.json") as ann,
        Client(short_tokens, username="bob", key_file=tmp_path / "bob.json") as bob,
    ):
        await ann.create_room("kept")
        async with grpc.aio.insecure_channel(short_tokens) as channel:
            stream = await Stream(channel, await ann.access_token()).open()
            joined = await stream.command(join=gateway_pb2.JoinCommand(room_id="kept"))
            assert joined.status.code == 0, joined.status
            # Someone else's token, or no token, is refused and the stream stays.
            other = await stream.command(refresh=gateway_pb2.RefreshCommand(access_token=await bob.access_token()))
            assert other.status.reason == reason_name(errors_pb2.ERROR_REASON_NOT_OWNER)
            forged = await stream.command(refresh=gateway_pb2.RefreshCommand(access_token="e30.e30.e30"))
            assert forged.status.code == grpc.StatusCode.UNAUTHENTICATED.value[0]
            for _ in range(3):  # well past the first token's life
                await asyncio.sleep(1.2)
                fresh = await ann.access_token()
                reply = await stream.command(refresh=gateway_pb2.RefreshCommand(access_token=fresh))
                assert reply.status.code == 0, reply.status
                assert reply.refresh.token_expire_time_ms > time.time() * 1000
            published = await stream.command(
                publish=gateway_pb2.PublishCommand(
                    room_id="kept", events=[gateway_pb2.OutgoingEvent(event="note", payload=value("still here"))]
                )
            )
            assert published.status.code == 0, published.status
            assert not stream.ended.done()


async def test_the_sdk_refreshes_its_stream_in_band(short_tokens: str, tmp_path: Path) -> None:
    async with (
        Client(short_tokens, username="ann", key_file=tmp_path / "ann.json") as ann,
        Client(short_tokens, username="bob", key_file=tmp_path / "bob.json") as bob,
    ):
        endings: list[object] = []
        welcomes: list[gateway_pb2.Welcome] = []
        ann.on_disconnect(endings.append)
        ann.on_connect(welcomes.append)
        await ann.create_room("talk")
        room = await ann.join("talk")
        received: list[object] = []
        room.on("note", lambda event: received.append(event.data))
        await asyncio.sleep(5.5)  # well past the first token's life
        bob_room = await bob.join("talk")
        await bob_room.trigger("note", "hello")
        await wait_until(lambda: received == ["hello"])
        # One stream all along, whose first token expired long ago: it was refreshed in-band.
        assert endings == []
        assert len(welcomes) == 1
        assert 0 < welcomes[0].token_expire_time_ms < time.time() * 1000 - 2_000


async def test_registration_is_rate_limited_per_address(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, **{"auth.registrations_per_minute": 3})
    async with running(allinone.create_server, config) as (_, address):
        for n in range(3):
            async with Client(address, username=f"user{n}", key_file=tmp_path / f"u{n}.json"):
                pass
        with pytest.raises(RateLimitedError) as refused:
            async with Client(address, username="user3", key_file=tmp_path / "u3.json"):
                pass
        assert refused.value.reason == reason_name(errors_pb2.ERROR_REASON_RATE_LIMITED)
        assert refused.value.retry_after > 0


async def test_connections_per_user_are_capped(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, **{"gateway.max_connections_per_user": 2})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="ann", key_file=tmp_path / "ann.json") as ann:
            token = await ann.access_token()
            async with grpc.aio.insecure_channel(address) as channel:
                first = await Stream(channel, token).open()
                await Stream(channel, token).open()
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await Stream(channel, token).open()
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert error_reason(refused.value) == reason_name(errors_pb2.ERROR_REASON_TOO_MANY_CONNECTIONS)
                first.call.cancel()  # a slot frees once the server has seen the stream end

                async def third_opens() -> bool:
                    try:
                        await Stream(channel, token).open()
                    except grpc.aio.AioRpcError:
                        return False
                    return True

                await wait_until(third_opens)


async def test_device_additions_are_bounded_and_failed_changes_cost_nothing(data_dir: Path, tmp_path: Path) -> None:
    """Each revocation reaches every gateway and stays there a token's lifetime: adding devices is bounded.

    Only additions that happen count; revocations are bounded by them.
    """
    settings = {"auth.max_devices_per_user": 2, "auth.device_additions_per_hour": 2}
    async with running(allinone.create_server, make_config(data_dir, **settings)) as (_, address):
        async with Client(address, username="churn", key_file=tmp_path / "churn.json") as churn:
            phone = await churn.add_device("phone")
            for _ in range(3):  # at the cap: refused, and free
                with pytest.raises(ParleyError) as full:
                    await churn.add_device("tablet")
                assert full.value.reason == reason_name(errors_pb2.ERROR_REASON_QUOTA_EXCEEDED)
            await churn.revoke_device(phone.device_id)
            tablet = await churn.add_device("tablet")
            await churn.revoke_device(tablet.device_id)
            with pytest.raises(RateLimitedError):
                await churn.add_device("watch")
            assert [d.device_id for d in await churn.devices()] == [churn.device_id]


async def test_a_stolen_device_cannot_spend_the_owners_device_budget(data_dir: Path, tmp_path: Path) -> None:
    """The owner recovers (adds a device, revokes the stolen one) however often the thief failed first."""
    settings = {"auth.max_devices_per_user": 4, "auth.device_additions_per_hour": 3}
    async with running(allinone.create_server, make_config(data_dir, **settings)) as (_, address):
        async with Client(address, username="owner", key_file=tmp_path / "owner.json") as laptop:
            phone, thief = await _phone_of(laptop, address)  # the first addition
            stolen = await thief.access_token()
            mallory = DeviceIdentity.generate("mallory")
            async with grpc.aio.insecure_channel(address) as channel:
                stub = identity_pb2_grpc.IdentityServiceStub(channel)

                async def thief_fails(expected: errors_pb2.ErrorReason.ValueType | None = None) -> None:
                    """Revokes a device that is not there and adds one another user certified, five times each."""
                    foreign = mallory.certify(mallory.new_device("x"))
                    for _ in range(5):
                        with pytest.raises(grpc.aio.AioRpcError) as revoking:
                            await stub.RevokeDevice(
                                identity_pb2.RevokeDeviceRequest(device_id="d-nobody"), metadata=bearer(stolen)
                            )
                        assert error_reason(revoking.value) == reason_name(
                            expected or errors_pb2.ERROR_REASON_DEVICE_NOT_FOUND
                        )
                        with pytest.raises(grpc.aio.AioRpcError) as adding:
                            await stub.AddDevice(identity_pb2.AddDeviceRequest(device=foreign), metadata=bearer(stolen))
                        assert error_reason(adding.value) == reason_name(
                            expected or errors_pb2.ERROR_REASON_BAD_CERTIFICATE
                        )

                await thief_fails()
                await laptop.add_device("new phone")  # the second
                await laptop.revoke_device(phone.device_id)
                await thief_fails(errors_pb2.ERROR_REASON_DEVICE_REVOKED)
            await laptop.add_device("tablet")  # the third
            with pytest.raises(RateLimitedError):
                await laptop.add_device("watch")
        await thief.close()


async def test_a_device_revoked_again_is_not_announced_again(address: str, tmp_path: Path) -> None:
    async with Client(address, username="owner", key_file=tmp_path / "owner.json") as laptop:
        phone = await laptop.add_device("phone")
        tablet = await laptop.add_device("tablet")
        async with grpc.aio.insecure_channel(address) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            watch = stub.WatchRevocations(
                identity_pb2.WatchRevocationsRequest(), metadata=bearer(f"svc:backend:{SERVICE_SECRET}")
            )
            batches = aiter(watch)
            snapshot = await asyncio.wait_for(anext(batches), 10)
            assert snapshot.snapshot_complete
            first = await laptop.revoke_device(phone.device_id)
            for _ in range(3):
                again = await laptop.revoke_device(phone.device_id)
                assert again.revoked_at == first.revoked_at
            await laptop.revoke_device(tablet.device_id)
            announced: list[str] = []
            while tablet.device_id not in announced:
                batch = await asyncio.wait_for(anext(batches), 10)
                announced += [device.device_id for device in batch.devices]
            assert announced == [phone.device_id, tablet.device_id]
            watch.cancel()
