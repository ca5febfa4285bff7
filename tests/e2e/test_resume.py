"""Resume and sync on join: every missed kept event once, in order, then live."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley import Client
from parley.gateway.v1 import gateway_pb2
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import Stream, stream
from tests.support import make_config, running

KEPT = HistorySettings(enabled=True)
ROOMS = [
    RoomDefinition(id="chat", events=[EventDefinition(name="message", history=KEPT), EventDefinition(name="typing")]),
    RoomDefinition(
        id="board",
        events=[EventDefinition(name="note", history=KEPT), EventDefinition(name="pin", history=KEPT)],
        sync_history_on_join=2,
    ),
]


@pytest.fixture
async def server(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[str, Client, Client]]:
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.replay_cap": 50})
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="ann", key_file=tmp_path / "a.json") as ann,
            Client(address, username="bob", key_file=tmp_path / "b.json") as bo,
        ):
            yield address, ann, bo


async def resume(
    s: Stream, room: str, since: int, epoch: str
) -> tuple[gateway_pb2.JoinResult, gateway_pb2.HistoryBatch]:
    reply = await s.ok(join=gateway_pb2.JoinCommand(room_id=room, since_seq=since, epoch=epoch))
    batch = (await s.next_other("history")).history
    return reply.join, batch


async def test_resume_replays_missed_kept_events_then_goes_live(server: tuple[str, Client, Client]) -> None:
    address, ann, bo = server
    async with stream(address, await bo.access_token()) as publisher:
        await publisher.join("chat")
        async with stream(address, await ann.access_token()) as first:
            await first.join("chat")
            await publisher.publish("chat", "message", {"n": 1})
            last = await first.next_event()
            seen, epoch = last.seq, last.epoch
            assert epoch
        for n in range(2, 6):
            await publisher.publish("chat", "message", {"n": n})
            await publisher.publish("chat", "typing", {})
        async with stream(address, await ann.access_token()) as again:
            result, batch = await resume(again, "chat", seen, epoch)
            assert (result.recovered, batch.recovered, batch.kind) == (True, True, gateway_pb2.HistoryBatch.KIND_REPLAY)
            assert [e.event for e in batch.events] == ["message"] * 4  # transient typing is not replayed
            assert [e.seq for e in batch.events] == [seen + 1, seen + 3, seen + 5, seen + 7]
            assert result.last_seq == seen + 8
            live = await publisher.publish("chat", "message", {"n": 6})
            assert (await again.next_event()).seq == live.publish.seqs[0]


async def test_no_gap_and_no_duplicate_while_events_arrive_during_the_replay(
    server: tuple[str, Client, Client],
) -> None:
    address, ann, bo = server
    async with stream(address, await bo.access_token()) as publisher:
        await publisher.join("chat")
        first = await publisher.publish("chat", "message", {"n": 0})
        since = first.publish.seqs[0]
        epoch = (await publisher.next_event()).epoch  # its own echo
        for n in range(1, 20):
            await publisher.publish("chat", "message", {"n": n})
        published = list(range(since + 1, since + 20))

        async def keep_publishing() -> None:
            for n in range(20, 60):
                reply = await publisher.publish("chat", "message", {"n": n})
                published.append(reply.publish.seqs[0])

        async with stream(address, await ann.access_token()) as s:
            writer = asyncio.create_task(keep_publishing())
            result, batch = await resume(s, "chat", since, epoch)
            await writer
            received = [e.seq for e in batch.events]
            while len(received) < len(published):
                received.append((await s.next_event()).seq)
            assert result.recovered
            assert received == sorted(set(received))  # in order, once each
            assert received == published


async def test_recovered_is_false_for_another_epoch_or_too_big_a_gap(server: tuple[str, Client, Client]) -> None:
    address, ann, bo = server
    async with stream(address, await bo.access_token()) as publisher:
        await publisher.join("chat")
        for n in range(60):
            await publisher.publish("chat", "message", {"n": n})
        epoch = (await publisher.next_event()).epoch
    async with stream(address, await ann.access_token()) as s:
        result, batch = await resume(s, "chat", 1, "some-other-epoch")
        assert (result.recovered, batch.recovered, list(batch.events)) == (False, False, [])
        await s.ok(leave=gateway_pb2.LeaveCommand(room_id="chat"))
        result, batch = await resume(s, "chat", 1, epoch)  # 59 missed, the cap is 50
        assert (result.recovered, list(batch.events)) == (False, [])
        await s.ok(leave=gateway_pb2.LeaveCommand(room_id="chat"))
        result, batch = await resume(s, "chat", 30, epoch)
        assert result.recovered
        assert [e.seq for e in batch.events] == list(range(31, 61))


async def test_sync_on_join_sends_the_last_n_of_each_event(server: tuple[str, Client, Client]) -> None:
    address, ann, bo = server
    async with stream(address, await bo.access_token()) as publisher:
        await publisher.join("board")
        for n in range(4):
            await publisher.publish("board", "note", {"n": n})
            await publisher.publish("board", "pin", {"n": n})
    async with stream(address, await ann.access_token()) as s:
        await s.join("board")
        batch = (await s.next_other("history")).history
        assert batch.kind == gateway_pb2.HistoryBatch.KIND_SYNC
        assert [(e.event, e.seq) for e in batch.events] == [("note", 5), ("pin", 6), ("note", 7), ("pin", 8)]


async def test_the_sdk_resumes_where_it_left_off(server: tuple[str, Client, Client]) -> None:
    _, ann, bo = server
    room = await ann.join("chat")
    published = await (await bo.join("chat")).trigger("message", {"n": 1})
    first = await asyncio.wait_for(anext(room.events()), 5)
    assert (first.seq, first.epoch != "") == (published.seq, True)
    batches: list[tuple[str, list[int], bool]] = []
    ann.on_history(lambda room_id, events, recovered: batches.append((room_id, [e.seq for e in events], recovered)))
    await ann.close()  # the stream ends; the client remembers where it was
    bo_room = await bo.join("chat")
    missed = [(await bo_room.trigger("message", {"n": n})).seq for n in range(2, 5)]
    again = await ann.join("chat")
    assert again.recovered
    events = again.events()
    replayed = [(await asyncio.wait_for(anext(events), 5)).seq for _ in range(3)]
    assert replayed == missed
    live = await bo_room.trigger("message", {"n": 5})
    assert (await asyncio.wait_for(anext(events), 5)).seq == live.seq
    await asyncio.sleep(0.05)
    assert batches == [("chat", missed, True)]


async def test_handlers_registered_right_after_a_join_get_what_came_with_it(
    server: tuple[str, Client, Client],
) -> None:
    _, ann, bo = server
    board = await ann.join("board")
    await board.trigger_batch([("note", {"n": n}, None) for n in range(3)] + [("pin", {"n": 9}, None)])
    synced: list[tuple[str, int]] = []
    done = asyncio.Event()
    room = await bo.join("board")  # sync on join: the last 2 notes and the pin come with the join
    room.on_any(lambda event: (synced.append((event.event, event.data["n"])), done.set()))
    while len(synced) < 3:
        done.clear()
        await asyncio.wait_for(done.wait(), 5)
    assert synced == [("note", 1), ("note", 2), ("pin", 9)]
