"""The browser path: a Subscribe stream per page, its commands by SendCommand, against real servers."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from parley import Client
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, HooksConfig, RoomDefinition
from tests import hooks_for_tests
from tests.streams import payload_of, stream, value
from tests.support import SERVICE_SECRET, ServerProcess, bearer, error_reason, make_config, running, wait_until

MESSAGE_SCHEMA = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}}
ROOMS = [
    RoomDefinition(
        id="chat", events=[EventDefinition(name="message", schema=MESSAGE_SCHEMA, history=HistorySettings(True))]
    ),
    RoomDefinition(id="other"),
]
_ids = itertools.count(1)


class Page:
    """What a browser page does: one Subscribe stream for its session, each command a SendCommand call."""

    def __init__(self, channel: grpc.aio.Channel, token: str) -> None:
        self.stub: Any = gateway_pb2_grpc.GatewayServiceStub(channel)
        self.token = token
        self.call = self.stub.Subscribe(gateway_pb2.SubscribeRequest(), metadata=bearer(token))
        self.welcome = gateway_pb2.Welcome()
        self.events: asyncio.Queue[gateway_pb2.Event] = asyncio.Queue()
        self.others: asyncio.Queue[gateway_pb2.ConnectResponse] = asyncio.Queue()
        # Replies belong to the SendCommand calls: the stream carries only the pings' (a heartbeat's proof).
        self.replies_on_stream: asyncio.Queue[gateway_pb2.Reply] = asyncio.Queue()
        self.stream_reply_ids: list[str] = []
        self.ping_ids: set[str] = set()
        self._reader: asyncio.Task[None] | None = None

    async def open(self) -> Page:
        first = await asyncio.wait_for(self.call.read(), 5)
        assert first.frame.WhichOneof("frame") == "welcome", first
        self.welcome = first.frame.welcome
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            while (response := await self.call.read()) is not grpc.aio.EOF:
                frame = response.frame
                kind = frame.WhichOneof("frame")
                if kind in ("reply", "replies"):
                    for reply in [frame.reply] if kind == "reply" else frame.replies.replies:
                        self.stream_reply_ids.append(reply.request_id)
                        self.replies_on_stream.put_nowait(reply)
                elif kind == "events":
                    for event in frame.events.events:
                        self.events.put_nowait(event)
                else:
                    self.others.put_nowait(frame)

    @property
    def session_id(self) -> str:
        return self.welcome.session_id

    def request(self, **command: Any) -> gateway_pb2.SendCommandRequest:
        connect_request = gateway_pb2.ConnectRequest(request_id=f"r{next(_ids)}", **command)
        return gateway_pb2.SendCommandRequest(session_id=self.session_id, command=connect_request)

    async def send(self, request: gateway_pb2.SendCommandRequest, token: str = "") -> gateway_pb2.Reply:
        if request.command.WhichOneof("command") == "ping":
            self.ping_ids.add(request.command.request_id)
        response = await self.stub.SendCommand(request, metadata=bearer(token or self.token), timeout=5)
        reply: gateway_pb2.Reply = response.reply
        assert reply.request_id == request.command.request_id
        return reply

    async def command(self, **command: Any) -> gateway_pb2.Reply:
        return await self.send(self.request(**command))

    async def join(self, room_id: str, **options: Any) -> gateway_pb2.Reply:
        reply = await self.command(join=gateway_pb2.JoinCommand(room_id=room_id, **options))
        assert reply.status.code == 0, reply.status
        return reply

    async def publish(self, room_id: str, data: Any, event: str = "message") -> gateway_pb2.Reply:
        return await self.command(publish=publish_command(room_id, data, event))

    async def next_event(self) -> gateway_pb2.Event:
        return await asyncio.wait_for(self.events.get(), 5)

    async def next_other(self, kind: str) -> gateway_pb2.ConnectResponse:
        while True:
            frame = await asyncio.wait_for(self.others.get(), 5)
            if frame.WhichOneof("frame") == kind:
                return frame

    async def reply_on_stream(self, request_id: str) -> gateway_pb2.Reply:
        """The Reply with this request id that came on the stream (skipping earlier pings')."""
        while True:
            reply = await asyncio.wait_for(self.replies_on_stream.get(), 5)
            if reply.request_id == request_id:
                return reply

    async def close(self) -> None:
        self.call.cancel()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)
        assert set(self.stream_reply_ids) <= self.ping_ids


