"""The room service: registry, event rules, membership and change feed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import struct_pb2

from parley import Client, RateLimitedError
from parley.room.v1 import room_pb2, room_pb2_grpc
from services import allinone
from services.runtime.config import ConfigError, EventDefinition, RoomDefinition
from tests.support import SERVICE_SECRET, bearer, error_reason, make_config, running

SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")


def struct(value: dict[str, object]) -> struct_pb2.Struct:
    schema = struct_pb2.Struct()
    schema.update(value)
    return schema


@pytest.fixture
async def rooms(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[room_pb2_grpc.RoomServiceStub, Client]]:
    (tmp_path / "sensor.json").write_text(json.dumps({"type": "object", "required": ["value"]}))
    config = make_config(
        data_dir,
        rooms=[
            RoomDefinition(id="game", max_size=2),
            RoomDefinition(id="news", events=[]),
            RoomDefinition(id="sensors", events=[EventDefinition(name="reading", schema_file="sensor.json")]),
        ],
    )
    config.config_dir = tmp_path
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="rita", key_file=tmp_path / "rita.json") as rita:
            async with grpc.aio.insecure_channel(address) as channel:
                yield room_pb2_grpc.RoomServiceStub(channel), rita


async def test_config_rooms_carry_their_rules(rooms: tuple[room_pb2_grpc.RoomServiceStub, Client]) -> None:
    stub, rita = rooms
    token = bearer(await rita.access_token())
    listed = await stub.ListRooms(room_pb2.ListRoomsRequest(), metadata=token)
    by_id = {r.room_id: r for r in listed.rooms}
    assert set(by_id) == {"game", "news", "sensors"}
    assert [e.name for e in by_id["game"].events] == ["*"]
    assert list(by_id["news"].events) == []
    (reading,) = by_id["sensors"].events
    assert dict(reading.schema)["required"] == ["value"]
    assert by_id["game"].max_size == 2


async def test_create_get_and_delete_by_creator(rooms: tuple[room_pb2_grpc.RoomServiceStub, Client]) -> None:
    stub, rita = rooms
    token = bearer(await rita.access_token())
    created = await stub.CreateRoom(
        room_pb2.CreateRoomRequest(room_id="party", name="Party", max_size=10), metadata=token
    )
    assert (created.room.creator, created.room.name) == (rita.user_id, "Party")
    got = await stub.GetRoom(room_pb2.GetRoomRequest(room_id="party"), metadata=token)
    assert got.room.max_size == 10
    with pytest.raises(grpc.aio.AioRpcError) as taken:
        await stub.CreateRoom(room_pb2.CreateRoomRequest(room_id="party"), metadata=token)
    assert error_reason(taken.value) == "ROOM_EXISTS"
    await stub.DeleteRoom(room_pb2.DeleteRoomRequest(room_id="party"), metadata=token)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await stub.GetRoom(room_pb2.GetRoomRequest(room_id="party"), metadata=token)
    assert error_reason(gone.value) == "ROOM_NOT_FOUND"


async def test_only_the_creator_or_a_service_deletes(
    rooms: tuple[room_pb2_grpc.RoomServiceStub, Client], tmp_path: Path
) -> None:
    stub, rita = rooms
    await stub.CreateRoom(room_pb2.CreateRoomRequest(room_id="mine"), metadata=bearer(await rita.access_token()))
    async with Client(rita.address, username="sam", key_file=tmp_path / "sam.json") as sam:
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await stub.DeleteRoom(room_pb2.DeleteRoomRequest(room_id="mine"), metadata=bearer(await sam.access_token()))
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(denied.value) == "NOT_CREATOR"
    await stub.DeleteRoom(room_pb2.DeleteRoomRequest(room_id="mine"), metadata=SERVICE)
    with pytest.raises(grpc.aio.AioRpcError) as declared:
        await stub.DeleteRoom(room_pb2.DeleteRoomRequest(room_id="game"), metadata=SERVICE)
    assert error_reason(declared.value) == "NOT_CREATOR"
    assert "config file" in (declared.value.details() or "")


async def test_a_bad_schema_names_the_field(rooms: tuple[room_pb2_grpc.RoomServiceStub, Client]) -> None:
    stub, rita = rooms
    request = room_pb2.CreateRoomRequest(
        room_id="bad",
        events=[room_pb2.EventDefinition(name="m"), room_pb2.EventDefinition(name="x", schema=struct({"type": 5}))],
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateRoom(request, metadata=bearer(await rita.access_token()))
    assert error_reason(caught.value) == "VALIDATION_FAILED"
    assert (caught.value.details() or "").startswith("events[1].schema:")


async def test_join_until_full_then_leave(rooms: tuple[room_pb2_grpc.RoomServiceStub, Client]) -> None:
    stub, rita = rooms
    first = await stub.JoinRoom(
        room_pb2.JoinRoomRequest(room_id="game", user_id="u1", session_id="s1"), metadata=SERVICE
    )
    assert first.first_connection
    again = await stub.JoinRoom(
        room_pb2.JoinRoomRequest(room_id="game", user_id="u1", session_id="s2"), metadata=SERVICE
    )
    assert not again.first_connection
    await stub.JoinRoom(room_pb2.JoinRoomRequest(room_id="game", user_id="u2", session_id="s3"), metadata=SERVICE)
    with pytest.raises(grpc.aio.AioRpcError) as full:
        await stub.JoinRoom(room_pb2.JoinRoomRequest(room_id="game", user_id="u3", session_id="s4"), metadata=SERVICE)
    assert error_reason(full.value) == "ROOM_FULL"
    token = bearer(await rita.access_token())
    people = await stub.ListParticipants(room_pb2.ListParticipantsRequest(room_id="game"), metadata=token)
    assert {p.user_id: list(p.session_ids) for p in people.participants} == {"u1": ["s1", "s2"], "u2": ["s3"]}
    assert (await stub.GetRoom(room_pb2.GetRoomRequest(room_id="game"), metadata=token)).room.size == 2
    left = await stub.LeaveRoom(room_pb2.LeaveRoomRequest(user_id="u1"), metadata=SERVICE)
    assert list(left.left_room_ids) == ["game"]
    await join(stub, "u3", "s4")


async def join(stub: room_pb2_grpc.RoomServiceStub, user_id: str, session_id: str) -> room_pb2.JoinRoomResponse:
    request = room_pb2.JoinRoomRequest(room_id="game", user_id=user_id, session_id=session_id)
    response: room_pb2.JoinRoomResponse = await stub.JoinRoom(request, metadata=SERVICE)
    return response


async def test_membership_rpcs_need_service_credentials(rooms: tuple[room_pb2_grpc.RoomServiceStub, Client]) -> None:
    stub, rita = rooms
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.JoinRoom(
            room_pb2.JoinRoomRequest(room_id="game", user_id=rita.user_id, session_id="s"),
            metadata=bearer(await rita.access_token()),
        )
    assert error_reason(caught.value) == "SERVICE_ONLY"


async def test_watch_sends_a_snapshot_then_changes(rooms: tuple[room_pb2_grpc.RoomServiceStub, Client]) -> None:
    stub, rita = rooms
    watch = stub.WatchRooms(room_pb2.WatchRoomsRequest(), metadata=SERVICE)
    snapshot = await asyncio.wait_for(watch.read(), 5)
    assert {c.room.room_id for c in snapshot.changes} == {"game", "news", "sensors"}
    assert (await asyncio.wait_for(watch.read(), 5)).snapshot_complete
    token = bearer(await rita.access_token())
    await stub.CreateRoom(room_pb2.CreateRoomRequest(room_id="fresh"), metadata=token)
    created = await asyncio.wait_for(watch.read(), 5)
    assert [(c.kind, c.room.room_id) for c in created.changes] == [(room_pb2.RoomChange.KIND_CREATED, "fresh")]
    await stub.DeleteRoom(room_pb2.DeleteRoomRequest(room_id="fresh"), metadata=token)
    deleted = await asyncio.wait_for(watch.read(), 5)
    assert [(c.kind, c.room.room_id) for c in deleted.changes] == [(room_pb2.RoomChange.KIND_DELETED, "fresh")]
    watch.cancel()


async def test_runtime_rooms_survive_a_restart(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir)
    for _ in range(2):
        async with running(allinone.create_server, config) as (_, address):
            async with Client(address, username="kim", key_file=tmp_path / "kim.json") as kim:
                async with grpc.aio.insecure_channel(address) as channel:
                    stub = room_pb2_grpc.RoomServiceStub(channel)
                    token = bearer(await kim.access_token())
                    listed = await stub.ListRooms(room_pb2.ListRoomsRequest(), metadata=token)
                    if not listed.rooms:
                        await stub.CreateRoom(room_pb2.CreateRoomRequest(room_id="kept"), metadata=token)
    assert [r.room_id for r in listed.rooms] == ["kept"]


def test_a_bad_config_room_is_a_config_error(data_dir: Path) -> None:
    config = make_config(
        data_dir, rooms=[RoomDefinition(id="x", events=[EventDefinition(name="e", schema={"type": 1})])]
    )
    with pytest.raises(ConfigError, match=r"rooms\.x"):
        asyncio.run(allinone.create_server(config))


@pytest.mark.parametrize(
    ("schema", "complaint"),
    [
        ({"$ref": "http://127.0.0.1:1/evil.json"}, "only local $ref"),
        ({"$ref": "file:///etc/passwd"}, "only local $ref"),
        ({"$id": "http://example.com/s", "type": "object"}, "may not name a URI"),
        ({"type": "string", "pattern": "(a+)+$"}, "pattern and patternProperties are not allowed"),
        ({"type": "object", "description": "x" * 20_000}, "at most"),
    ],
)
async def test_unsafe_schemas_are_refused(
    rooms: tuple[room_pb2_grpc.RoomServiceStub, Client], schema: dict[str, object], complaint: str
) -> None:
    stub, rita = rooms
    request = room_pb2.CreateRoomRequest(
        room_id="x", events=[room_pb2.EventDefinition(name="e", schema=struct(schema))]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.CreateRoom(request, metadata=bearer(await rita.access_token()))
    assert error_reason(caught.value) == "VALIDATION_FAILED"
    assert complaint in (caught.value.details() or "")


async def test_room_creation_is_rate_limited_per_user(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, **{"room_service.creations_per_hour": 2})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="max", key_file=tmp_path / "m.json") as user:
            await user.create_room("one")
            await user.create_room("two")
            with pytest.raises(RateLimitedError):
                await user.create_room("three")
        async with grpc.aio.insecure_channel(address) as channel:
            await room_pb2_grpc.RoomServiceStub(channel).CreateRoom(
                room_pb2.CreateRoomRequest(room_id="by-service"), metadata=SERVICE
            )
