"""Streams that never read cannot together hold more than gateway.max_outbound_bytes_total."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.values import to_value as value
from services import allinone
from services.runtime.config import RoomDefinition
from services.runtime.telemetry import setup_telemetry
from tests.streams import Stream, stream
from tests.support import make_config, running, wait_until

TOTAL_CAP = 600_000
EVENTS_PER_COMMAND = 50
PAYLOAD = "x" * 1000  # about 1.1 kB an event in an outbox


def outbox_bytes(reader: InMemoryMetricReader) -> int:
    data = reader.get_metrics_data()
    assert data is not None
    (point,) = [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "parley.gateway.outbox.bytes"
        for point in metric.data.data_points
    ]
    return int(point.value)  # type: ignore[attr-defined]


ROOMS = ("firehose-a", "firehose-b", "firehose-c")


@contextlib.asynccontextmanager
async def stalled_stream(address: str, client: Client, room_id: str) -> AsyncIterator[Stream]:
    """A stream that joins a room and then reads nothing, on a channel of its own."""
    # No BDP probing: a client that does not read keeps a small flow-control window.
    async with grpc.aio.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)]) as channel:
        stalled = await Stream(channel, await client.access_token()).open(read=False)
        stalled.send_raw(gateway_pb2.ConnectRequest(request_id="j", join=gateway_pb2.JoinCommand(room_id=room_id)))
        try:
            yield stalled
        finally:
            await stalled.close()


async def test_the_streams_furthest_behind_are_cut_when_all_outboxes_pass_the_cap(
    data_dir: Path, tmp_path: Path
) -> None:
    config = make_config(
        data_dir,
        # A room each: what the stalled streams hold is theirs alone, not one event shared by all.
        rooms=[RoomDefinition(id=room_id) for room_id in ROOMS],
        # Each stream alone stays far below its own cap; only the total is at stake.
        **{"gateway.max_outbound_bytes_total": TOTAL_CAP, "gateway.events_per_window": 1_000_000},
    )
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(config.telemetry, "parley-test", metric_reader=reader)
    async with running(allinone.create_server, config, telemetry=telemetry) as (_, address):
        names = ("pubr", "fast", "behind", "later1", "later2")
        clients = [Client(address, username=name, key_file=tmp_path / f"{name}.json") for name in names]
        async with contextlib.AsyncExitStack() as stack:
            pub, fast, behind, late_1, late_2 = [await stack.enter_async_context(c) for c in clients]
            publisher = await stack.enter_async_context(stream(address, await pub.access_token()))
            healthy = await stack.enter_async_context(stream(address, await fast.access_token()))
            for room_id in ROOMS:
                await publisher.join(room_id)
                await healthy.join(room_id)
            received: dict[str, list[int]] = {room_id: [] for room_id in ROOMS}
            sent = dict.fromkeys(ROOMS, 0)

            async def publish(room_id: str, commands: int) -> None:
                events = [gateway_pb2.OutgoingEvent(event="tick", payload=value(PAYLOAD))] * EVENTS_PER_COMMAND
                for _ in range(commands):
                    command = gateway_pb2.PublishCommand(room_id=room_id, events=events, no_echo=True)
                    await publisher.ok(publish=command)
                    sent[room_id] += EVENTS_PER_COMMAND
                    # The reading client takes every burst as it comes.
                    for _ in range(EVENTS_PER_COMMAND):
                        event = await healthy.next_event()
                        received[event.room_id].append(event.seq)
                    assert outbox_bytes(reader) <= TOTAL_CAP

            # One stream falls far behind alone (about 0.5 MB, under the cap)...
            far_behind = await stack.enter_async_context(stalled_stream(address, behind, ROOMS[0]))
            await publisher.presence_of(behind.user_id)
            await publish(ROOMS[0], 9)
            assert outbox_bytes(reader) > 200_000
            # ...then two more stop reading too, and together they pass the cap.
            later = [
                await stack.enter_async_context(stalled_stream(address, client, room_id))
                for client, room_id in ((late_1, ROOMS[1]), (late_2, ROOMS[2]))
            ]
            for client in (late_1, late_2):
                await publisher.presence_of(client.user_id)
            for room_id in ROOMS[1:]:
                await publish(room_id, 5)

            assert all(received[room_id] == list(range(1, sent[room_id] + 1)) for room_id in ROOMS)
            assert not healthy.ended.done()

            far_behind.start_reading()
            go_away = await far_behind.next_other("go_away", within=10)
            assert go_away.go_away.status.reason == "SLOW_CONSUMER"
            error = await asyncio.wait_for(far_behind.ended, 10)
            assert error is not None
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            assert far_behind.events.qsize() < sent[ROOMS[0]]

            # The two that fell behind less were kept: they read everything since they joined.
            for stalled, room_id in zip(later, ROOMS[1:], strict=True):
                stalled.start_reading()
                seqs = [(await stalled.next_event(within=5)).seq]
                while seqs[-1] < sent[room_id]:
                    seqs.append((await stalled.next_event(within=5)).seq)
                assert seqs == list(range(seqs[0], sent[room_id] + 1))
                others = [stalled.others.get_nowait() for _ in range(stalled.others.qsize())]
                assert "go_away" not in [f.WhichOneof("frame") for f in others]
                assert not stalled.ended.done()
            await wait_until(lambda: outbox_bytes(reader) == 0, within=5)
