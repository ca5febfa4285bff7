"""Two gateways on NATS, each its own process, and the services behind them: a client may use either."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from parley import Client
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.room.v1 import room_pb2, room_pb2_grpc
from tests.scale_out import SECRET, ScaleOut, fresh_database, scale_out
from tests.streams import Stream, payload_of, stream, value
from tests.support import bearer, wait_until

SERVICE = bearer(f"svc:backend:{SECRET}")
ROOMS_TOML = """
[[rooms]]
id = "lobby"

  [[rooms.events]]
  name = "message"
  history = { enabled = true }

  [[rooms.events]]
  name = "typing"
"""

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaleOut]:
    """Two gateways on NATS, the services on SQLite files or on one PostgreSQL database."""
    with contextlib.ExitStack() as stack:
        storage_url = stack.enter_context(fresh_database()) if request.param == "postgresql" else ""
        tmp = tmp_path_factory.mktemp(f"scale-{request.param}")
        yield stack.enter_context(scale_out(tmp, ROOMS_TOML, storage_url=storage_url, PARLEY_GATEWAY_LEASE_SECONDS="2"))


@pytest.fixture
async def tokens(cluster: ScaleOut, tmp_path: Path) -> dict[str, str]:
    """Fresh users (ann, bob, cy) registered through gateway 1, and their access tokens."""
    found = {}
    for name in ("ann", "bob", "cy"):
        username = f"{name}{secrets.token_hex(3)}"
        async with Client(cluster.gateway(1), username=username, key_file=tmp_path / f"{name}.json") as client:
            found[name] = await client.access_token()
            found[f"{name}_id"] = client.user_id
    return found


async def backend_append(address: str, room: str, texts: list[str]) -> None:
    async with grpc.aio.insecure_channel(address) as channel:
        events = [
            history_pb2.NewEvent(event="message", payload=value({"text": t}), sender="ops", handle=secrets.token_hex(8))
            for t in texts
        ]
        await history_pb2_grpc.HistoryServiceStub(channel).AppendEvents(
            history_pb2.AppendEventsRequest(room_id=room, events=events), metadata=SERVICE
        )


async def test_events_published_on_one_gateway_reach_members_on_the_other_in_order(
    cluster: ScaleOut, tokens: dict[str, str]
) -> None:
    async with (
        stream(cluster.gateway(1), tokens["ann"]) as ann,
        stream(cluster.gateway(2), tokens["bob"]) as bob,
    ):
        await ann.join("lobby")
        await bob.join("lobby")
        await ann.presence_of(tokens["bob_id"])  # presence crosses gateways too
        for n in range(5):
            await ann.publish("lobby", "message", {"text": f"a{n}"})
        await backend_append(cluster.gateway(2), "lobby", ["from a backend"])
        await bob.publish("lobby", "typing", {})
        received = [await bob.next_event() for _ in range(7)]
        ann_saw = [await ann.next_event() for _ in range(7)]
    texts = [(payload_of(e) or {}).get("text", "") for e in received]
    assert texts == ["a0", "a1", "a2", "a3", "a4", "from a backend", ""]
    assert [e.seq for e in received] == list(range(received[0].seq, received[0].seq + 7))
    assert [e.seq for e in ann_saw] == [e.seq for e in received]


async def test_subjects_and_ephemerals_cross_gateways(cluster: ScaleOut, tokens: dict[str, str]) -> None:
    async with (
        stream(cluster.gateway(1), tokens["ann"]) as ann,
        stream(cluster.gateway(2), tokens["bob"]) as bob,
    ):
        await bob.ok(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject="cursor:*"))
        await asyncio.sleep(0.1)
        await ann.ok(subject_publish=gateway_pb2.SubjectPublishCommand(subject="cursor:board", data=value({"x": 1})))
        subject = await asyncio.wait_for(bob.subject_events.get(), 3)
        await ann.join("lobby")
        await bob.join("lobby")
        await ann.ok(ephemeral=gateway_pb2.EphemeralCommand(room_id="lobby", subject="typing", data=value(True)))
        signal = (await bob.next_other("ephemeral")).ephemeral
    assert (subject.subject, subject.sender) == ("cursor:board", tokens["ann_id"])
    assert (signal.subject, signal.sender) == ("typing", tokens["ann_id"])


async def test_the_backend_api_answers_for_every_gateway(cluster: ScaleOut, tokens: dict[str, str]) -> None:
    async with (
        stream(cluster.gateway(1), tokens["ann"]) as ann,
        stream(cluster.gateway(2), tokens["bob"]) as bob,
        grpc.aio.insecure_channel(cluster.gateway(1)) as channel,
    ):
        await bob.join("lobby")
        api = gateway_pb2_grpc.GatewayServiceStub(channel)
        bob_id = tokens["bob_id"]
        connections = await api.ListConnections(gateway_pb2.ListConnectionsRequest(user_id=bob_id), metadata=SERVICE)
        (bobs,) = connections.connections
        assert list(bobs.room_ids) == ["lobby"]
        online = await api.ListOnlineUsers(gateway_pb2.ListOnlineUsersRequest(), metadata=SERVICE)
        assert {tokens["ann_id"], bob_id} <= set(online.user_ids)
        in_room = await api.IsInRoom(gateway_pb2.IsInRoomRequest(user_id=bob_id, room_id="lobby"), metadata=SERVICE)
        assert in_room.in_room
        await api.SendToConnection(
            gateway_pb2.SendToConnectionRequest(session_id=bobs.session_id, data=value({"hi": 1})), metadata=SERVICE
        )
        direct = (await bob.next_other("direct_message")).direct_message
        assert direct.data.struct_value["hi"] == 1
        removed = await api.RemoveUserFromRooms(
            gateway_pb2.RemoveUserFromRoomsRequest(user_id=bob_id), metadata=SERVICE
        )
        assert list(removed.room_ids) == ["lobby"]
        await wait_until(lambda: _rooms_of(api, bob_id, []), within=5)
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await api.SendToConnection(
                gateway_pb2.SendToConnectionRequest(session_id=bobs.session_id[:-4] + "0000"), metadata=SERVICE
            )
        assert gone.value.code() == grpc.StatusCode.NOT_FOUND
        del ann


async def _rooms_of(api: gateway_pb2_grpc.GatewayServiceStub, user_id: str, expected: list[str]) -> bool:
    rooms = await api.ListUserRooms(gateway_pb2.ListUserRoomsRequest(user_id=user_id), metadata=SERVICE)
    return list(rooms.room_ids) == expected


async def test_a_resume_on_the_other_gateway_has_no_gap_and_no_duplicate(
    cluster: ScaleOut, tokens: dict[str, str]
) -> None:
    async with stream(cluster.gateway(1), tokens["ann"]) as ann:
        await ann.join("lobby")
        async with stream(cluster.gateway(1), tokens["bob"]) as bob:
            await bob.join("lobby")
            await ann.publish("lobby", "message", {"text": "seen"})
            seen = await bob.next_event()
        for n in range(3):
            await ann.publish("lobby", "message", {"text": f"missed {n}"})
        async with stream(cluster.gateway(2), tokens["bob"]) as bob:
            reply = await bob.ok(join=gateway_pb2.JoinCommand(room_id="lobby", since_seq=seen.seq, epoch=seen.epoch))
            batch = (await bob.next_other("history")).history
            await ann.publish("lobby", "message", {"text": "live"})
            live = await bob.next_event()
    assert reply.join.recovered
    assert [e.payload.struct_value["text"] for e in batch.events] == ["missed 0", "missed 1", "missed 2"]
    assert [e.seq for e in batch.events] == [seen.seq + 1, seen.seq + 2, seen.seq + 3]
    assert (live.seq, live.payload.struct_value["text"]) == (seen.seq + 4, "live")


async def test_a_killed_gateways_members_leave_and_its_clients_resume_elsewhere(
    tmp_path: Path, tokens: dict[str, str], cluster: ScaleOut
) -> None:
    """SIGKILL of a third gateway under load: its client's presence ends (lease), it resumes on gateway 1."""
    doomed = cluster.start("gateway-3", serve="gateway")
    try:
        async with stream(cluster.gateway(1), tokens["ann"]) as ann:
            await ann.join("lobby")
            bob = await Stream(grpc.aio.insecure_channel(doomed.address), tokens["cy"]).open()
            await bob.join("lobby")
            await ann.presence_of(tokens["cy_id"])
            published: list[int] = []

            async def load() -> None:
                for n in range(60):
                    published.extend((await ann.publish("lobby", "message", {"n": n})).publish.seqs)
                    await asyncio.sleep(0.005)

            loading = asyncio.create_task(load())
            first = await bob.next_event()
            seen = [first.seq]
            await asyncio.sleep(0.05)
            while not bob.events.empty():
                seen.append(bob.events.get_nowait().seq)
            cluster.kill("gateway-3")
            await ann.presence_of(tokens["cy_id"], joined=False, within=10)  # the lease lapsed
            await loading
            async with stream(cluster.gateway(1), tokens["cy"]) as again:
                reply = await again.ok(
                    join=gateway_pb2.JoinCommand(room_id="lobby", since_seq=seen[-1], epoch=first.epoch, resume=True)
                )
                batch = (await again.next_other("history")).history
        assert reply.join.recovered
        everything = seen + [e.seq for e in batch.events]
        assert everything == sorted(published[published.index(first.seq) :])
    finally:
        cluster.processes.pop("gateway-3").terminate()


