"""Retention per event definition, pruned in the background; a resume across pruned events is not recovered."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from parley import Client
from parley.gateway.v1 import gateway_pb2
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import stream
from tests.support import make_config, running

ROOMS = [
    RoomDefinition(
        id="feed",
        events=[
            EventDefinition(name="message", history=HistorySettings(enabled=True, limit=3)),
            EventDefinition(name="reading", history=HistorySettings(enabled=True, max_age_seconds=1)),
            EventDefinition(name="note", history=HistorySettings(enabled=True)),
        ],
    )
]


@pytest.fixture
async def server(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[str, Client]]:
    config = make_config(data_dir, rooms=ROOMS, **{"history.prune_interval_seconds": 0.1})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="ann", key_file=tmp_path / "a.json") as ann:
            yield address, ann


async def kept(client: Client, event: str, until: int) -> list[int]:
    """The kept sequences of `event` once the pruner has brought them down to `until`."""
    for _ in range(100):
        seqs = [e.seq for e in await client.history("feed", event=event, limit=100)]
        if len(seqs) <= until:
            return seqs
        await asyncio.sleep(0.05)
    raise AssertionError(f"{event}: still {len(seqs)} kept")


async def test_count_and_age_limits_per_event_name(server: tuple[str, Client]) -> None:
    _, ann = server
    room = await ann.join("feed")
    await room.trigger_batch([("message", {"n": n}, None) for n in range(6)])
    await room.trigger_batch([("reading", {"n": n}, None) for n in range(2)])
    await room.trigger("note", {"keep": "forever"})
    assert await kept(ann, "message", 3) == [6, 5, 4]
    assert await kept(ann, "reading", 0) == []  # older than a second
    assert [e.seq for e in await room.history(event="note")] == [9]


async def test_a_resume_across_pruned_events_is_not_recovered(server: tuple[str, Client]) -> None:
    address, ann = server
    room = await ann.join("feed")
    first = await room.trigger("message", {"n": 0})
    epoch = room.epoch
    await room.trigger_batch([("message", {"n": n}, None) for n in range(1, 6)])
    await kept(ann, "message", 3)
    async with stream(address, await ann.access_token()) as s:
        behind = await s.ok(join=gateway_pb2.JoinCommand(room_id="feed", since_seq=first.seq, epoch=epoch))
        assert not behind.join.recovered  # events 2 and 3 are gone
        nothing = (await s.next_other("history")).history
        assert (nothing.recovered, list(nothing.events)) == (False, [])
        await s.ok(leave=gateway_pb2.LeaveCommand(room_id="feed"))
        recent = await s.ok(join=gateway_pb2.JoinCommand(room_id="feed", since_seq=4, epoch=epoch))
        assert recent.join.recovered
        batch = (await s.next_other("history")).history
        assert [e.seq for e in batch.events] == [5, 6]


def _feed(limit: int) -> list[RoomDefinition]:
    return [RoomDefinition(id="feed", events=[EventDefinition(name="message", history=HistorySettings(True, limit))])]


async def test_a_changed_limit_applies_at_once_not_when_the_event_is_next_published(
    data_dir: Path, tmp_path: Path
) -> None:
    async def history_after_restart(limit: int, prune_every: float, publish: int = 0) -> list[int]:
        config = make_config(data_dir, rooms=_feed(limit), **{"history.prune_interval_seconds": prune_every})
        async with running(allinone.create_server, config) as (_, address):
            async with Client(address, username="ann", key_file=tmp_path / "a.json") as ann:
                if publish:
                    room = await ann.join("feed")
                    await room.trigger_batch([("message", {"n": n}, None) for n in range(publish)])
                await asyncio.sleep(0.6)  # several pruning rounds
                return [e.seq for e in await ann.history("feed", limit=100)]

    # Published under a limit of 2, stopped before the pruner ran.
    assert await history_after_restart(limit=2, prune_every=3600, publish=6) == [6, 5, 4, 3, 2, 1]
    # The limit is lifted: nothing is published, and nothing more is pruned.
    assert await history_after_restart(limit=0, prune_every=0.05) == [6, 5, 4, 3, 2, 1]
    # The limit is lowered: the pruner applies it without waiting for a publish.
    assert await history_after_restart(limit=3, prune_every=0.05) == [6, 5, 4]