def publish_command(room_id: str, data: Any, event: str = "message") -> gateway_pb2.PublishCommand:
    return gateway_pb2.PublishCommand(room_id=room_id, events=[gateway_pb2.OutgoingEvent(event=event, payload=data)])


@contextlib.asynccontextmanager
async def page(address: str, token: str) -> AsyncIterator[Page]:
    async with grpc.aio.insecure_channel(address) as channel:
        opened = await Page(channel, token).open()
        try:
            yield opened
        finally:
            await opened.close()


async def heard(presence: asyncio.Queue[tuple[str, bool]], change: tuple[str, bool]) -> None:
    """Returns once `change` is told (the changes before it are passed over)."""
    while True:
        if await asyncio.wait_for(presence.get(), 5) == change:
            return


async def refusal(call: Any) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


@dataclass
class World:
    address: str
    alice: Client
    bob: Client


@contextlib.asynccontextmanager
async def world_on(address: str, keys: Path) -> AsyncIterator[World]:
    async with (
        Client(address, username="alice", key_file=keys / "alice.json") as alice,
        Client(address, username="bob", key_file=keys / "bob.json") as bob,
    ):
        yield World(address, alice, bob)


@pytest.fixture
async def world(data_dir: Path, tmp_path: Path) -> AsyncIterator[World]:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (_, address):
        async with world_on(address, tmp_path) as opened:
            yield opened


async def test_the_stream_begins_with_a_welcome_naming_the_session(world: World) -> None:
    async with page(world.address, await world.alice.access_token()) as alice:
        assert alice.welcome.session_id.startswith("s")
        assert alice.welcome.user_id == world.alice.user_id
        assert alice.welcome.limits.max_rooms > 0
        assert (await alice.command(ping=gateway_pb2.PingCommand())).status.code == 0


async def test_a_pings_reply_comes_on_the_stream_too_and_no_other_commands_does(world: World) -> None:
    async with page(world.address, await world.alice.access_token()) as alice:
        first = await alice.command(ping=gateway_pb2.PingCommand())
        assert first.status.code == 0
        assert await alice.reply_on_stream(first.request_id) == first
        await alice.join("chat")
        assert (await alice.publish("chat", value({"text": "hi"}))).status.code == 0
        assert (await alice.publish("other", value({}))).status.reason == "NOT_IN_ROOM"
        # Sent once the others were answered: their replies, had they come on the stream, would come before.
        second = await alice.command(ping=gateway_pb2.PingCommand())
        assert await alice.reply_on_stream(second.request_id) == second
        assert alice.stream_reply_ids == [first.request_id, second.request_id]


async def test_a_join_is_answered_and_another_users_events_arrive_on_the_stream(world: World) -> None:
    async with page(world.address, await world.alice.access_token()) as alice:
        joined = await alice.join("chat")
        assert joined.join.room.room_id == "chat"
        chat = await world.bob.join("chat")
        presence = await alice.next_other("presence")
        assert (world.bob.user_id, True) in [(c.user_id, c.joined) for c in presence.presence.changes]
        published = await chat.trigger("message", {"text": "hi from Connect"})
        event = await alice.next_event()
        assert (event.room_id, event.sender, event.seq) == ("chat", world.bob.user_id, published.seq)
        assert payload_of(event) == {"text": "hi from Connect"}


async def test_a_publish_by_send_command_reaches_a_connect_client(world: World) -> None:
    chat = await world.bob.join("chat")
    async with page(world.address, await world.alice.access_token()) as alice:
        await alice.join("chat")
        reply = await alice.publish("chat", value({"text": "hi from the browser"}))
        assert reply.status.code == 0, reply.status
        event = await asyncio.wait_for(anext(chat.events()), 5)
        assert (event.sender, event.data, event.seq) == (
            world.alice.user_id,
            {"text": "hi from the browser"},
            reply.publish.seqs[0],
        )
        echo = await alice.next_event()
        assert echo.handle == reply.publish.handles[0]