# Random schedules across both gateways


class Reader:
    """A client that keeps (epoch, last seq), connects to either gateway, and resumes."""

    def __init__(self, token: str, room: str) -> None:
        self.token, self.room = token, room
        self.received: list[int] = []
        self.epoch = ""
        self.stream: Stream | None = None
        self.channel: grpc.aio.Channel | None = None
        self.joined_before = False
        # Set when the server said it could not recover: the client would reload.
        self.told_unrecovered = False

    async def connect(self, address: str) -> None:
        self.channel = grpc.aio.insecure_channel(address)
        self.stream = await Stream(self.channel, self.token).open()
        last = self.received[-1] if self.received else 0
        join = gateway_pb2.JoinCommand(room_id=self.room, since_seq=last, epoch=self.epoch, resume=self.joined_before)
        reply = await self.stream.ok(join=join)
        if self.joined_before:
            batch = (await self.stream.next_other("history")).history
            self.received += [e.seq for e in batch.events]
            while batch.continued:
                batch = (await self.stream.next_other("history")).history
                self.received += [e.seq for e in batch.events]
            self.told_unrecovered |= not reply.join.recovered
        self.epoch = self.epoch or reply.join.epoch
        self.joined_before = True

    def drain(self) -> None:
        assert self.stream is not None
        while not self.stream.events.empty():
            self.received.append(self.stream.events.get_nowait().seq)
        while not self.stream.others.empty():
            frame = self.stream.others.get_nowait()
            if frame.WhichOneof("frame") == "history" and not frame.history.recovered:
                self.told_unrecovered = True

    async def disconnect(self) -> None:
        assert self.stream is not None
        await asyncio.sleep(0.05)  # what is in flight arrives
        self.drain()
        await self.stream.close()
        self.stream = None
        if self.channel is not None:
            await self.channel.close()

    async def settle(self, expected: int) -> None:
        assert self.stream is not None
        while len(self.received) < expected:
            self.received.append((await asyncio.wait_for(self.stream.events.get(), 10)).seq)


