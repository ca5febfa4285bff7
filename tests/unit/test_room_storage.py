"""Run-time rooms kept by the room service, on each storage backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

from parley.room.v1 import room_pb2
from services.room.storage import RoomStorage, open_room_storage
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]


def room(room_id: str, creator: str = "u1") -> room_pb2.Room:
    return room_pb2.Room(room_id=room_id, name=room_id.title(), creator=creator, max_size=5)


async def test_rooms_are_kept_whole_and_in_id_order(room_storage: RoomStorage) -> None:
    assert await room_storage.all_rooms() == []
    for room_id in ("porch", "attic", "cellar"):
        assert await room_storage.insert_room(room(room_id), now=1.0)
    assert [r.room_id for r in await room_storage.all_rooms()] == ["attic", "cellar", "porch"]
    assert (await room_storage.all_rooms())[0] == room("attic")
    await room_storage.delete_room("cellar")
    await room_storage.delete_room("nowhere")
    assert [r.room_id for r in await room_storage.all_rooms()] == ["attic", "porch"]


async def test_of_racing_creations_of_one_id_one_is_stored(storage_url: str, tmp_path: Path) -> None:
    config = storage_config(tmp_path, storage_url)
    storages = [await open_room_storage(config) for _ in range(2)]
    try:
        created = await asyncio.gather(
            *(storages[n % 2].insert_room(room("porch", creator=f"u{n}"), now=1.0) for n in range(8))
        )
        assert created.count(True) == 1
        (kept,) = await storages[1].all_rooms()
        assert kept.creator == f"u{created.index(True)}"
    finally:
        for storage in storages:
            await storage.close()


async def test_rooms_outlive_a_restart(storage_url: str, tmp_path: Path) -> None:
    config = storage_config(tmp_path, storage_url)
    first = await open_room_storage(config)
    await first.insert_room(room("porch"), now=1.0)
    await first.close()
    again = await open_room_storage(config)
    try:
        assert await again.all_rooms() == [room("porch")]
    finally:
        await again.close()