async def test_a_refused_command_is_answered_in_the_reply_as_on_connect(world: World) -> None:
    nan = struct_pb2.Value(struct_value=struct_pb2.Struct(fields={"text": struct_pb2.Value(number_value=float("nan"))}))
    commands = [
        {"publish": publish_command("other", value({"text": "not joined"}))},
        {"publish": publish_command("chat", value({"text": 5}))},
        {"publish": publish_command("chat", nan)},
        {"leave": gateway_pb2.LeaveCommand(room_id="other")},
        {},
    ]
    token = await world.alice.access_token()
    async with page(world.address, token) as alice, stream(world.address, token) as connect:
        await alice.join("chat")
        await connect.join("chat")
        for command in commands:
            on_page = await alice.command(**command)
            on_stream = await connect.command(**command)
            assert on_page.status.code != 0
            assert on_page.status == on_stream.status
        not_joined = await alice.command(**commands[0])
        assert (not_joined.status.reason, not_joined.status.metadata["room_id"]) == ("NOT_IN_ROOM", "other")
        assert (await alice.command(**commands[2])).status.reason == "VALIDATION_FAILED"
        # The session goes on after refusals.
        assert (await alice.publish("chat", value({"text": "fine"}))).status.code == 0


async def test_only_the_device_that_opened_the_session_reaches_it(world: World) -> None:
    alice_token = await world.alice.access_token()
    async with page(world.address, alice_token) as alice, stream(world.address, alice_token) as connect:
        ping = alice.request(ping=gateway_pb2.PingCommand())
        error = await refusal(alice.send(ping, token=await world.bob.access_token()))
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")
        async with Client(world.address, identity=await world.alice.add_device("phone")) as phone:
            assert (
                error_reason(await refusal(alice.send(ping, token=await phone.access_token()))) == "SESSION_NOT_FOUND"
            )
        assert (await alice.send(ping)).status.code == 0
        assert connect.welcome is not None
        for session_id in ("s-no-such-session", connect.welcome.session_id):  # a Connect session takes no SendCommand
            ping.session_id = session_id
            assert error_reason(await refusal(alice.send(ping))) == "SESSION_NOT_FOUND"
        ping.session_id = ""
        assert error_reason(await refusal(alice.send(ping))) == "VALIDATION_FAILED"
        service = await refusal(
            alice.send(alice.request(ping=gateway_pb2.PingCommand()), f"svc:backend:{SERVICE_SECRET}")
        )
        assert (service.code(), error_reason(service)) == (grpc.StatusCode.PERMISSION_DENIED, "USER_ONLY")


async def test_subject_events_and_backend_questions_reach_the_page(world: World) -> None:
    async with (
        page(world.address, await world.alice.access_token()) as alice,
        page(world.address, await world.bob.access_token()) as bob,
        grpc.aio.insecure_channel(world.address) as channel,
    ):
        await alice.command(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject="scores:*"))
        sent = await bob.command(subject_publish=gateway_pb2.SubjectPublishCommand(subject="scores:1", data=value(7)))
        assert sent.status.code == 0, sent.status
        heard = (await alice.next_other("subject_events")).subject_events.events[0]
        assert (heard.subject, heard.sender, heard.data.number_value) == ("scores:1", world.bob.user_id, 7)
        backend: Any = gateway_pb2_grpc.GatewayServiceStub(channel)
        ask = gateway_pb2.AskClientRequest(session_id=alice.session_id, topic="confirm", data=value("sure?"))
        asking = asyncio.ensure_future(
            backend.AskClient(ask, metadata=bearer(f"svc:backend:{SERVICE_SECRET}"), timeout=5)
        )
        question = (await alice.next_other("question")).question
        answer = gateway_pb2.AnswerCommand(question_id=question.question_id, data=value({"yes": True}))
        assert (await alice.command(answer=answer)).status.code == 0
        answered = await asking
        assert (answered.session_id, answered.data) == (alice.session_id, value({"yes": True}))


async def test_bytes_that_are_no_request_are_refused(world: World) -> None:
    async with grpc.aio.insecure_channel(world.address) as channel:
        send = channel.unary_unary("/parley.gateway.v1.GatewayService/SendCommand", None, None)
        error = await refusal(send(b"\xff\xff\xff", metadata=bearer(await world.alice.access_token()), timeout=5))
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.INVALID_ARGUMENT, "MALFORMED_REQUEST")


