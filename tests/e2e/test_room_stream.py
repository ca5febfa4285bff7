"""The room stream at the default config: every write to a room's log reaches members, in order,
and a resume gets everything it missed however many history pages that takes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2, history_pb2_grpc
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import Stream, stream, value
from tests.support import SERVICE_SECRET, bearer, make_config, running

SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")
KEPT = HistorySettings(enabled=True)
ROOMS = [
    RoomDefinition(id="chat", events=[EventDefinition(name="message", history=KEPT), EventDefinition(name="typing")])
]


@dataclass
class Deployment:
    address: str
    history: history_pb2_grpc.HistoryServiceStub
    ann: Client
    bob: Client


@pytest.fixture
async def deployment(data_dir: Path, tmp_path: Path) -> AsyncIterator[Deployment]:
    # The default config: replay_cap 1000, history pages of at most 500.
    config = make_config(data_dir, rooms=ROOMS)
    assert (config.gateway.replay_cap, config.history.max_page_size) == (1000, 500)
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="ann", key_file=tmp_path / "a.json") as ann,
            Client(address, username="bob", key_file=tmp_path / "b.json") as bob,
            grpc.aio.insecure_channel(address) as channel,
        ):
            yield Deployment(address, history_pb2_grpc.HistoryServiceStub(channel), ann, bob)


async def backend_append(d: Deployment, texts: list[str], event: str = "message") -> list[int]:
    events = [
        history_pb2.NewEvent(
            event=event,
            payload=value({"text": t}),
            sender="backend",
            handle=secrets.token_hex(8),
            transient=event == "typing",  # as a gateway appends it: its definition keeps no history
        )
        for t in texts
    ]
    response = await d.history.AppendEvents(
        history_pb2.AppendEventsRequest(room_id="chat", events=events), metadata=SERVICE
    )
    return [a.seq for a in response.appended]


async def replay(s: Stream, since: int, epoch: str) -> tuple[gateway_pb2.JoinResult, list[gateway_pb2.HistoryBatch]]:
    """Resumes and gathers the replay's frames (all but the last marked continued)."""
    reply = await s.ok(join=gateway_pb2.JoinCommand(room_id="chat", since_seq=since, epoch=epoch))
    batches = [(await s.next_other("history", within=10)).history]
    while batches[-1].continued:
        batches.append((await s.next_other("history", within=10)).history)
    return reply.join, batches


async def test_a_backend_append_reaches_live_members_in_order(deployment: Deployment) -> None:
    async with stream(deployment.address, await deployment.ann.access_token()) as ann:
        await ann.join("chat")
        await ann.publish("chat", "message", {"text": "first"})
        appended = await backend_append(deployment, ["from the backend", "and again"])
        await ann.publish("chat", "message", {"text": "last"})
        texts = [(e.seq, e.payload.struct_value["text"]) for e in [await ann.next_event() for _ in range(4)]]
    assert [t for _, t in texts] == ["first", "from the backend", "and again", "last"]
    assert [s for s, _ in texts] == list(range(texts[0][0], texts[0][0] + 4))
    assert appended == [texts[1][0], texts[2][0]]


async def test_a_resume_after_a_backend_append_replays_it(deployment: Deployment) -> None:
    async with stream(deployment.address, await deployment.ann.access_token()) as publisher:
        await publisher.join("chat")
        async with stream(deployment.address, await deployment.bob.access_token()) as bob:
            await bob.join("chat")
            await publisher.publish("chat", "message", {"text": "seen"})
            seen = await bob.next_event()
        (appended,) = await backend_append(deployment, ["missed"])
        async with stream(deployment.address, await deployment.bob.access_token()) as bob:
            result, (batch,) = await replay(bob, seen.seq, seen.epoch)
    assert result.recovered
    assert [(e.seq, e.payload.struct_value["text"]) for e in batch.events] == [(appended, "missed")]


async def test_backend_edits_and_deletes_reach_live_members(deployment: Deployment) -> None:
    async with stream(deployment.address, await deployment.ann.access_token()) as ann:
        await ann.join("chat")
        sent = (await ann.publish("chat", "message", {"text": "v1"})).publish
        await ann.next_event()
        handle = sent.handles[0]
        await deployment.history.EditEvent(
            history_pb2.EditEventRequest(room_id="chat", handle=handle, payload=value({"text": "v2"})),
            metadata=SERVICE,
        )
        await deployment.history.DeleteEvent(
            history_pb2.DeleteEventRequest(room_id="chat", handle=handle), metadata=SERVICE
        )
        edited = (await ann.next_other("event_changed")).event_changed
        deleted = (await ann.next_other("event_changed")).event_changed
    assert (edited.kind, edited.payload.struct_value["text"]) == (gateway_pb2.EventChanged.KIND_EDITED, "v2")
    assert deleted.kind == gateway_pb2.EventChanged.KIND_DELETED
    assert deleted.change_seq == edited.change_seq + 1