step = st.one_of(
    st.tuples(st.just("publish"), st.integers(1, 4)),
    st.tuples(st.just("append"), st.integers(1, 3)),
    st.tuples(st.just("disconnect"), st.just(0)),
    st.tuples(st.just("resume"), st.integers(1, 2)),
    st.tuples(st.just("resume_during_burst"), st.integers(1, 5)),
)
rooms = itertools.count()


async def run_schedule(cluster: ScaleOut, tokens: dict[str, str], schedule: list[tuple[str, int]]) -> None:
    room = f"prop-{next(rooms)}-{secrets.token_hex(2)}"
    async with grpc.aio.insecure_channel(cluster.gateway(1)) as channel:
        kept = room_pb2.EventDefinition(name="m", history=room_pb2.HistoryPolicy(enabled=True))
        await room_pb2_grpc.RoomServiceStub(channel).CreateRoom(
            room_pb2.CreateRoomRequest(room_id=room, events=[kept]), metadata=SERVICE
        )
    channels = [grpc.aio.insecure_channel(cluster.gateway(n)) for n in (1, 2)]
    publishers = [await Stream(channel, tokens[u]).open() for channel, u in zip(channels, ("ann", "bob"), strict=True)]
    for publisher in publishers:
        await publisher.join(room)
    published: list[int] = []

    async def burst(count: int) -> None:
        async def one(n: int) -> None:
            reply = await publishers[n % 2].publish(room, "m", {"n": n})
            published.extend(reply.publish.seqs)

        await asyncio.gather(*(one(n) for n in range(count)))

    async def append(count: int) -> None:
        async with grpc.aio.insecure_channel(cluster.gateway(1 + count % 2)) as channel:
            events = [history_pb2.NewEvent(event="m", sender="ops", handle=secrets.token_hex(8)) for _ in range(count)]
            response = await history_pb2_grpc.HistoryServiceStub(channel).AppendEvents(
                history_pb2.AppendEventsRequest(room_id=room, events=events), metadata=SERVICE
            )
            published.extend(a.seq for a in response.appended)

    readers = [Reader(tokens["cy"], room), Reader(tokens["cy"], room)]
    for n, reader in enumerate(readers):
        await reader.connect(cluster.gateway(1 + n))
    for i, (action, count) in enumerate(schedule):
        reader = readers[i % 2]
        if action == "publish":
            await burst(count)
        elif action == "append":
            await append(count)
        elif action == "disconnect" and reader.stream is not None:
            await reader.disconnect()
        elif action == "resume" and reader.stream is None:
            await reader.connect(cluster.gateway(count))
        elif action == "resume_during_burst" and reader.stream is None:
            await asyncio.gather(reader.connect(cluster.gateway(1 + count % 2)), burst(count))
    for reader in readers:
        if reader.stream is None:
            await reader.connect(cluster.gateway(1))
        if reader.told_unrecovered:
            continue
        await reader.settle(len(published))
        assert reader.received == sorted(published)  # every kept event once, in order
        await asyncio.sleep(0.05)
        reader.drain()
        assert reader.received == sorted(published)
        await reader.disconnect()
    for publisher in publishers:
        await publisher.close()
    for channel in channels:
        await channel.close()


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(step, min_size=1, max_size=12))
def test_every_client_gets_every_kept_event_once_in_order_across_gateways(
    cluster: ScaleOut, property_tokens: dict[str, str], schedule: list[tuple[str, int]]
) -> None:
    asyncio.run(run_schedule(cluster, property_tokens, schedule))


