"""The Python SDK's rooms, events, subjects and callbacks against a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from parley import (
    Client,
    NotFoundError,
    ParleyError,
    PermissionDeniedError,
    RoomEvent,
    RoomFullError,
    SubjectMessage,
    ValidationError,
)
from services import allinone
from services.runtime.config import EventDefinition, RoomDefinition
from tests.support import make_config, running

ROOMS = [
    RoomDefinition(
        id="chat",
        description="Say hello",
        events=[
            EventDefinition(name="message", schema={"type": "object", "required": ["text"]}),
            EventDefinition(name="typing"),
        ],
    ),
    RoomDefinition(id="duo", max_size=1),
]


@dataclass
class Pair:
    alice: Client
    bob: Client


@pytest.fixture
async def pair(data_dir: Path, tmp_path: Path) -> AsyncIterator[Pair]:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (_, address):
        async with (
            Client(address, username="alice", key_file=tmp_path / "a.json") as alice,
            Client(address, username="bob", key_file=tmp_path / "b.json") as bob,
        ):
            yield Pair(alice, bob)


async def test_list_create_delete_rooms(pair: Pair) -> None:
    assert [r.room_id for r in await pair.alice.list_rooms()] == ["chat", "duo"]
    created = await pair.alice.create_room("party", name="Party", max_size=5)
    assert created.creator == pair.alice.user_id
    with pytest.raises(PermissionDeniedError) as denied:
        await pair.bob.delete_room("party")
    assert denied.value.reason == "NOT_CREATOR"
    await pair.alice.delete_room("party")
    with pytest.raises(NotFoundError):
        await pair.alice.get_room("party")


async def test_join_trigger_and_receive_every_way(pair: Pair) -> None:
    room = await pair.bob.join("chat")
    assert room.info.description == "Say hello"
    by_name: list[RoomEvent] = []
    everything: list[RoomEvent] = []
    room.on("message", by_name.append)
    room.on_any(everything.append)
    iterated: list[RoomEvent] = []

    async def iterate() -> None:
        async for event in room.events():
            iterated.append(event)
            if len(iterated) == 2:
                return

    reader = asyncio.create_task(iterate())
    await asyncio.sleep(0)
    alice_room = await pair.alice.join("chat")
    published = await alice_room.trigger("message", {"text": "hi"}, meta={"lang": "en"})
    await alice_room.trigger("typing", None)
    await asyncio.wait_for(reader, 3)
    assert [e.event for e in iterated] == ["message", "typing"]
    assert iterated[0].data == {"text": "hi"}
    assert iterated[0].meta == {"lang": "en"}
    assert (iterated[0].seq, iterated[0].handle) == (published.seq, published.handle)
    assert iterated[0].sender == pair.alice.user_id
    await asyncio.sleep(0.05)
    assert [e.event for e in by_name] == ["message"]
    assert [e.event for e in everything] == ["message", "typing"]


async def test_subscriptions_and_participants(pair: Pair) -> None:
    room = await pair.bob.join("chat")
    assert await room.unsubscribe("typing") == ["*", "-typing"]
    got: list[str] = []
    room.on_any(lambda e: got.append(e.event))
    alice_room = await pair.alice.join("chat")
    await alice_room.trigger("typing", None)
    await alice_room.trigger("message", {"text": "x"})
    await asyncio.sleep(0.1)
    assert got == ["message"]
    assert await room.subscribe_all() == ["*"]
    assert set(await room.participants()) == {pair.alice.user_id, pair.bob.user_id}
    await room.leave()
    assert set(await alice_room.participants()) == {pair.alice.user_id}


async def test_typed_errors_from_stream_commands(pair: Pair) -> None:
    room = await pair.alice.join("chat")
    with pytest.raises(ValidationError) as invalid:
        await room.trigger("message", {"nope": 1})
    assert invalid.value.field == "payload"
    with pytest.raises(ParleyError) as not_allowed:
        await room.trigger("dance", {})
    assert not_allowed.value.reason == "EVENT_NOT_ALLOWED"
    await pair.alice.join("duo")
    with pytest.raises(RoomFullError):
        await pair.bob.join("duo")
    with pytest.raises(NotFoundError) as missing:
        await pair.bob.join("nowhere")
    assert missing.value.reason == "ROOM_NOT_FOUND"


async def test_room_created_and_deleted_callbacks(pair: Pair) -> None:
    created: list[str] = []
    deleted: list[str] = []
    pair.bob.on_room_created(lambda room: created.append(room.room_id))
    pair.bob.on_room_deleted(lambda room: deleted.append(room.room_id))
    await pair.bob.stream()
    await asyncio.sleep(0.2)
    await pair.alice.create_room("pop")
    await pair.alice.delete_room("pop")
    for _ in range(50):
        if deleted:
            break
        await asyncio.sleep(0.05)
    assert (created, deleted) == (["pop"], ["pop"])


async def test_pub_sub_messages(pair: Pair) -> None:
    received: list[SubjectMessage] = []
    await pair.bob.message.subscribe("presence:*", received.append)
    await pair.alice.message.publish("presence:lobby", {"online": 3})
    await pair.alice.message.publish("other", 1)
    for _ in range(50):
        if received:
            break
        await asyncio.sleep(0.02)
    assert received == [SubjectMessage("presence:lobby", pair.alice.user_id, {"online": 3})]


async def test_connect_and_disconnect_callbacks(pair: Pair) -> None:
    connected: list[str] = []
    ended: list[object] = []
    pair.alice.on_connect(lambda welcome: connected.append(welcome.user_id))
    pair.alice.on_disconnect(ended.append)
    await pair.alice.join("chat")
    await asyncio.sleep(0.05)
    assert connected == [pair.alice.user_id]
    await pair.alice.close()
    await asyncio.sleep(0.05)
    assert ended == [None]