@pytest.mark.timeout(120)
async def test_a_replay_of_700_missed_events_is_complete(deployment: Deployment) -> None:
    """The issue's reproduction: 700 missed kept events, more than one history page (500)."""
    async with stream(deployment.address, await deployment.bob.access_token()) as bob:
        await bob.join("chat")
        (start,) = await backend_append(deployment, ["seen"])
        seen = await bob.next_event()
    texts = [f"m{i}" for i in range(700)]
    for i in range(0, 700, 250):
        await backend_append(deployment, texts[i : i + 250])
    async with stream(deployment.address, await deployment.bob.access_token()) as bob:
        result, batches = await replay(bob, seen.seq, seen.epoch)
    replayed = [e for b in batches for e in b.events]
    assert result.recovered
    assert all(b.recovered for b in batches)
    assert [e.payload.struct_value["text"] for e in replayed] == texts
    assert [e.seq for e in replayed] == list(range(start + 1, start + 701))


async def test_a_replay_over_the_cap_is_not_recovered(deployment: Deployment) -> None:
    async with stream(deployment.address, await deployment.bob.access_token()) as bob:
        await bob.join("chat")
        await backend_append(deployment, ["seen"])
        seen = await bob.next_event()
    for _ in range(5):
        await backend_append(deployment, ["t"] * 201, event="typing")  # 1,005 positions, none kept
    async with stream(deployment.address, await deployment.bob.access_token()) as bob:
        result, (batch,) = await replay(bob, seen.seq, seen.epoch)
        await backend_append(deployment, ["live"])
        live = await bob.next_event()
    assert (result.recovered, result.unrecovered_reason) == (False, "OVER_CAP")
    assert (batch.recovered, batch.unrecovered_reason, list(batch.events)) == (False, "OVER_CAP", [])
    assert live.seq == result.last_seq + 1


