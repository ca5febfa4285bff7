"""Reading a room's history through the SDK: cursor pages, offsets, edits and tombstones."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.errors import ParleyError, ValidationError
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.values import to_value
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.support import SERVICE_SECRET, make_config, running

ROOMS = [
    RoomDefinition(
        id="chat",
        events=[
            EventDefinition(name="message", history=HistorySettings(enabled=True)),
            EventDefinition(name="reaction", history=HistorySettings(enabled=True)),
            EventDefinition(name="typing"),
        ],
    )
]
SERVICE = (("authorization", f"Bearer svc:backend:{SERVICE_SECRET}"),)


@pytest.fixture
async def server(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[str, Client]]:
    # A small server page so that a large `limit` takes several pages.
    config = make_config(data_dir, rooms=ROOMS, **{"history.max_page_size": 7})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="ada", key_file=tmp_path / "a.json") as ada:
            yield address, ada


async def test_history_pages_newest_first_across_server_pages(server: tuple[str, Client]) -> None:
    _, ada = server
    room = await ada.join("chat")
    await room.trigger_batch([("message", {"n": n}, None) for n in range(20)])
    await room.trigger("typing", {"on": True})

    newest = await room.history(limit=5)
    assert [e.data["n"] for e in newest] == [19, 18, 17, 16, 15]
    assert all(e.room_id == "chat" and e.sender == ada.user_id and e.epoch for e in newest)

    everything = await room.history(limit=100)
    assert [e.data["n"] for e in everything] == list(range(19, -1, -1))  # typing is transient: not kept

    older = await room.history(limit=3, before=newest[-1].seq)
    assert [e.data["n"] for e in older] == [14, 13, 12]
    assert await room.history(limit=0) == []


async def test_offsets_count_one_event_name(server: tuple[str, Client]) -> None:
    _, ada = server
    room = await ada.join("chat")
    for n in range(6):
        await room.trigger("message", {"n": n})
        await room.trigger("reaction", {"r": n})
    reactions = await room.get_history("reaction", 1, 4)
    assert [e.data["r"] for e in reactions] == [4, 3, 2]
    mixed = await room.get_history(start=0, end=3)
    assert [(e.event, e.data) for e in mixed] == [("reaction", {"r": 5}), ("message", {"n": 5}), ("reaction", {"r": 4})]
    with pytest.raises(ParleyError) as wide:
        await room.get_history("message", 0, 100)
    assert wide.value.code is grpc.StatusCode.INVALID_ARGUMENT


async def test_history_without_joining_shows_edits_and_tombstones(server: tuple[str, Client]) -> None:
    address, ada = server
    room = await ada.join("chat")
    first, second = await room.trigger_batch([("message", {"text": "helo"}, None), ("message", {"text": "bye"}, None)])
    await room.leave()
    async with grpc.aio.insecure_channel(address) as channel:
        history = history_pb2_grpc.HistoryServiceStub(channel)
        await history.EditEvent(
            history_pb2.EditEventRequest(
                room_id="chat", handle=first.handle, payload=to_value({"text": "hello"}), editor=ada.user_id
            ),
            metadata=SERVICE,
        )
        await history.DeleteEvent(
            history_pb2.DeleteEventRequest(room_id="chat", handle=second.handle, editor=ada.user_id), metadata=SERVICE
        )
    deleted, edited = await ada.history("chat")
    assert (deleted.seq, deleted.deleted, deleted.data, edited.deleted) == (second.seq, True, None, False)
    assert edited.data == {"text": "hello"}
    assert edited.edit_time_ms >= edited.time_ms > 0


async def test_bad_arguments_are_refused(server: tuple[str, Client]) -> None:
    _, ada = server
    with pytest.raises(ValidationError) as negative:
        await ada.history("chat", limit=-1)
    assert (negative.value.code, negative.value.field) == (grpc.StatusCode.INVALID_ARGUMENT, "limit")
    with pytest.raises(ParleyError) as bad_room:
        await ada.history("")
    assert bad_room.value.code is grpc.StatusCode.INVALID_ARGUMENT
    assert await ada.history("never-used") == []
