"""Zulip-style check: a client's snapshot, brought up to date by resume replays and
live events, edits and deletes, equals a fresh snapshot read from the log."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley import Client, EventChange, Published, RoomEvent
from parley.room.v1 import room_pb2
from tests.support import ServerProcess, bearer

rooms = itertools.count()
step = st.one_of(
    st.tuples(st.just("publish"), st.integers(1, 3)),
    st.tuples(st.just("edit"), st.integers(0, 20)),
    st.tuples(st.just("delete"), st.integers(0, 20)),
    st.tuples(st.just("disconnect"), st.just(0)),
    st.tuples(st.just("resume"), st.just(0)),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    tmp = tmp_path_factory.mktemp("snapshot")
    (tmp / "p.toml").write_text('[[rooms]]\nid = "seed"\n')
    process = ServerProcess(
        ["--port", "0", "--data-dir", str(tmp / "data"), "--config", str(tmp / "p.toml")], {}, tmp / "serve.log"
    )
    try:
        yield process.address, tmp
    finally:
        process.terminate()


class Reader:
    """Keeps handle -> payload of the room's live (not deleted) kept events."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.snapshot: dict[str, Any] = {}
        self.connected = False

    async def connect(self, room_id: str) -> None:
        room = await self.client.join(room_id)
        assert room.recovered or not self.snapshot
        if not self.connected and not self.snapshot:
            room.on("m", self._event)
            room.on_edited(self._edited)
            room.on_deleted(self._deleted)
        self.connected = True

    def _event(self, event: RoomEvent) -> None:
        self.snapshot[event.handle] = event.data

    def _edited(self, change: EventChange) -> None:
        self.snapshot[change.handle] = change.data

    def _deleted(self, change: EventChange) -> None:
        self.snapshot.pop(change.handle, None)

    async def disconnect(self) -> None:
        await asyncio.sleep(0.05)  # what is in flight arrives
        await self.client.close()
        self.connected = False


async def run_schedule(address: str, tmp: Path, schedule: list[tuple[str, int]]) -> None:
    room_id = f"snap-{next(rooms)}"
    async with (
        Client(address, username=f"w{room_id}", key_file=tmp / f"w{room_id}.json") as writer,
        Client(address, username=f"r{room_id}", key_file=tmp / f"r{room_id}.json") as reader_client,
    ):
        kept = room_pb2.EventDefinition(name="m", history=room_pb2.HistoryPolicy(enabled=True))
        await writer.room_stub.CreateRoom(
            room_pb2.CreateRoomRequest(room_id=room_id, events=[kept]), metadata=bearer(await writer.access_token())
        )
        room = await writer.join(room_id)
        reader = Reader(reader_client)
        await reader.connect(room_id)
        live: list[Published] = []
        n = 0
        for action, arg in schedule:
            if action == "publish":
                for _ in range(arg):
                    n += 1
                    live.append(await room.trigger("m", {"n": n}))
            elif action == "edit" and live:
                target = live[arg % len(live)]
                n += 1
                await room.edit(target.handle, {"n": n, "edited": True})
            elif action == "delete" and live:
                await room.delete(live.pop(arg % len(live)).handle)
            elif action == "disconnect" and reader.connected:
                await reader.disconnect()
            elif action == "resume" and not reader.connected:
                await reader.connect(room_id)
        if not reader.connected:
            await reader.connect(room_id)
        fresh = {e.handle: e.data for e in await writer.history(room_id, limit=1000) if not e.deleted}
        for _ in range(250):  # up to 5 s on a loaded machine
            if reader.snapshot == fresh:
                break
            await asyncio.sleep(0.02)
        assert reader.snapshot == fresh


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=14))
def test_a_resumed_snapshot_equals_a_fresh_one(server: tuple[str, Path], schedule: list[tuple[str, int]]) -> None:
    address, tmp = server
    asyncio.run(run_schedule(address, tmp, schedule))
