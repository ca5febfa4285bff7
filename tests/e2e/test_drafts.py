"""Room registry, history log state and file policy through the all-in-one server."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.file.v1 import file_pb2, file_pb2_grpc
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.room.v1 import room_pb2, room_pb2_grpc
from services import allinone
from services.runtime.config import RoomDefinition
from tests.support import bearer, error_reason, make_config, running

ROOMS = [RoomDefinition(id=f"room-{i:02d}", name=f"Room {i}") for i in range(7)] + [
    RoomDefinition(id="secret", visibility="unlisted", max_size=4)
]


@pytest.fixture
async def channel_and_token(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[grpc.aio.Channel, object]]:
    config = make_config(data_dir, rooms=ROOMS, **{"files.media_types": ["image/*"]})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="rita", key_file=tmp_path / "rita.json") as rita:
            token = bearer(await rita.access_token())
            async with grpc.aio.insecure_channel(address) as channel:
                yield channel, token


async def test_list_rooms_pages_through_public_rooms(channel_and_token: tuple[grpc.aio.Channel, object]) -> None:
    channel, token = channel_and_token
    stub = room_pb2_grpc.RoomServiceStub(channel)
    seen: list[str] = []
    page_token = ""
    while True:
        page = await stub.ListRooms(room_pb2.ListRoomsRequest(page_size=3, page_token=page_token), metadata=token)
        assert len(page.rooms) <= 3
        seen += [r.room_id for r in page.rooms]
        page_token = page.next_page_token
        if not page_token:
            break
    assert seen == [f"room-{i:02d}" for i in range(7)]


async def test_get_room_and_unknown_room(channel_and_token: tuple[grpc.aio.Channel, object]) -> None:
    channel, token = channel_and_token
    stub = room_pb2_grpc.RoomServiceStub(channel)
    room = (await stub.GetRoom(room_pb2.GetRoomRequest(room_id="secret"), metadata=token)).room
    assert (room.max_size, room.visibility) == (4, room_pb2.ROOM_VISIBILITY_UNLISTED)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetRoom(room_pb2.GetRoomRequest(room_id="nope"), metadata=token)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert error_reason(caught.value) == "ROOM_NOT_FOUND"
    with pytest.raises(grpc.aio.AioRpcError) as bad_token:
        await stub.ListRooms(room_pb2.ListRoomsRequest(page_token="garbage!"), metadata=token)
    assert bad_token.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_log_state_of_a_log_never_written(channel_and_token: tuple[grpc.aio.Channel, object]) -> None:
    channel, token = channel_and_token
    stub = history_pb2_grpc.HistoryServiceStub(channel)
    state = (await stub.GetLogState(history_pb2.GetLogStateRequest(room_id="room-01"), metadata=token)).state
    assert (state.room_id, state.epoch, state.last_seq) == ("room-01", "", 0)
    assert not state.HasField("create_time")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.GetLogState(history_pb2.GetLogStateRequest(room_id="x" * 129), metadata=token)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (caught.value.details() or "").startswith("room_id:")


async def test_upload_policy_comes_from_config(channel_and_token: tuple[grpc.aio.Channel, object]) -> None:
    channel, token = channel_and_token
    policy = (
        await file_pb2_grpc.FileServiceStub(channel).GetUploadPolicy(file_pb2.GetUploadPolicyRequest(), metadata=token)
    ).policy
    assert list(policy.media_types) == ["image/*"]
    assert (policy.data_shares, policy.total_shares) == (3, 5)
