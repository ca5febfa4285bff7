"""Random schedules of publishes, disconnects and resumes: every client ends
with every history-enabled event exactly once, in sequence order."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.room.v1 import room_pb2, room_pb2_grpc
from tests.streams import Stream
from tests.support import ServerProcess, bearer

SECRET = "property-secret"
rooms = itertools.count()
step = st.one_of(
    st.tuples(st.just("publish"), st.integers(1, 3)),
    st.tuples(st.just("disconnect"), st.just(0)),
    st.tuples(st.just("resume"), st.just(0)),
    st.tuples(st.just("resume_during_burst"), st.integers(1, 5)),
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, list[str]]]:
    tmp = tmp_path_factory.mktemp("property")
    (tmp / "p.toml").write_text(f'[auth]\nservice_credentials = {{ backend = "{SECRET}" }}\n')
    process = ServerProcess(
        ["--port", "0", "--data-dir", str(tmp / "data"), "--config", str(tmp / "p.toml")], {}, tmp / "serve.log"
    )
    try:

        async def tokens() -> list[str]:
            found = []
            for name in ("pubone", "pubtwo", "reader"):
                async with Client(process.address, username=name, key_file=tmp / f"{name}.json") as client:
                    found.append(await client.access_token())
            return found

        yield process.address, asyncio.run(tokens())
    finally:
        process.terminate()


class Subscriber:
    """A client that keeps (epoch, last seq) and resumes, collecting what it receives."""

    def __init__(self, channel: grpc.aio.Channel, token: str, room: str) -> None:
        self.channel, self.token, self.room = channel, token, room
        self.received: list[int] = []
        self.epoch = ""
        self.stream: Stream | None = None
        self.joined_before = False

    def _drain(self) -> None:
        assert self.stream is not None
        while not self.stream.events.empty():
            event = self.stream.events.get_nowait()
            self.received.append(event.seq)
            self.epoch = event.epoch

    async def connect(self) -> None:
        self.stream = await Stream(self.channel, self.token).open()
        last = self.received[-1] if self.received else 0
        join = gateway_pb2.JoinCommand(room_id=self.room, since_seq=last, epoch=self.epoch, resume=self.joined_before)
        reply = await self.stream.ok(join=join)
        if self.joined_before:
            assert reply.join.recovered
            batch = (await self.stream.next_other("history")).history
            self.received += [e.seq for e in batch.events]
        self.epoch = self.epoch or reply.join.epoch
        self.joined_before = True

    async def disconnect(self) -> None:
        assert self.stream is not None
        await asyncio.sleep(0.05)  # what is in flight arrives
        self._drain()
        await self.stream.close()
        self.stream = None

    async def settle(self, expected: int) -> None:
        assert self.stream is not None
        while len(self.received) < expected:
            event = await asyncio.wait_for(self.stream.events.get(), 5)
            self.received.append(event.seq)


async def run_schedule(address: str, tokens: list[str], schedule: list[tuple[str, int]]) -> None:
    room = f"prop-{next(rooms)}"
    async with grpc.aio.insecure_channel(address) as channel:
        kept = room_pb2.EventDefinition(name="m", history=room_pb2.HistoryPolicy(enabled=True))
        await room_pb2_grpc.RoomServiceStub(channel).CreateRoom(
            room_pb2.CreateRoomRequest(room_id=room, events=[kept]), metadata=bearer(f"svc:backend:{SECRET}")
        )
        publishers = [await Stream(channel, token).open() for token in tokens[:2]]
        for publisher in publishers:
            await publisher.join(room)
        published: list[int] = []

        async def burst(count: int) -> None:
            async def one(publisher: Stream, n: int) -> None:
                reply = await publisher.publish(room, "m", {"n": n})
                published.extend(reply.publish.seqs)

            await asyncio.gather(*(one(publishers[n % 2], n) for n in range(count)))

        reader = Subscriber(channel, tokens[2], room)
        await reader.connect()
        for action, count in schedule:
            if action == "publish":
                await burst(count)
            elif action == "disconnect" and reader.stream is not None:
                await reader.disconnect()
            elif action == "resume" and reader.stream is None:
                await reader.connect()
            elif action == "resume_during_burst" and reader.stream is None:
                await asyncio.gather(reader.connect(), burst(count))
        if reader.stream is None:
            await reader.connect()
        await reader.settle(len(published))
        assert reader.received == sorted(published)  # every event once, in order
        await asyncio.sleep(0.05)
        assert reader.stream is not None
        assert reader.stream.events.empty()
        for publisher in publishers:
            await publisher.close()
        await reader.disconnect()


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=12))
def test_resume_delivers_every_event_once_in_order(
    server: tuple[str, list[str]], schedule: list[tuple[str, int]]
) -> None:
    address, tokens = server
    asyncio.run(run_schedule(address, tokens, schedule))