@pytest.fixture(scope="module")
def property_tokens(cluster: ScaleOut, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    async def register() -> dict[str, str]:
        tmp = tmp_path_factory.mktemp("property-keys")
        found = {}
        for name in ("ann", "bob", "cy"):
            async with Client(cluster.gateway(1), username=f"p{name}{secrets.token_hex(3)}", key_file=tmp / name) as c:
                found[name] = await c.access_token()
        return found

    return asyncio.run(register())


async def test_a_room_whose_id_has_dots_crosses_gateways(cluster: ScaleOut, tokens: dict[str, str]) -> None:
    room = f"team.alpha.{secrets.token_hex(2)}"
    async with grpc.aio.insecure_channel(cluster.gateway(2)) as channel:
        await room_pb2_grpc.RoomServiceStub(channel).CreateRoom(
            room_pb2.CreateRoomRequest(room_id=room, events=[room_pb2.EventDefinition(name="*")]), metadata=SERVICE
        )
    async with (
        stream(cluster.gateway(1), tokens["ann"]) as ann,
        stream(cluster.gateway(2), tokens["bob"]) as bob,
    ):
        await ann.join(room)
        await bob.join(room)
        await bob.publish(room, "note", {"text": "dotted"})
        got = await ann.next_event()
    assert (got.room_id, payload_of(got)) == (room, {"text": "dotted"})