async def test_the_session_ends_with_its_stream(world: World) -> None:
    chat = await world.bob.join("chat")
    presence: asyncio.Queue[tuple[str, bool]] = asyncio.Queue()
    chat.on_presence(lambda user, joined: presence.put_nowait((user, joined)))
    async with grpc.aio.insecure_channel(world.address) as channel:
        alice = await Page(channel, await world.alice.access_token()).open()
        await alice.join("chat")
        await heard(presence, (world.alice.user_id, True))
        await alice.close()  # the page goes away: its stream is cancelled
        await heard(presence, (world.alice.user_id, False))
        assert set(await chat.participants()) == {world.bob.user_id}
        error = await refusal(alice.command(ping=gateway_pb2.PingCommand()))
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.NOT_FOUND, "SESSION_NOT_FOUND")


async def test_a_new_session_resumes_a_room_from_the_last_event_seen(world: World) -> None:
    chat = await world.bob.join("chat")
    token = await world.alice.access_token()
    async with page(world.address, token) as first:
        await first.join("chat")
        await chat.trigger("message", {"text": "seen"})
        seen = await first.next_event()
    missed = [(await chat.trigger("message", {"text": f"missed {n}"})).seq for n in range(3)]
    async with page(world.address, token) as second:
        resumed = (await second.join("chat", since_seq=seen.seq, epoch=seen.epoch)).join
        assert resumed.recovered
        replayed: list[gateway_pb2.Event] = []
        while len(replayed) < len(missed):
            batch = (await second.next_other("history")).history
            assert batch.kind == gateway_pb2.HistoryBatch.KIND_REPLAY
            replayed.extend(batch.events)
        assert [e.seq for e in replayed] == missed
        assert payload_of(replayed[0]) == {"text": "missed 0"}


async def test_publishes_sent_one_after_another_keep_their_order(world: World) -> None:
    chat = await world.bob.join("chat")
    async with page(world.address, await world.alice.access_token()) as alice:
        await alice.join("chat")
        seqs = [(await alice.publish("chat", value({"text": str(n)}))).publish.seqs[0] for n in range(10)]
        assert seqs == sorted(seqs)
        events = chat.events()
        received = [await asyncio.wait_for(anext(events), 5) for _ in seqs]
        assert [(event.seq, event.data["text"]) for event in received] == [(seq, str(n)) for n, seq in enumerate(seqs)]


async def test_commands_sent_side_by_side_each_get_their_own_reply(world: World) -> None:
    """gRPC keeps no order between concurrent calls: each runs once, in the order it reached the
    session, and its caller gets the reply of its own command."""
    async with page(world.address, await world.alice.access_token()) as alice:
        await alice.join("chat")
        texts = [str(n) for n in range(40)]
        requests = [alice.request(publish=publish_command("chat", value({"text": text}))) for text in texts]
        for request in requests:
            request.command.request_id = "same-id-for-all"  # ids are the caller's business, not the session's
        replies = await asyncio.gather(*(alice.send(request) for request in requests))
        assert all(reply.status.code == 0 for reply in replies)
        seq_of = {text: reply.publish.seqs[0] for text, reply in zip(texts, replies, strict=True)}
        assert len(set(seq_of.values())) == len(texts)
        received = [await alice.next_event() for _ in texts]
        assert [event.seq for event in received] == sorted(seq_of.values())
        assert {payload_of(event)["text"]: event.seq for event in received} == seq_of


