"""A client that stops reading is cut off; everyone else keeps their full rate."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client, ParleyError, RoomEvent, SlowConsumerError
from parley.gateway.v1 import gateway_pb2
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import Stream, stream, value
from tests.support import error_reason, make_config, running, wait_until

COMMANDS = 20
EVENTS_PER_COMMAND = 100
PAYLOAD = "x" * 1000


async def test_a_stalled_client_is_cut_with_slow_consumer(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(
        data_dir,
        rooms=[RoomDefinition(id="firehose")],
        # Room for a few bursts: a reader that keeps up never comes near it.
        **{"gateway.max_outbound_bytes": 512 * 1024, "gateway.events_per_window": 1_000_000},
    )
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="pub", key_file=tmp_path / "p.json") as pub,
            Client(address, username="fast", key_file=tmp_path / "f.json") as fast,
            Client(address, username="stuck", key_file=tmp_path / "s.json") as stuck,
        ):
            # No BDP probing: the stalled client's flow-control window stays small.
            stalled_channel = grpc.aio.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
            stalled = await Stream(stalled_channel, await stuck.access_token()).open(read=False)
            async with (
                stream(address, await pub.access_token()) as publisher,
                stream(address, await fast.access_token()) as healthy,
            ):
                await publisher.join("firehose")
                await healthy.join("firehose")
                stalled.send_raw(
                    gateway_pb2.ConnectRequest(request_id="j", join=gateway_pb2.JoinCommand(room_id="firehose"))
                )
                await publisher.presence_of(stuck.user_id)

                events = [gateway_pb2.OutgoingEvent(event="tick", payload=value(PAYLOAD))] * EVENTS_PER_COMMAND
                received = []
                for _ in range(COMMANDS):
                    reply = await publisher.ok(
                        publish=gateway_pb2.PublishCommand(room_id="firehose", events=events, no_echo=True)
                    )
                    assert len(reply.publish.seqs) == EVENTS_PER_COMMAND
                    # The healthy reader takes every burst as fast as it is published.
                    received += [await healthy.next_event() for _ in range(EVENTS_PER_COMMAND)]

                assert [e.seq for e in received] == list(range(1, COMMANDS * EVENTS_PER_COMMAND + 1))
                assert healthy.event_frames < len(received)  # events arrive batched
                assert not healthy.ended.done()

                # The stalled client reads again: what was in flight, then the reason it was cut.
                stalled.start_reading()
                go_away = await stalled.next_other("go_away", within=10)
                assert go_away.go_away.status.reason == "SLOW_CONSUMER"
                error = await asyncio.wait_for(stalled.ended, 10)
                assert error is not None
                assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert stalled.events.qsize() < COMMANDS * EVENTS_PER_COMMAND
                # The cut connection no longer counts as a member of the room.
                participants = set(await pub.participants("firehose"))
                for _ in range(50):
                    if stuck.user_id not in participants:
                        break
                    await asyncio.sleep(0.05)
                    participants = set(await pub.participants("firehose"))
                assert participants == {pub.user_id, fast.user_id}
            await stalled.close()
            await stalled_channel.close()


@contextlib.asynccontextmanager
async def cut_while_stalled(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[Client, Stream]]:
    """A stream that stopped reading in a flooded room, once the gateway let it go (its user left the room).

    Yields the publisher's client and the stalled stream (not reading); closes both afterwards.
    """
    config = make_config(
        data_dir,
        rooms=[RoomDefinition(id="firehose")],
        **{"gateway.max_outbound_bytes": 512 * 1024, "gateway.events_per_window": 1_000_000},
    )
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="pub", key_file=tmp_path / "p.json") as pub,
            Client(address, username="stuck", key_file=tmp_path / "s.json") as stuck,
        ):
            stalled_channel = grpc.aio.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
            stalled = await Stream(stalled_channel, await stuck.access_token()).open(read=False)
            try:
                async with stream(address, await pub.access_token()) as publisher:
                    await publisher.join("firehose")
                    stalled.send_raw(
                        gateway_pb2.ConnectRequest(request_id="j", join=gateway_pb2.JoinCommand(room_id="firehose"))
                    )
                    await publisher.presence_of(stuck.user_id)
                    events = [gateway_pb2.OutgoingEvent(event="tick", payload=value(PAYLOAD))] * EVENTS_PER_COMMAND
                    for _ in range(COMMANDS):
                        await publisher.ok(
                            publish=gateway_pb2.PublishCommand(room_id="firehose", events=events, no_echo=True)
                        )
                    await publisher.presence_of(stuck.user_id, joined=False, within=15)
                    yield pub, stalled
            finally:
                await stalled.close()
                await stalled_channel.close()


async def test_a_client_that_never_reads_again_is_let_go(data_dir: Path, tmp_path: Path) -> None:
    """Its stream waits in a write only the client's reading can end: the gateway takes the connection
    out of its rooms and its list of connections at once all the same, without the client reading a byte more."""
    async with cut_while_stalled(data_dir, tmp_path) as (pub, _):
        assert set(await pub.participants("firehose")) == {pub.user_id}


async def test_a_client_let_go_while_stalled_is_told_why_when_it_reads_again(data_dir: Path, tmp_path: Path) -> None:
    """Long after the gateway let a stalled stream go, the client reads again: what was in flight,
    then the GoAway and RESOURCE_EXHAUSTED / SLOW_CONSUMER, never a stream left open and silent."""
    async with cut_while_stalled(data_dir, tmp_path) as (_, stalled):
        await asyncio.sleep(1)  # the client stays away a while longer
        stalled.start_reading()
        go_away = await stalled.next_other("go_away", within=10)
        assert go_away.go_away.status.reason == "SLOW_CONSUMER"
        error = await asyncio.wait_for(stalled.ended, 10)
        assert error is not None
        assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert error_reason(error) == "SLOW_CONSUMER"


async def test_streams_cut_and_never_read_again_still_count_against_the_users_limit(
    data_dir: Path, tmp_path: Path
) -> None:
    """A cut stream its client never reads again stays open (its status waits behind the frame in
    flight): it counts as one of the user's streams until it ends, so a user cannot pile them up."""
    config = make_config(
        data_dir,
        rooms=[RoomDefinition(id="firehose")],
        **{
            "gateway.max_outbound_bytes": 512 * 1024,
            "gateway.events_per_window": 1_000_000,
            "gateway.max_connections_per_user": 2,
        },
    )
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="pub", key_file=tmp_path / "p.json") as pub,
            Client(address, username="stuck", key_file=tmp_path / "s.json") as stuck,
        ):
            token = await stuck.access_token()
            channel = grpc.aio.insecure_channel(address, options=[("grpc.http2.bdp_probe", 0)])
            stalled = [await Stream(channel, token).open(read=False) for _ in range(2)]
            async with stream(address, await pub.access_token()) as publisher:
                await publisher.join("firehose")
                for n, one in enumerate(stalled):
                    one.send_raw(
                        gateway_pb2.ConnectRequest(request_id=f"j{n}", join=gateway_pb2.JoinCommand(room_id="firehose"))
                    )

                async def both_in() -> bool:
                    return len((await pub.participants("firehose")).get(stuck.user_id, [])) == 2

                await wait_until(both_in)
                events = [gateway_pb2.OutgoingEvent(event="tick", payload=value(PAYLOAD))] * EVENTS_PER_COMMAND
                for _ in range(COMMANDS):
                    await publisher.ok(
                        publish=gateway_pb2.PublishCommand(room_id="firehose", events=events, no_echo=True)
                    )
                await publisher.presence_of(stuck.user_id, joined=False, within=15)  # both cut

                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await Stream(channel, token).open()
                assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
                assert error_reason(refused.value) == "TOO_MANY_CONNECTIONS"

                stalled[0].call.cancel()  # one of them goes away: its place is free again
                await wait_until(lambda: reopened(channel, token), within=10)
            for one in stalled:
                one.call.cancel()
            await channel.close()


