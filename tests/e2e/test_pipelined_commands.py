"""A connection's commands run side by side (services/gateway/command_lanes.py), through a real server:
a slow join holds up nothing else, pipelined publishes keep their order and share transactions, and a room
that keeps no history numbers its events without a write each."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from parley.gateway.v1 import gateway_pb2
from services import allinone
from services.history.sequences import BLOCK
from services.history.server import APPEND_TRANSACTIONS_METRIC, NUMBERED_IN_MEMORY_METRIC
from services.history.sqlite_storage import SqliteHistoryStorage
from services.runtime.config import EventDefinition, HistorySettings, HooksConfig, RoomDefinition
from services.runtime.telemetry import setup_telemetry
from tests import hooks_for_tests
from tests.streams import Stream, payload_of, stream, value
from tests.support import make_config, running, token_of

ROOMS = [
    RoomDefinition(id="lobby"),
    RoomDefinition(id="slow"),
    RoomDefinition(id="kept", events=[EventDefinition(name="*", history=HistorySettings(enabled=True))]),
]
_ids = itertools.count()


@pytest.fixture
async def server(data_dir: Path) -> AsyncIterator[tuple[str, InMemoryMetricReader]]:
    hooks_for_tests.slow_joins = asyncio.Event()
    config = make_config(
        data_dir,
        rooms=ROOMS,
        hooks=HooksConfig(before_join="tests.hooks_for_tests:before_join"),
        **{"gateway.events_per_window": 1_000_000},
    )
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(config.telemetry, "parley-test", metric_reader=reader)
    try:
        async with running(allinone.create_server, config, telemetry=telemetry) as (_, address):
            yield address, reader
    finally:
        hooks_for_tests.slow_joins = None


def counter(reader: InMemoryMetricReader, name: str) -> int:
    data = reader.get_metrics_data()
    assert data is not None
    values = [
        int(point.value)  # type: ignore[union-attr]
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]
    assert len(values) == 1, values
    return values[0]


def send(s: Stream, **command: object) -> asyncio.Future[gateway_pb2.Reply]:
    """Sends a command without waiting for its reply."""
    request_id = f"p{next(_ids)}"
    reply: asyncio.Future[gateway_pb2.Reply] = asyncio.get_running_loop().create_future()
    s.replies[request_id] = reply
    s.send_raw(gateway_pb2.ConnectRequest(request_id=request_id, **command))  # type: ignore[arg-type]
    return reply


def publish(s: Stream, room_id: str, n: int, key: str = "") -> asyncio.Future[gateway_pb2.Reply]:
    event = gateway_pb2.OutgoingEvent(event="message", payload=value({"n": n}), idempotency_key=key)
    return send(s, publish=gateway_pb2.PublishCommand(room_id=room_id, events=[event]))


async def test_a_slow_join_holds_up_neither_pings_nor_publishes_to_other_rooms(
    server: tuple[str, InMemoryMetricReader], tmp_path: Path
) -> None:
    address, _ = server
    async with stream(address, await token_of(address, "ada", tmp_path)) as s:
        await s.join("lobby")
        join = send(s, join=gateway_pb2.JoinCommand(room_id="slow"))
        ping = send(s, ping=gateway_pb2.PingCommand())
        published = publish(s, "lobby", 1)
        # Commands to the joining room wait for the join, in order.
        after_join = publish(s, "slow", 2)
        assert (await asyncio.wait_for(ping, 3)).status.code == 0
        assert (await asyncio.wait_for(published, 3)).status.code == 0
        assert payload_of(await s.next_event()) == {"n": 1}
        assert not join.done()
        assert not after_join.done()
        assert hooks_for_tests.slow_joins is not None
        hooks_for_tests.slow_joins.set()
        assert (await asyncio.wait_for(join, 3)).status.code == 0
        assert (await asyncio.wait_for(after_join, 3)).status.code == 0


@pytest.mark.parametrize(("room_id", "keyed"), [("kept", False), ("lobby", False), ("lobby", True)])
async def test_pipelined_publishes_keep_their_order_and_are_committed_together(
    server: tuple[str, InMemoryMetricReader],
    tmp_path: Path,
    room_id: str,
    keyed: bool,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    address, reader = server
    append_batch = SqliteHistoryStorage.append_batch

    async def slow_disk(self: SqliteHistoryStorage, *args: Any) -> Any:
        await asyncio.sleep(0.05)  # publishes sent meanwhile wait for the next transaction
        return await append_batch(self, *args)

    monkeypatch.setattr(SqliteHistoryStorage, "append_batch", slow_disk)
    count = 300
    async with (
        stream(address, await token_of(address, "pub", tmp_path)) as publisher,
        stream(address, await token_of(address, "sub", tmp_path)) as subscriber,
    ):
        await publisher.join(room_id)
        await subscriber.join(room_id)
        transactions = counter(reader, APPEND_TRANSACTIONS_METRIC)
        in_memory = counter(reader, NUMBERED_IN_MEMORY_METRIC)
        # Keyed like the SDKs' publishes (every one carries an idempotency key).
        sent = (publish(publisher, room_id, n, f"key-{n}" if keyed else "") for n in range(count))
        replies = await asyncio.wait_for(asyncio.gather(*sent), 10)
        assert all(reply.status.code == 0 for reply in replies)
        seqs = [reply.publish.seqs[0] for reply in replies]
        # Sequences in the order the commands were sent, with nothing between them.
        assert seqs == list(range(seqs[0], seqs[0] + count))
        received = [payload_of(await subscriber.next_event())["n"] for _ in range(count)]
        assert received == list(range(count))
        if keyed:
            retried = await publish(publisher, room_id, 7, "key-7")
            assert list(retried.publish.seqs) == [seqs[7]], "a retry gets the original back"
            await subscriber.no_event()
        written = counter(reader, APPEND_TRANSACTIONS_METRIC) - transactions
        numbered = counter(reader, NUMBERED_IN_MEMORY_METRIC) - in_memory
    if room_id == "kept":
        # One connection's publishes share transactions like the publishes of many.
        assert written <= count / 15
    else:
        # A room that keeps nothing writes only to reserve its numbers, a block at a time, and (keyed)
        # the keys numbered in memory, behind and before each reservation.
        assert written <= (count // BLOCK + 1) * (2 if keyed else 1) + 1
        assert numbered > 0


async def test_a_publish_with_an_idempotency_key_no_store_can_keep_is_refused_alone(
    server: tuple[str, InMemoryMetricReader], tmp_path: Path
) -> None:
    address, _ = server
    async with stream(address, await token_of(address, "pat", tmp_path)) as publisher:
        await publisher.join("lobby")
        sent = [publish(publisher, "lobby", 0, "a\x00b"), publish(publisher, "lobby", 1, "k" * 200)]
        sent.append(publish(publisher, "lobby", 2, "fine"))
        refused_nul, refused_long, accepted = await asyncio.wait_for(asyncio.gather(*sent), 5)
    for refused in (refused_nul, refused_long):
        assert refused.status.reason == "VALIDATION_FAILED"
        assert refused.status.message.startswith("idempotency_key:")
    assert accepted.status.code == 0


async def test_a_restart_costs_a_room_that_keeps_nothing_neither_an_event_nor_a_resume(
    data_dir: Path, tmp_path: Path
) -> None:
    rooms = [RoomDefinition(id="lobby")]  # keeps no history: every event numbered from a reserved block
    async with running(allinone.create_server, make_config(data_dir, rooms=rooms)) as (_, address):
        port = int(address.rsplit(":", 1)[1])
        ann, bob = await token_of(address, "ann", tmp_path), await token_of(address, "bob", tmp_path)
        async with stream(address, ann) as a:
            await a.join("lobby")
            seqs = [(await publish(a, "lobby", n)).publish.seqs[0] for n in range(5)]
            async with stream(address, bob) as b:
                seen = (await b.join("lobby")).join
            assert seen.last_seq == seqs[-1]
    config = make_config(data_dir, rooms=rooms, **{"server.port": port})
    async with running(allinone.create_server, config) as (_, address):
        async with stream(address, ann) as a, stream(address, bob) as b:
            resume = gateway_pb2.JoinCommand(room_id="lobby", since_seq=seen.last_seq, epoch=seen.epoch, resume=True)
            resumed = await b.ok(join=resume)
            assert resumed.join.recovered, resumed.join.unrecovered_reason
            await a.join("lobby")
            published = await publish(a, "lobby", 99)
            # Numbered after the block reserved before the restart, and delivered: no gap to tell of.
            assert published.publish.seqs[0] > seqs[-1]
            assert payload_of(await b.next_event()) == {"n": 99}
            await asyncio.sleep(0.1)
            frames = [b.others.get_nowait() for _ in range(b.others.qsize())]
            gaps = [f for f in frames if f.history.kind == gateway_pb2.HistoryBatch.KIND_GAP]
            assert gaps == []


async def test_concurrent_joins_keep_to_the_rooms_a_connection_may_be_in(data_dir: Path, tmp_path: Path) -> None:
    hooks_for_tests.slow_joins = asyncio.Event()
    config = make_config(
        data_dir,
        rooms=[RoomDefinition(id=f"slow{i}") for i in range(5)],
        hooks=HooksConfig(before_join="tests.hooks_for_tests:before_join"),
        **{"gateway.max_rooms_per_connection": 2},
    )
    try:
        async with running(allinone.create_server, config) as (_, address):
            async with stream(address, await token_of(address, "many", tmp_path)) as s:
                joins = [send(s, join=gateway_pb2.JoinCommand(room_id=f"slow{i}")) for i in range(5)]
                await asyncio.sleep(0.2)
                hooks_for_tests.slow_joins.set()
                replies = await asyncio.wait_for(asyncio.gather(*joins), 5)
    finally:
        hooks_for_tests.slow_joins = None
    assert [reply.status.reason for reply in replies].count("TOO_MANY_ROOMS") == 3