@pytest.mark.timeout(120)
async def test_a_replay_of_two_and_a_half_pages_with_changes_and_transient_events(
    data_dir: Path, tmp_path: Path
) -> None:
    """Pages of 200: 500 kept events and 100 edits of events before the resume point (changes page too)."""
    config = make_config(data_dir, rooms=ROOMS, **{"history.max_page_size": 200})
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="bob", key_file=tmp_path / "b.json") as bob_client,
            grpc.aio.insecure_channel(address) as channel,
        ):
            d = Deployment(address, history_pb2_grpc.HistoryServiceStub(channel), bob_client, bob_client)
            old = [f"old{i}" for i in range(100)]
            await backend_append(d, old)
            handles = await handles_of(d, 100)
            async with stream(address, await bob_client.access_token()) as bob:
                await bob.join("chat")
                await backend_append(d, ["seen"])
                seen = await bob.next_event()
            kept: list[str] = []
            for i in range(0, 500, 100):
                kept += [f"k{i + j}" for j in range(100)]
                await backend_append(d, kept[-100:])
                await backend_append(d, ["t"] * 20, event="typing")
                for handle in handles[i // 5 : i // 5 + 20]:
                    await d.history.EditEvent(
                        history_pb2.EditEventRequest(room_id="chat", handle=handle, payload=value({"v": 2})),
                        metadata=SERVICE,
                    )
            async with stream(address, await bob_client.access_token()) as bob:
                result, batches = await replay(bob, seen.seq, seen.epoch)
    assert result.recovered
    assert [e.payload.struct_value["text"] for b in batches for e in b.events] == kept
    changes = [c for b in batches for c in b.changes]
    assert sorted(c.handle for c in changes) == sorted(handles)
    assert len(changes) == 100  # each edit once


async def handles_of(d: Deployment, count: int) -> list[str]:
    page = await d.history.ListEvents(history_pb2.ListEventsRequest(room_id="chat", page_size=count), metadata=SERVICE)
    return [e.handle for e in reversed(page.events)]


@pytest.mark.timeout(120)
async def test_a_replay_of_big_events_comes_in_frames_within_the_limit(deployment: Deployment) -> None:
    """70 missed events of 64 KiB: more than one frame (256 KiB) and than the outbox (4 MiB)."""
    async with stream(deployment.address, await deployment.bob.access_token()) as bob:
        await bob.join("chat")
        await backend_append(deployment, ["seen"])
        seen = await bob.next_event()
    big = "x" * (64 * 1024 - 100)
    for _ in range(7):
        await backend_append(deployment, [big] * 10)
    async with stream(deployment.address, await deployment.bob.access_token()) as bob:
        result, batches = await replay(bob, seen.seq, seen.epoch)
        await bob.ok(ping=gateway_pb2.PingCommand())  # the stream goes on
    assert result.recovered
    assert len(batches) > 1
    assert all(b.ByteSize() <= 256 * 1024 for b in batches)
    assert sum(len(b.events) for b in batches) == 70


async def test_a_lost_announcement_is_filled_from_the_log(
    deployment: Deployment, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write whose announcement never arrives is read from the log after a short wait, in its turn."""
    from services.history.announcer import LogAnnouncer

    appended = LogAnnouncer.appended
    dropped: list[int] = []

    async def lose_one(self: LogAnnouncer, room_id: str, epoch: str, events: object, placed: list, skip: str) -> None:  # type: ignore[type-arg]
        if not dropped and len(placed) == 1 and placed[0].seq % 2 == 0:
            dropped.append(placed[0].seq)
            return
        await appended(self, room_id, epoch, events, placed, skip)  # type: ignore[arg-type]

    async with stream(deployment.address, await deployment.ann.access_token()) as ann:
        await ann.join("chat")
        monkeypatch.setattr(LogAnnouncer, "appended", lose_one)
        for n in range(4):
            await backend_append(deployment, [f"n{n}"])
        received = [await ann.next_event() for _ in range(4)]
    assert dropped
    assert [e.payload.struct_value["text"] for e in received] == ["n0", "n1", "n2", "n3"]
    assert [e.seq for e in received] == list(range(received[0].seq, received[0].seq + 4))


async def test_a_gap_that_cannot_be_filled_is_told(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> None:
    """History unreachable while an announcement is lost: members get KIND_GAP, recovered=false, then go on."""
    from services.history.announcer import LogAnnouncer
    from services.history.servicer import HistoryServicer
    from services.runtime.errors import unavailable

    appended = LogAnnouncer.appended
    lost: list[int] = []

    async def lose_first(self: LogAnnouncer, room_id: str, epoch: str, events: object, placed: list, skip: str) -> None:  # type: ignore[type-arg]
        if not lost:
            lost.append(placed[0].seq)
            return
        await appended(self, room_id, epoch, events, placed, skip)  # type: ignore[arg-type]

    async def down(self: HistoryServicer, request: object) -> None:
        raise unavailable("history is down for this test")

    async with stream(deployment.address, await deployment.ann.access_token()) as ann:
        await ann.join("chat")
        monkeypatch.setattr(LogAnnouncer, "appended", lose_first)
        monkeypatch.setattr(HistoryServicer, "since", down)
        await backend_append(deployment, ["lost"])
        await backend_append(deployment, ["after"])
        gap = (await ann.next_other("history")).history
        after = await ann.next_event()
    assert (gap.kind, gap.recovered, gap.unrecovered_reason) == (
        gateway_pb2.HistoryBatch.KIND_GAP,
        False,
        "UNAVAILABLE",
    )
    assert after.payload.struct_value["text"] == "after"
    assert after.seq == lost[0] + 1


async def test_no_echo_holds_for_events_announced_by_the_history_service(deployment: Deployment) -> None:
    async with stream(deployment.address, await deployment.ann.access_token()) as ann:
        await ann.join("chat")
        await ann.publish("chat", "message", {"text": "not to me"}, no_echo=True)
        await backend_append(deployment, ["to me"])
        got = await ann.next_event()
        await ann.no_event()
    assert got.payload.struct_value["text"] == "to me"
    await asyncio.sleep(0)


async def test_a_backend_room_subscription_gets_every_write_in_order(deployment: Deployment) -> None:
    from parley.gateway.v1 import gateway_pb2_grpc

    events: list[gateway_pb2.Event] = []

    async def subscribe(gateway: gateway_pb2_grpc.GatewayServiceStub) -> None:
        call = gateway.SubscribeRoom(gateway_pb2.SubscribeRoomRequest(room_id="chat"), metadata=SERVICE)
        async for response in call:
            events.extend(response.events)
            if len(events) == 4:
                return

    async with grpc.aio.insecure_channel(deployment.address) as channel:
        reading = asyncio.create_task(subscribe(gateway_pb2_grpc.GatewayServiceStub(channel)))
        await asyncio.sleep(0.3)  # the subscription is in place
        async with stream(deployment.address, await deployment.ann.access_token()) as ann:
            await ann.join("chat")
            await ann.publish("chat", "message", {"text": "a"})
            await backend_append(deployment, ["b", "c"])
            await ann.publish("chat", "message", {"text": "d"})
        await asyncio.wait_for(reading, 5)
    assert [e.payload.struct_value["text"] for e in events] == ["a", "b", "c", "d"]
    assert [e.seq for e in events] == list(range(events[0].seq, events[0].seq + 4))
