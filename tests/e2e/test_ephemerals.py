"""Ephemeral signals: relayed to the other members, never stored, expiring unless renewed, rate limited."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client, Signal
from parley.errors import ParleyError
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.support import make_config, running

ROOMS = [RoomDefinition(id="chat", events=[EventDefinition(name="*", history=HistorySettings(enabled=True))])]
TTL_SECONDS = 0.6


@pytest.fixture
async def pair(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[Client, Client]]:
    config = make_config(
        data_dir,
        rooms=ROOMS,
        # 20 signals an hour: the limit test cannot refill meanwhile.
        **{
            "gateway.ephemeral_ttl_seconds": TTL_SECONDS,
            "gateway.events_per_window": 20,
            "gateway.window_seconds": 3600,
        },
    )
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="ada", key_file=tmp_path / "a.json") as ada,
            Client(address, username="ben", key_file=tmp_path / "b.json") as ben,
        ):
            yield ada, ben


async def next_signal(signals: asyncio.Queue[Signal]) -> Signal:
    return await asyncio.wait_for(signals.get(), 5)


async def test_a_signal_reaches_the_others_then_expires(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    own: asyncio.Queue[Signal] = asyncio.Queue()
    seen: asyncio.Queue[Signal] = asyncio.Queue()
    mine.on_ephemeral(own.put_nowait)
    theirs.on_ephemeral(seen.put_nowait)

    await mine.send_ephemeral("typing", {"draft": 3})
    typing = await next_signal(seen)
    assert (typing.subject, typing.sender, typing.data, typing.expired) == ("typing", ada.user_id, {"draft": 3}, False)
    assert typing.ttl_ms == TTL_SECONDS * 1000
    stopped = await next_signal(seen)
    assert (stopped.subject, stopped.sender, stopped.expired, stopped.data) == ("typing", ada.user_id, True, None)
    assert own.empty()  # the sender does not get its own signals

    state = await ben.history("chat")
    assert state == []  # never stored, no sequence taken
    published = await mine.trigger("message", {"text": "after the signal"})
    assert published.seq == 1


async def test_renewing_keeps_a_signal_alive(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    seen: asyncio.Queue[Signal] = asyncio.Queue()
    theirs.on_ephemeral(seen.put_nowait)
    for _ in range(4):
        await mine.send_ephemeral("typing")
        await asyncio.sleep(TTL_SECONDS / 4)
    # Four signals a quarter of a TTL apart, none expired in between; then one expiry.
    received = [await next_signal(seen) for _ in range(5)]
    assert [s.expired for s in received] == [False, False, False, False, True]


async def test_leaving_ends_the_signals_at_once(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    seen: asyncio.Queue[Signal] = asyncio.Queue()
    theirs.on_ephemeral(seen.put_nowait)
    await mine.send_ephemeral("cursor", {"x": 1, "y": 2})
    assert not (await next_signal(seen)).expired
    await mine.leave()
    ended = await asyncio.wait_for(seen.get(), TTL_SECONDS / 2)
    assert (ended.subject, ended.expired) == ("cursor", True)


async def test_signals_are_checked_and_rate_limited(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    room = await ada.join("chat")
    with pytest.raises(ParleyError) as bad:
        await room.send_ephemeral("not a subject!")
    assert (bad.value.reason, bad.value.metadata.get("field")) == ("VALIDATION_FAILED", "subject")
    with pytest.raises(ParleyError) as large:
        await room.send_ephemeral("typing", "x" * 70_000)
    assert large.value.reason == "PAYLOAD_TOO_LARGE"
    for _ in range(20):
        await room.send_ephemeral("typing")
    with pytest.raises(ParleyError) as limited:
        await room.send_ephemeral("typing")
    assert limited.value.code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert limited.value.reason == "RATE_LIMITED"
    outside = await ben.join("chat")
    await outside.leave()
    with pytest.raises(ParleyError) as not_joined:
        await outside.send_ephemeral("typing")
    assert not_joined.value.reason == "NOT_IN_ROOM"


async def test_each_connection_of_a_user_has_its_own_signal(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    async with Client(ada.address, identity=ada.identity) as second_tab:
        first, second = await ada.join("chat"), await second_tab.join("chat")
        theirs = await ben.join("chat")
        seen: asyncio.Queue[Signal] = asyncio.Queue()
        theirs.on_ephemeral(seen.put_nowait)
        await first.send_ephemeral("typing")
        await second.send_ephemeral("typing")
        signals = [await next_signal(seen) for _ in range(4)]  # two starts, then two ends
    starts = [s.session_id for s in signals if not s.expired]
    ends = [s.session_id for s in signals if s.expired]
    assert len(set(starts)) == 2
    assert sorted(starts) == sorted(ends)
    assert {s.sender for s in signals} == {ada.user_id}
