"""The Connect stream, rule by rule, against a real all-in-one server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.room.v1 import room_pb2, room_pb2_grpc
from services import allinone
from services.gateway.room_client import InProcessRoomClient
from services.runtime.config import EventDefinition, RoomDefinition
from tests.streams import Stream, changes_of, payload_of, stream, value
from tests.support import bearer, make_config, running

MESSAGE_SCHEMA = {
    "type": "object",
    "required": ["text"],
    "properties": {"text": {"type": "string", "maxLength": 200}, "mood": {"enum": ["happy", "sad"]}},
    "additionalProperties": False,
}
ROOMS = [
    RoomDefinition(
        id="chat",
        events=[EventDefinition(name="message", schema=MESSAGE_SCHEMA), EventDefinition(name="typing")],
    ),
    RoomDefinition(id="news", events=[]),
    RoomDefinition(id="game", max_size=2),
    RoomDefinition(id="anything"),
    RoomDefinition(
        id="quiet",
        events=[EventDefinition(name="message"), EventDefinition(name="typing")],
        default_subscriptions=["message"],
    ),
]


@dataclass
class World:
    address: str
    alice: Client
    bob: Client
    tmp: Path

    async def token(self, client: Client) -> str:
        return await client.access_token()


@pytest.fixture
async def world(data_dir: Path, tmp_path: Path) -> AsyncIterator[World]:
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.max_payload_bytes": 2048})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="alice", key_file=tmp_path / "a.json") as alice:
            async with Client(address, username="bob", key_file=tmp_path / "b.json") as bob:
                yield World(address, alice, bob, tmp_path)


async def test_welcome_says_session_and_user(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        assert alice.welcome is not None
        assert alice.welcome.user_id == world.alice.user_id
        assert alice.welcome.session_id.startswith("s")
        assert alice.welcome.limits.max_payload_bytes == 2048


async def test_events_reach_subscribers_in_the_envelope(world: World) -> None:
    async with (
        stream(world.address, await world.token(world.alice)) as alice,
        stream(world.address, await world.token(world.bob)) as bob,
    ):
        await alice.join("chat")
        await bob.join("chat")
        reply = await alice.publish(
            "chat",
            "message",
            {"text": "hi"},
        )
        assert reply.status.code == 0
        event = await bob.next_event()
        assert (event.room_id, event.event, event.sender) == ("chat", "message", world.alice.user_id)
        assert payload_of(event) == {"text": "hi"}
        assert event.seq == reply.publish.seqs[0]
        assert event.handle == reply.publish.handles[0]
        assert event.time_ms > 0
        assert reply.publish.recipients == 2  # bob and alice's own echo
        assert (await alice.next_event()).handle == event.handle


async def test_schema_failure_names_the_field(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        await alice.join("chat")
        reply = await alice.publish("chat", "message", {"text": 5})
        assert reply.status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
        assert reply.status.reason == "VALIDATION_FAILED"
        assert reply.status.metadata["field"] == "payload.text"
        assert reply.status.message.startswith("payload.text:")
        missing = await alice.publish("chat", "message", {"mood": "happy"})
        assert missing.status.metadata["field"] == "payload"
        assert "text" in missing.status.message
        # The stream goes on after a failed command.
        assert (await alice.publish("chat", "message", {"text": "fine"})).status.code == 0


async def test_unlisted_event_and_read_only_room(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        await alice.join("chat")
        unlisted = await alice.publish("chat", "dance", {})
        assert unlisted.status.reason == "EVENT_NOT_ALLOWED"
        await alice.join("news")
        read_only = await alice.publish("news", "anything", {})
        assert read_only.status.reason == "EVENT_NOT_ALLOWED"
        assert "read-only" in read_only.status.message


async def test_wildcard_room_takes_any_event(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        await alice.join("anything")
        for name in ("a", "b.c", "x:y"):
            assert (await alice.publish("anything", name, [1, 2])).status.code == 0
            assert (await alice.next_event()).event == name


async def test_room_full(world: World, tmp_path: Path) -> None:
    async with Client(world.address, username="carol", key_file=tmp_path / "c.json") as carol:
        async with (
            stream(world.address, await world.token(world.alice)) as a,
            stream(world.address, await world.token(world.bob)) as b,
            stream(world.address, await carol.access_token()) as c,
        ):
            await a.join("game")
            await b.join("game")
            full = await c.command(join=gateway_pb2.JoinCommand(room_id="game"))
            assert full.status.reason == "ROOM_FULL"
            assert full.status.code == grpc.StatusCode.FAILED_PRECONDITION.value[0]
            missing = await c.command(join=gateway_pb2.JoinCommand(room_id="nowhere"))
            assert missing.status.reason == "ROOM_NOT_FOUND"


async def test_default_subscriptions_and_unsubscribe(world: World) -> None:
    async with (
        stream(world.address, await world.token(world.alice)) as alice,
        stream(world.address, await world.token(world.bob)) as bob,
    ):
        joined = await bob.join("quiet")
        assert list(joined.join.subscriptions) == ["message"]
        await alice.join("quiet")
        await alice.publish("quiet", "typing", {})
        await alice.publish("quiet", "message", {"n": 1})
        assert (await bob.next_event()).event == "message"  # typing was not delivered
        more = await bob.ok(subscribe=gateway_pb2.SubscribeCommand(room_id="quiet", events=["typing"]))
        assert list(more.subscription.subscriptions) == ["message", "typing"]
        await alice.publish("quiet", "typing", {})
        assert (await bob.next_event()).event == "typing"
        await bob.ok(unsubscribe=gateway_pb2.UnsubscribeCommand(room_id="quiet", events=["message", "typing"]))
        await alice.publish("quiet", "message", {"n": 2})
        await bob.no_event()
        everything = await bob.ok(subscribe=gateway_pb2.SubscribeCommand(room_id="quiet", all=True))
        assert list(everything.subscription.subscriptions) == ["*"]
        but_typing = await bob.ok(unsubscribe=gateway_pb2.UnsubscribeCommand(room_id="quiet", events=["typing"]))
        assert list(but_typing.subscription.subscriptions) == ["*", "-typing"]
        await alice.publish("quiet", "typing", {})
        await alice.publish("quiet", "message", {"n": 3})
        assert payload_of(await bob.next_event()) == {"n": 3}


async def test_publish_without_joining_is_refused(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        reply = await alice.publish("chat", "message", {"text": "x"})
        assert reply.status.reason == "NOT_IN_ROOM"


async def test_echo_suppression(world: World) -> None:
    async with (
        stream(world.address, await world.token(world.alice)) as alice,
        stream(world.address, await world.token(world.bob)) as bob,
    ):
        await alice.join("anything")
        await bob.join("anything")
        reply = await alice.publish("anything", "ping", {}, no_echo=True)
        assert reply.publish.recipients == 1
        assert (await bob.next_event()).event == "ping"
        await alice.no_event()


async def test_presence_join_and_leave(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        await alice.join("anything")
        assert changes_of(await alice.next_other("presence")) == [(world.alice.user_id, True)]
        async with stream(world.address, await world.token(world.bob)) as bob:
            await bob.join("anything")
            joined = await alice.next_other("presence")
            assert changes_of(joined) == [(world.bob.user_id, True)]
            await bob.ok(leave=gateway_pb2.LeaveCommand(room_id="anything"))
            left = await alice.next_other("presence")
            assert changes_of(left) == [(world.bob.user_id, False)]
            await bob.join("anything")
            await alice.next_other("presence")
        # Bob's stream closed: the room hears he is gone.
        gone = await alice.next_other("presence")
        assert changes_of(gone) == [(world.bob.user_id, False)]


async def test_a_stream_cancelled_while_it_ends_still_leaves_its_rooms(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    leaving = asyncio.Event()
    leave = InProcessRoomClient.leave

    async def slow_leave(self: InProcessRoomClient, room_id: str, user_id: str, session_id: str) -> list[str]:
        leaving.set()
        await asyncio.sleep(0.2)
        return await leave(self, room_id, user_id, session_id)

    monkeypatch.setattr(InProcessRoomClient, "leave", slow_leave)
    async with stream(world.address, await world.token(world.alice)) as alice:
        await alice.join("anything")
        await alice.next_other("presence")
        async with grpc.aio.insecure_channel(world.address) as channel:
            bob = await Stream(channel, await world.token(world.bob)).open()
            await bob.join("anything")
            await alice.next_other("presence")
            bob.half_close()  # the server ends bob's stream and starts leaving his rooms...
            await asyncio.wait_for(leaving.wait(), 5)
            bob.call.cancel()  # ...when the cancel of the same stream arrives
        gone = await alice.next_other("presence")
        assert changes_of(gone) == [(world.bob.user_id, False)]


async def test_payload_limit(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        await alice.join("anything")
        reply = await alice.publish("anything", "big", {"blob": "x" * 4000})
        assert reply.status.reason == "PAYLOAD_TOO_LARGE"
        assert reply.status.code == grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]


async def test_rate_limit(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.events_per_window": 3, "gateway.window_seconds": 60})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="dan", key_file=tmp_path / "d.json") as dan:
            async with stream(address, await dan.access_token()) as s:
                await s.join("anything")
                codes = [(await s.publish("anything", "e", {})).status.reason for _ in range(5)]
    assert codes == ["", "", "", "RATE_LIMITED", "RATE_LIMITED"]


async def test_room_created_and_deleted_are_broadcast(world: World) -> None:
    async with (
        stream(world.address, await world.token(world.alice)) as alice,
        stream(world.address, await world.token(world.bob)) as bob,
        grpc.aio.insecure_channel(world.address) as channel,
    ):
        rooms = room_pb2_grpc.RoomServiceStub(channel)
        token = bearer(await world.token(world.alice))
        await asyncio.sleep(0.2)  # the gateway's room watch is up
        await rooms.CreateRoom(room_pb2.CreateRoomRequest(room_id="pop-up"), metadata=token)
        created = await bob.next_other("room_changed")
        assert created.room_changed.change.kind == room_pb2.RoomChange.KIND_CREATED
        assert created.room_changed.change.room.creator == world.alice.user_id
        await bob.join("pop-up")
        await rooms.DeleteRoom(room_pb2.DeleteRoomRequest(room_id="pop-up"), metadata=token)
        deleted = await bob.next_other("room_changed")
        assert deleted.room_changed.change.kind == room_pb2.RoomChange.KIND_DELETED
        assert (await alice.next_other("room_changed")).room_changed.change.room.room_id == "pop-up"
        # Bob was taken out of the deleted room.
        assert (await bob.publish("pop-up", "x", {})).status.reason == "NOT_IN_ROOM"


async def test_subjects_with_wildcards(world: World) -> None:
    async with (
        stream(world.address, await world.token(world.alice)) as alice,
        stream(world.address, await world.token(world.bob)) as bob,
    ):
        await bob.ok(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject="presence:*"))
        await alice.ok(
            subject_publish=gateway_pb2.SubjectPublishCommand(subject="presence:lobby", data=value({"n": 1}))
        )
        await alice.ok(subject_publish=gateway_pb2.SubjectPublishCommand(subject="cursor:lobby", data=value(2)))
        got = await asyncio.wait_for(bob.subject_events.get(), 3)
        assert (got.subject, got.sender) == ("presence:lobby", world.alice.user_id)
        await bob.ok(subject_unsubscribe=gateway_pb2.SubjectUnsubscribeCommand(subject="presence:*"))
        await alice.ok(subject_publish=gateway_pb2.SubjectPublishCommand(subject="presence:lobby", data=value(3)))
        await asyncio.sleep(0.2)
        assert bob.subject_events.empty()


async def test_user_subjects_belong_to_their_user(world: World) -> None:
    async with (
        stream(world.address, await world.token(world.alice)) as alice,
        stream(world.address, await world.token(world.bob)) as bob,
    ):
        refused = await alice.command(
            subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject=f"user:{world.bob.user_id}")
        )
        assert refused.status.reason == "NOT_OWNER"
        await bob.ok(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject=f"user:{world.bob.user_id}"))
        await alice.ok(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject="user:*"))
        await alice.ok(
            subject_publish=gateway_pb2.SubjectPublishCommand(subject=f"user:{world.bob.user_id}", data=value("psst"))
        )
        assert (await asyncio.wait_for(bob.subject_events.get(), 3)).data.string_value == "psst"
        await asyncio.sleep(0.2)
        assert alice.subject_events.empty()  # the wildcard never shows another user's subject


async def test_a_command_without_request_id_ends_the_stream(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        alice.send_raw(gateway_pb2.ConnectRequest(ping=gateway_pb2.PingCommand()))
        go_away = await alice.next_other("go_away")
        assert go_away.go_away.status.reason == "PROTOCOL_VIOLATION"
        assert go_away.go_away.status.message.startswith("request_id:")
        error = await asyncio.wait_for(alice.ended, 5)
        assert error is not None
        assert error.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_connect_needs_a_user_token(world: World) -> None:
    async with grpc.aio.insecure_channel(world.address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await Stream(channel, "not-a-token").open()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_ping(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        assert (await alice.command(ping=gateway_pb2.PingCommand())).status.code == 0


async def test_rooms_per_connection_limit(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.max_rooms_per_connection": 2})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="eve", key_file=tmp_path / "e.json") as eve:
            async with stream(address, await eve.access_token()) as s:
                await s.join("chat")
                await s.join("anything")
                third = await s.command(join=gateway_pb2.JoinCommand(room_id="news"))
                assert third.status.reason == "TOO_MANY_ROOMS"
                await s.ok(leave=gateway_pb2.LeaveCommand(room_id="chat"))
                await s.join("news")


async def test_event_names_are_checked_and_counted(world: World) -> None:
    async with stream(world.address, await world.token(world.alice)) as alice:
        await alice.join("anything")
        for bad in ("x" * 65, "-typing", "*", ""):
            reply = await alice.publish("anything", bad, {})
            assert reply.status.reason == "VALIDATION_FAILED", bad
            assert reply.status.metadata["field"] == "event"


async def test_a_batch_larger_than_the_rate_window_is_invalid(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.events_per_window": 3})
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="bea", key_file=tmp_path / "b.json") as bea:
            async with stream(address, await bea.access_token()) as s:
                await s.join("anything")
                events = [gateway_pb2.OutgoingEvent(event="e", payload=value(1))] * 4
                reply = await s.command(publish=gateway_pb2.PublishCommand(room_id="anything", events=events))
                assert reply.status.reason == "VALIDATION_FAILED"


async def test_membership_is_released_when_a_stream_ends(world: World, tmp_path: Path) -> None:
    async with Client(world.address, username="carl", key_file=tmp_path / "c.json") as carl:
        async with (
            stream(world.address, await world.token(world.alice)) as a,
            stream(world.address, await world.token(world.bob)) as b,
        ):
            await a.join("game")
            await b.join("game")
        # Both streams ended: the room service forgot them, and the slots are free again.
        async with grpc.aio.insecure_channel(world.address) as channel:
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            token = bearer(await carl.access_token())
            for _ in range(50):
                people = await rooms.ListParticipants(room_pb2.ListParticipantsRequest(room_id="game"), metadata=token)
                if not people.participants:
                    break
                await asyncio.sleep(0.05)
            assert list(people.participants) == []
        async with stream(world.address, await carl.access_token()) as c:
            await c.join("game")
