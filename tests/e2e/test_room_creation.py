"""CreateRoom finishes what it started even when its caller goes away, and refuses a rate-limited user cheaply."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from parley import Client
from parley.room.v1 import room_pb2, room_pb2_grpc
from services import allinone
from services.room import definitions
from services.room.sqlite_storage import SqliteRoomStorage
from tests.streams import stream
from tests.support import bearer, error_reason, make_config, running, wait_until

ROOM = "porch"


async def test_a_create_whose_caller_goes_away_mid_commit_leaves_a_visible_room(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    entered, release = threading.Event(), threading.Event()
    insert_room = SqliteRoomStorage.insert_room

    async def slow_insert(storage: SqliteRoomStorage, room: room_pb2.Room, now: float) -> bool:
        entered.set()
        await asyncio.to_thread(release.wait, 5)
        return await insert_room(storage, room, now)

    monkeypatch.setattr(SqliteRoomStorage, "insert_room", slow_insert)
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with (
            Client(address, username="carl", key_file=tmp_path / "carl.json") as carl,
            grpc.aio.insecure_channel(address) as channel,
            stream(address, await carl.access_token()) as watcher,
        ):
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            token = bearer(await carl.access_token())
            call = rooms.CreateRoom(room_pb2.CreateRoomRequest(room_id=ROOM), metadata=token)
            await asyncio.to_thread(entered.wait, 5)  # the room's row is being written
            call.cancel()
            await asyncio.sleep(0.2)  # the server sees the cancellation while the row is written
            release.set()

            async def visible() -> bool:
                try:
                    await rooms.GetRoom(room_pb2.GetRoomRequest(room_id=ROOM), metadata=token)
                except grpc.aio.AioRpcError as error:
                    if error_reason(error) != "ROOM_NOT_FOUND":
                        raise
                    return False
                return True

            await wait_until(visible, within=3)
            changed = (await watcher.next_other("room_changed")).room_changed.change
            assert (changed.room.room_id, changed.kind) == (ROOM, room_pb2.RoomChange.KIND_CREATED)
            with pytest.raises(grpc.aio.AioRpcError) as again:
                await rooms.CreateRoom(room_pb2.CreateRoomRequest(room_id=ROOM), metadata=token)
            assert error_reason(again.value) == "ROOM_EXISTS"


async def test_the_creation_rate_limit_is_checked_before_the_request_is_converted(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    converted: list[str] = []
    from_request = definitions.from_request

    def counted(request: room_pb2.CreateRoomRequest, *args: Any) -> tuple[room_pb2.Room, int]:
        converted.append(request.room_id)
        return from_request(request, *args)

    monkeypatch.setattr(definitions, "from_request", counted)
    config = make_config(data_dir, **{"room_service.creations_per_hour": 1})
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="max", key_file=tmp_path / "max.json") as user,
            grpc.aio.insecure_channel(address) as channel,
        ):
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            token = bearer(await user.access_token())
            await rooms.CreateRoom(room_pb2.CreateRoomRequest(room_id="one"), metadata=token)
            for room_id in ("two", "three"):
                with pytest.raises(grpc.aio.AioRpcError) as limited:
                    await rooms.CreateRoom(room_pb2.CreateRoomRequest(room_id=room_id), metadata=token)
                assert error_reason(limited.value) == "RATE_LIMITED"
    assert converted == ["one"]
