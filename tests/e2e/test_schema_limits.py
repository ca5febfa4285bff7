"""Nobody freezes the server with JSON Schemas (issue 8, item 9): caps per room and per user,
compilation off the event loop and once per distinct schema, small room-changed notices."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastjsonschema
import grpc
import pytest
from google.protobuf import struct_pb2

from parley import Client
from parley.errors import error_from_rpc
from parley.gateway.v1 import gateway_pb2
from parley.room.v1 import room_pb2, room_pb2_grpc
from parley.values import to_value
from services import allinone
from services.room.rules import MAX_SCHEMA_BYTES
from services.runtime.config import EventDefinition, RoomDefinition
from tests.streams import stream
from tests.support import SERVICE_SECRET, bearer, make_config, running

SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")


def schema_of(size: int, tag: str = "") -> dict[str, Any]:
    """An object schema of about `size` bytes as compact JSON (at most `size`), unique to `tag`."""
    schema: dict[str, Any] = {"type": "object", "title": tag or uuid.uuid4().hex, "properties": {}}
    n = 0
    while True:
        schema["properties"][f"field_{n}"] = {"type": "string", "maxLength": 40}
        if len(json.dumps(schema, separators=(",", ":"))) > size:
            del schema["properties"][f"field_{n}"]
            return schema
        n += 1


def defined(name: str, schema: dict[str, Any]) -> room_pb2.EventDefinition:
    struct = struct_pb2.Struct()
    struct.update(schema)
    return room_pb2.EventDefinition(name=name, schema=struct)


if TYPE_CHECKING:
    Rooms = room_pb2_grpc.RoomServiceAsyncStub
    Server = tuple[str, Rooms, Client, Client]


@pytest.fixture
async def server(data_dir: Path, tmp_path: Path) -> AsyncIterator[Server]:
    declared = RoomDefinition(
        id="operators", events=[EventDefinition(name=f"e{i}", schema=schema_of(3000)) for i in range(3)]
    )
    config = make_config(
        data_dir,
        rooms=[declared],
        **{"room_service.max_schema_bytes_per_room": 5000, "room_service.max_schema_bytes_per_user": 8000},
    )
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="alice", key_file=tmp_path / "alice.json") as alice,
            Client(address, username="bob", key_file=tmp_path / "bob.json") as bob,
            grpc.aio.insecure_channel(address) as channel,
        ):
            yield address, room_pb2_grpc.RoomServiceStub(channel), alice, bob


async def create(rooms: Rooms, client: Client, room_id: str, *sizes: int) -> room_pb2.CreateRoomResponse:
    events = [defined(f"e{i}", schema_of(size)) for i, size in enumerate(sizes)]
    request = room_pb2.CreateRoomRequest(room_id=room_id, events=events)
    token = bearer(await client.access_token())
    response: room_pb2.CreateRoomResponse = await rooms.CreateRoom(request, metadata=token)
    return response


async def test_a_room_holds_at_most_its_share_of_schema_bytes(server: Server) -> None:
    _, rooms, alice, _ = server
    await create(rooms, alice, "fits", 2400, 2400)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(rooms, alice, "too-much", 2000, 2000, 2000)
    error = error_from_rpc(caught.value)
    assert (caught.value.code(), error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED")
    assert error.metadata["field"] == "events[2].schema"
    assert "5000 bytes" in error.message
    # Rooms an operator declared are not capped: "operators" holds 9000 bytes.
    token = bearer(await alice.access_token())
    declared = await rooms.GetRoom(room_pb2.GetRoomRequest(room_id="operators"), metadata=token)
    assert len(declared.room.events) == 3


async def test_a_user_holds_at_most_their_share_and_deleting_gives_it_back(server: Server) -> None:
    _, rooms, alice, bob = server
    await create(rooms, alice, "first", 4500)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await create(rooms, alice, "second", 4500)
    error = error_from_rpc(caught.value)
    assert (caught.value.code(), error.reason) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "QUOTA_EXCEEDED")
    # Another user's allowance is their own; a service is not counted; a room without schemas costs nothing.
    await create(rooms, bob, "bobs", 4500)
    await rooms.CreateRoom(
        room_pb2.CreateRoomRequest(room_id="by-service", events=[defined("e", schema_of(4500))]), metadata=SERVICE
    )
    await create(rooms, alice, "plain")
    await alice.delete_room("first")
    await create(rooms, alice, "second", 4500)


class SlowCompile:
    """Wraps fastjsonschema.compile: counts calls, and holds each one until released."""

    def __init__(self, compile: Callable[..., Any]) -> None:
        self._compile = compile
        self.calls = 0
        self.entered = threading.Event()
        self.released = threading.Event()

    def __call__(self, schema: Any, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        self.entered.set()
        if not self.released.wait(10):
            raise RuntimeError("compile was never released: it blocked the event loop that would release it")
        return self._compile(schema, *args, **kwargs)


async def test_compiling_the_largest_schemas_leaves_the_server_responsive(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    slow = SlowCompile(fastjsonschema.compile)
    monkeypatch.setattr(fastjsonschema, "compile", slow)
    per_room = 4 * MAX_SCHEMA_BYTES
    config = make_config(data_dir, **{"room_service.max_schema_bytes_per_room": per_room})
    schemas = [schema_of(MAX_SCHEMA_BYTES) for _ in range(4)]
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="carol", key_file=tmp_path / "carol.json") as carol,
            Client(address, username="dave", key_file=tmp_path / "dave.json") as dave,
            grpc.aio.insecure_channel(address) as channel,
            stream(address, await dave.access_token()) as watcher,
        ):
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            request = room_pb2.CreateRoomRequest(
                room_id="big", events=[defined(f"e{i}", schema) for i, schema in enumerate(schemas)]
            )
            creating = asyncio.ensure_future(rooms.CreateRoom(request, metadata=bearer(await carol.access_token())))
            assert await asyncio.to_thread(slow.entered.wait, 10)
            # The first schema's compilation is held: the server goes on answering meanwhile.
            for _ in range(3):
                await watcher.ok(ping=gateway_pb2.PingCommand())
            assert not creating.done()
            slow.released.set()
            created = await creating
            assert slow.calls == 4

            notice = (await watcher.next_other("room_changed")).room_changed
            assert notice.change.room.room_id == "big"
            assert [e.name for e in notice.change.room.events] == ["e0", "e1", "e2", "e3"]
            assert not any(e.HasField("schema") for e in notice.change.room.events)
            assert notice.ByteSize() < 1024 < per_room
            token = bearer(await dave.access_token())
            got = await rooms.GetRoom(room_pb2.GetRoomRequest(room_id="big"), metadata=token)
            assert got.room.events == created.room.events  # GetRoom serves the schemas

            # The gateway checks publishes with the same compiled schemas: nothing compiles again,
            # neither for the gateway nor for another room with the same schemas.
            await watcher.join("big")
            refused = await watcher.command(
                publish=gateway_pb2.PublishCommand(
                    room_id="big", events=[gateway_pb2.OutgoingEvent(event="e0", payload=to_value({"field_0": 5}))]
                )
            )
            assert refused.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
            request.room_id = "big-again"
            await rooms.CreateRoom(request, metadata=bearer(await carol.access_token()))
            assert slow.calls == 4


async def test_a_schema_that_breaks_fastjsonschema_is_a_clear_error(server: Server) -> None:
    address, rooms, alice, _ = server
    token = bearer(await alice.access_token())
    malformed = room_pb2.CreateRoomRequest(
        room_id="malformed", events=[defined("e", {"type": "object", "properties": []})]
    )
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await rooms.CreateRoom(malformed, metadata=token)
    error = error_from_rpc(caught.value)
    assert (error.reason, error.metadata["field"]) == ("VALIDATION_FAILED", "events[0].schema")
    # Compiles, but its validator divides by zero: each publish is refused, not an internal error.
    await rooms.CreateRoom(
        room_pb2.CreateRoomRequest(room_id="broken", events=[defined("n", {"multipleOf": 0})]), metadata=token
    )
    async with stream(address, await alice.access_token()) as connection:
        await connection.join("broken")
        reply = await connection.publish("broken", "n", 5)
    assert reply.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0], reply.status


@pytest.mark.parametrize(
    ("request_fields", "field"),
    [
        ({"name": "n" * 129}, "name"),
        ({"description": "d" * 1025}, "description"),
        ({"events": [room_pb2.EventDefinition(name="e", description="d" * 1025)]}, "events[0].description"),
    ],
)
async def test_room_texts_that_every_notice_carries_are_bounded(
    server: Server, request_fields: dict[str, Any], field: str
) -> None:
    _, rooms, alice, _ = server
    request = room_pb2.CreateRoomRequest(room_id="wordy", **request_fields)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await rooms.CreateRoom(request, metadata=bearer(await alice.access_token()))
    error = error_from_rpc(refused.value)
    assert (error.reason, error.metadata["field"]) == ("VALIDATION_FAILED", field)


async def test_a_page_of_rooms_stays_within_the_message_limit(data_dir: Path, tmp_path: Path) -> None:
    """Rooms listed with their schemas: a page holds what fits in 1 MiB, the next page the rest."""
    async with (
        running(allinone.create_server, make_config(data_dir)) as (_, address),
        Client(address, username="lister", key_file=tmp_path / "lister.json") as lister,
        grpc.aio.insecure_channel(address) as channel,
    ):
        await _page_through_big_rooms(room_pb2_grpc.RoomServiceStub(channel), lister)


async def _page_through_big_rooms(rooms: Rooms, lister: Client) -> None:
    for n in range(24):  # 24 rooms x 60 KB of schema: more than 1 MiB in all
        events = [defined(f"e{i}", schema_of(15_000, f"shared-{i}")) for i in range(4)]  # compiled once
        await rooms.CreateRoom(room_pb2.CreateRoomRequest(room_id=f"big-{n:02}", events=events), metadata=SERVICE)
    token = bearer(await lister.access_token())
    seen: list[str] = []
    pages = 0
    page_token = ""
    while True:
        page = await rooms.ListRooms(room_pb2.ListRoomsRequest(page_size=100, page_token=page_token), metadata=token)
        assert page.ByteSize() <= 1024 * 1024 + 70_000
        seen += [room.room_id for room in page.rooms]
        pages += 1
        page_token = page.next_page_token
        if not page_token:
            break
    assert pages >= 2
    assert [room_id for room_id in seen if room_id.startswith("big-")] == [f"big-{n:02}" for n in range(24)]
