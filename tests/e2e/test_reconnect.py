"""The SDK reconnects by itself when its stream ends, joins its rooms again and resumes each."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from parley import Client, RoomEvent
from parley.stream import ConnectStream
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.support import make_config, running, wait_until

ROOMS = [RoomDefinition(id="chat", events=[EventDefinition(name="message", history=HistorySettings(enabled=True))])]


async def test_a_restarted_server_loses_no_event_for_a_client_that_reconnects_by_itself(
    data_dir: Path, tmp_path: Path
) -> None:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        async with (
            Client(address, username="ann", key_file=tmp_path / "a.json") as ann,
            Client(address, username="bob", key_file=tmp_path / "b.json", reconnect=False) as bob,
        ):
            ends: list[object] = []
            ann.on_disconnect(ends.append)
            room = await ann.join("chat")
            events = room.events()
            first = await (await bob.join("chat")).trigger("message", {"n": 1})
            assert (await asyncio.wait_for(anext(events), 5)).seq == first.seq

            await server.stop(1)  # every connection is told to go away
            await wait_until(lambda: not room.joined)
            restarted = make_config(data_dir, rooms=ROOMS, **{"server.port": port})
            async with running(allinone.create_server, restarted):
                # Bob does not reconnect by himself: he joins again and publishes before Ann is back.
                bob_room = await bob.join("chat")
                missed = [(await bob_room.trigger("message", {"n": n})).seq for n in (2, 3, 4)]
                await wait_until(lambda: room.joined, within=15)
                live = await bob_room.trigger("message", {"n": 5})
                received: list[RoomEvent] = [await asyncio.wait_for(anext(events), 5) for _ in range(4)]
                # The same iterator, on the same room handle: every event once, in order.
                assert [e.seq for e in received] == [*missed, live.seq]
                assert room.recovered
                assert len(ends) == 1
                await room.trigger("message", {"n": 6})  # commands go to the new stream


async def test_without_reconnect_the_rooms_end_and_a_join_resumes(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        async with Client(address, username="cyd", key_file=tmp_path / "c.json", reconnect=False) as cy:
            room = await cy.join("chat")
            sent = await room.trigger("message", {"n": 1})
            await server.stop(1)
            await wait_until(lambda: room.closed)
            async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS, **{"server.port": port})):
                again = await cy.join("chat")
                assert again is not room
                assert (again.recovered, again.last_seq) == (True, sent.seq)


async def test_a_room_gone_after_the_restart_ends_and_the_others_are_joined_again(
    data_dir: Path, tmp_path: Path
) -> None:
    temporary = RoomDefinition(id="temp", events=[EventDefinition(name="*")])
    async with running(allinone.create_server, make_config(data_dir, rooms=[*ROOMS, temporary])) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        async with Client(address, username="dee", key_file=tmp_path / "d.json") as dee:
            errors: list[Exception] = []
            dee.on_error(errors.append)
            chat, temp = await dee.join("chat"), await dee.join("temp")
            await server.stop(1)
            await wait_until(lambda: not chat.joined)
            # The application asks for the room itself while the client is reconnecting: the same handle.
            async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS, **{"server.port": port})):
                assert await dee.join("chat") is chat
                await wait_until(lambda: temp.closed)  # no such room any more: it ends
                assert chat.joined
                # on_error says why (after the server's own GoAway when it stopped).
                await wait_until(lambda: "ROOM_NOT_FOUND" in [getattr(e, "reason", "") for e in errors])


async def test_close_while_reconnecting_ends_the_rooms(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (server, address):
        eve = Client(address, username="eve", key_file=tmp_path / "e.json")
        await eve.connect()
        room = await eve.join("chat")
        events = room.events()
        await server.stop(1)
        await wait_until(lambda: not room.joined)
        await asyncio.sleep(0.3)  # a few attempts against a server that is not there
        await eve.close()
        assert room.closed
        assert await anext(events, None) is None  # the iterator ends


async def test_a_room_left_while_reconnecting_is_not_joined_again(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (server, address):
        port = int(address.rsplit(":", 1)[1])
        async with Client(address, username="fay", key_file=tmp_path / "f.json") as fay:
            room = await fay.join("chat")
            reconnected = asyncio.Event()
            await server.stop(1)
            await wait_until(lambda: not room.joined)
            await room.leave()  # no stream to send it on: the room just ends here
            assert room.closed
            fay.on_connect(lambda welcome: reconnected.set())
            async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS, **{"server.port": port})):
                await asyncio.wait_for(reconnected.wait(), 15)  # the client itself still reconnects
                await asyncio.sleep(0.3)
                assert not room.joined
                people = await fay.participants("chat")
                assert fay.user_id not in people


async def test_close_does_not_wait_for_a_reconnection_stuck_opening(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (server, address):
        gil = Client(address, username="gil", key_file=tmp_path / "g.json")
        await gil.connect()
        room = await gil.join("chat")
        opening = asyncio.Event()

        async def stuck(self: ConnectStream) -> None:
            opening.set()
            await asyncio.sleep(3600)  # a server that accepts the connection and never answers

        monkeypatch.setattr(ConnectStream, "open", stuck)
        await server.stop(1)
        await asyncio.wait_for(opening.wait(), 10)
        await asyncio.wait_for(gil.close(), 2)
        assert room.closed