async def test_subscribe_and_connect_share_the_users_stream_limit(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.max_connections_per_user": 1})
    async with running(allinone.create_server, config) as (_, address), world_on(address, tmp_path) as world:
        token = await world.alice.access_token()
        async with stream(address, token), grpc.aio.insecure_channel(address) as channel:
            error = await refusal(Page(channel, token).open())
        assert (error.code(), error_reason(error)) == (grpc.StatusCode.RESOURCE_EXHAUSTED, "TOO_MANY_CONNECTIONS")
        async with page(address, token) as alice:
            assert alice.session_id


async def test_a_draining_gateway_tells_the_page_to_go_away(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.drain_reconnect_within_ms": 1234})
    async with running(allinone.create_server, config) as (server, address), world_on(address, tmp_path) as world:
        async with page(address, await world.alice.access_token()) as alice:
            await alice.join("chat")
            stopping = asyncio.create_task(server.stop(1))
            go_away = (await alice.next_other("go_away")).go_away
            await stopping
    assert (go_away.status.reason, go_away.reconnect_within_ms) == ("DRAINING", 1234)


@pytest.fixture
async def slow_joins(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[World, asyncio.Event]]:
    """A server whose joins of rooms named slow… wait for the event, and whose sessions run two commands at once."""
    hooks = HooksConfig(before_join="tests.hooks_for_tests:before_join")
    config = make_config(data_dir, rooms=ROOMS, hooks=hooks, **{"gateway.max_commands_in_flight": 2})
    hooks_for_tests.slow_joins = released = asyncio.Event()
    try:
        async with running(allinone.create_server, config) as (_, address), world_on(address, tmp_path) as opened:
            yield opened, released
    finally:
        released.set()
        hooks_for_tests.slow_joins = None


async def test_commands_past_the_sessions_limit_are_refused_until_some_are_answered(
    slow_joins: tuple[World, asyncio.Event],
) -> None:
    world, released = slow_joins
    async with page(world.address, await world.alice.access_token()) as alice:
        waiting = [asyncio.create_task(alice.command(join=gateway_pb2.JoinCommand(room_id=f"slow{n}"))) for n in (1, 2)]
        pings: list[gateway_pb2.Reply] = []

        async def refused() -> bool:  # pings are answered at once until both joins wait in the session
            pings.append(await alice.command(ping=gateway_pb2.PingCommand()))
            return pings[-1].status.code != 0

        await wait_until(refused)
        assert (pings[-1].status.code, pings[-1].status.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED.value[0],
            "RATE_LIMITED",
        )
        assert float(pings[-1].status.metadata["retry_after_seconds"]) > 0
        assert await alice.reply_on_stream(pings[-1].request_id) == pings[-1]  # a refused ping's too
        assert not any(task.done() for task in waiting)
        released.set()
        for reply in await asyncio.gather(*waiting):
            assert reply.status.reason == "ROOM_NOT_FOUND"  # the hook let them through; no such rooms
        assert (await alice.command(ping=gateway_pb2.PingCommand())).status.code == 0


# Split mode: the gateway in a process of its own, the services behind it.

SPLIT_ROOMS_TOML = """
[[rooms]]
id = "chat"

  [[rooms.events]]
  name = "*"
  history = { enabled = true }
"""
SPLIT_PEERS = ("identity", "history", "room", "file")


@pytest.fixture(scope="module")
def split_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """The address of a split-mode gateway, and a directory for key files."""
    tmp = tmp_path_factory.mktemp("browser-split")
    (tmp / "parley.toml").write_text(SPLIT_ROOMS_TOML)
    env = {"PARLEY_SERVER_GRACE_SECONDS": "1", "PARLEY_AUTH_SERVICE_CREDENTIALS": "parley=browser-split-secret"}
    processes: list[ServerProcess] = []

    def start(name: str) -> str:
        args = [name, "--port", "0", "--data-dir", str(tmp / "data" / name), "--config", str(tmp / "parley.toml")]
        processes.append(ServerProcess(args, dict(env), tmp / f"{name}.log"))
        return processes[-1].address

    try:
        for name in SPLIT_PEERS:  # identity first: the others fetch its token keys
            env[f"PARLEY_PEERS_{name.upper()}"] = start(name)
        yield start("gateway"), tmp
    finally:
        for process in reversed(processes):
            process.terminate()


async def test_the_browser_path_through_a_split_mode_gateway(split_gateway: tuple[str, Path]) -> None:
    address, keys = split_gateway
    async with world_on(address, keys) as world, page(address, await world.alice.access_token()) as alice:
        chat = await world.bob.join("chat")
        await alice.join("chat")
        published = await chat.trigger("message", {"text": "from Connect"})
        assert (await alice.next_event()).seq == published.seq
        reply = await alice.publish("chat", value({"text": "from the browser"}))
        assert reply.status.code == 0, reply.status
        events = chat.events()
        received = [await asyncio.wait_for(anext(events), 5) for _ in range(2)]  # bob's own echo, then alice's
        assert [(e.sender, e.seq) for e in received] == [
            (world.bob.user_id, published.seq),
            (world.alice.user_id, reply.publish.seqs[0]),
        ]
        assert received[1].data == {"text": "from the browser"}
        refused = await alice.publish("elsewhere", value({}))
        assert refused.status.reason == "NOT_IN_ROOM"
        ping = alice.request(ping=gateway_pb2.PingCommand())
        assert (
            error_reason(await refusal(alice.send(ping, token=await world.bob.access_token()))) == "SESSION_NOT_FOUND"
        )