async def reopened(channel: grpc.aio.Channel, token: str) -> bool:
    try:
        opened = await Stream(channel, token).open()
    except grpc.aio.AioRpcError:
        return False
    await opened.close()
    return True


FLOOD = 200
# Within the default payload limit (64 KiB) once wrapped as a JSON string value.
BIG = "x" * (64 * 1024 - 100)
KEPT_ROOMS = [RoomDefinition(id="flood", events=[EventDefinition(name="*", history=HistorySettings(enabled=True))])]


@pytest.mark.timeout(90)
async def test_a_paused_sdk_client_is_cut_told_and_resumes_with_every_event(data_dir: Path, tmp_path: Path) -> None:
    """An SDK client whose handler waits during a flood of 64 KiB events (the default config otherwise):
    it stops reading, the gateway cuts it, and it is told so (SLOW_CONSUMER) right after the frames it was
    sent; it reconnects by itself, resumes from the last event it received, and its handler gets every
    event once, in order."""
    config = make_config(data_dir, rooms=KEPT_ROOMS, **{"gateway.events_per_window": 1_000_000})
    async with running(allinone.create_server, config) as (_, address):
        async with (
            Client(address, username="pub", key_file=tmp_path / "p.json") as pub,
            Client(address, username="paused", key_file=tmp_path / "s.json") as paused,
        ):
            resume = asyncio.Event()
            seen: list[int] = []

            async def handle(event: RoomEvent) -> None:
                await resume.wait()
                seen.append(event.seq)

            ends: list[ParleyError | None] = []
            told: list[ParleyError] = []
            paused.on_disconnect(ends.append)
            paused.on_error(told.append)
            room = await paused.join("flood")
            room.on_any(handle)

            publisher = await pub.join("flood")
            left: list[str] = []
            publisher.on_presence(lambda user_id, joined: None if joined else left.append(user_id))
            published: list[int] = []
            for _ in range(FLOOD // 10):
                batch = await publisher.trigger_batch([("big", BIG, None)] * 10, echo=False)
                published += [p.seq for p in batch]

            # The gateway let the cut connection go at once: the others see it leave.
            await wait_until(lambda: paused.user_id in left, within=15)
            assert not ends  # the client reads nothing while its handler waits
            resume.set()

            await wait_until(lambda: bool(ends), within=15)
            assert isinstance(ends[0], SlowConsumerError)
            assert (ends[0].code, ends[0].reason, ends[0].retryable) == (
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                "SLOW_CONSUMER",
                True,
            )
            assert [type(error) for error in told] == [SlowConsumerError]  # the GoAway before the status
            await wait_until(lambda: len(seen) >= FLOOD, within=30)
            assert room.joined
            assert room.recovered
            await asyncio.sleep(0.2)  # nothing more comes
            assert seen == published
