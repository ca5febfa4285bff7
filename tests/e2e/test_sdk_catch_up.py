"""The SDK and the catch-up frames a join brings: a replay in several HistoryBatch frames, and a lost
stretch of live events (KIND_GAP) the gateway could not fill."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from parley import Client, RoomEvent
from parley.history.v1 import history_pb2
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import value
from tests.support import SERVICE_SECRET, bearer, make_config, running, wait_until

ROOMS = [RoomDefinition(id="chat", events=[EventDefinition(name="message", history=HistorySettings(enabled=True))])]
# Within the default payload limit (64 KiB): four of them fill a frame (256 KiB), so a replay of 20 takes several.
BIG = "x" * (60 * 1024)
MISSED = 20

History = tuple[str, list[int], bool]


async def test_a_replay_in_several_frames_reaches_the_handlers_once_in_order(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (_, address):
        async with (
            Client(address, username="ann", key_file=tmp_path / "a.json") as ann,
            Client(address, username="bob", key_file=tmp_path / "b.json") as bob,
        ):
            room = await ann.join("chat")
            seen: list[int] = []
            room.on_any(lambda event: seen.append(event.seq))
            publisher = await bob.join("chat")
            first = await publisher.trigger("message", "before")
            await wait_until(lambda: seen == [first.seq])

            await ann.close()  # the client remembers where it was
            missed = [(await publisher.trigger("message", BIG)).seq for _ in range(MISSED)]
            batches = record_history(ann)
            again = await ann.join("chat")
            assert again is not room
            live = await publisher.trigger("message", "after")

            await wait_until(lambda: len(seen) == 1 + MISSED + 1)
            assert seen == [first.seq, *missed, live.seq]
            assert again.recovered
            assert len(batches) > 1  # the replay came in several frames, each one a call
            assert [seq for _, seqs, _ in batches for seq in seqs] == missed
            assert all(room_id == "chat" and recovered for room_id, _, recovered in batches)


async def test_a_gap_the_gateway_cannot_fill_reaches_on_history_and_room_recovered(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An announcement is lost while the history service cannot be read: the SDK's room says
    recovered=False, on_history is called with no events and recovered False, and live events go on."""
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

    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (_, address):
        async with Client(address, username="ann", key_file=tmp_path / "a.json") as ann:
            room = await ann.join("chat")
            received: list[RoomEvent] = []
            room.on_any(received.append)
            batches = record_history(ann)
            monkeypatch.setattr(LogAnnouncer, "appended", lose_first)
            monkeypatch.setattr(HistoryServicer, "since", down)
            await backend_append(ann, ["lost"])
            await backend_append(ann, ["after"])

            await wait_until(lambda: received)
            assert [(e.data, e.seq) for e in received] == [({"text": "after"}, lost[0] + 1)]
            assert batches == [("chat", [], False)]
            assert not room.recovered
            await asyncio.sleep(0.1)
            assert len(received) == 1  # the lost event is not made up


def record_history(client: Client) -> list[History]:
    """What `on_history` is called with: (room id, the batch's sequences, recovered) per call."""
    batches: list[History] = []
    client.on_history(lambda room_id, events, recovered: batches.append((room_id, [e.seq for e in events], recovered)))
    return batches


async def backend_append(client: Client, texts: list[str]) -> None:
    """A backend's write to the room's log (HistoryService.AppendEvents), announced by the history service."""
    events = [
        history_pb2.NewEvent(event="message", payload=value({"text": t}), sender="backend", handle=secrets.token_hex(8))
        for t in texts
    ]
    await client.history_stub.AppendEvents(
        history_pb2.AppendEventsRequest(room_id="chat", events=events), metadata=bearer(f"svc:backend:{SERVICE_SECRET}")
    )
