"""The backend API: service credentials only; publish, consume, and manage connections."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import payload_of, stream, value
from tests.support import SERVICE_SECRET, bearer, error_reason, make_config, running

SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")


@dataclass
class Backend:
    address: str
    gateway: gateway_pb2_grpc.GatewayServiceStub
    alice: Client


@pytest.fixture
async def backend(data_dir: Path, tmp_path: Path) -> AsyncIterator[Backend]:
    kept = RoomDefinition(id="kept", events=[EventDefinition(name="*", history=HistorySettings(enabled=True))])
    config = make_config(data_dir, rooms=[RoomDefinition(id="news", events=[]), RoomDefinition(id="lobby"), kept])
    async with running(allinone.create_server, config) as (_, address):
        async with Client(address, username="alice", key_file=tmp_path / "a.json") as alice:
            async with grpc.aio.insecure_channel(address) as channel:
                yield Backend(address, gateway_pb2_grpc.GatewayServiceStub(channel), alice)


def outgoing(event: str, data: object) -> gateway_pb2.OutgoingEvent:
    return gateway_pb2.OutgoingEvent(event=event, payload=value(data))


async def test_publish_as_system_or_named_sender_into_a_read_only_room(backend: Backend) -> None:
    async with stream(backend.address, await backend.alice.access_token()) as alice:
        await alice.join("news")
        published = await backend.gateway.PublishToRoom(
            gateway_pb2.PublishToRoomRequest(room_id="news", events=[outgoing("headline", {"t": "rain"})]),
            metadata=SERVICE,
        )
        assert published.recipients == 1
        event = await alice.next_event()
        assert (event.sender, event.event, payload_of(event)) == ("system", "headline", {"t": "rain"})
        await backend.gateway.PublishToRoom(
            gateway_pb2.PublishToRoomRequest(room_id="news", events=[outgoing("headline", 1)], sender="weather-bot"),
            metadata=SERVICE,
        )
        assert (await alice.next_event()).sender == "weather-bot"


async def test_subscribe_to_a_rooms_events(backend: Backend) -> None:
    feed = backend.gateway.SubscribeRoom(gateway_pb2.SubscribeRoomRequest(room_id="lobby"), metadata=SERVICE)
    async with stream(backend.address, await backend.alice.access_token()) as alice:
        await alice.join("lobby")
        await asyncio.sleep(0.1)  # the subscription is in place
        await alice.publish("lobby", "message", {"n": 1})
        await alice.publish("lobby", "message", {"n": 2})
        seen: list[object] = []
        while len(seen) < 2:
            batch = await asyncio.wait_for(feed.read(), 3)
            seen += [payload_of(e) for e in batch.events]
    feed.cancel()
    assert seen == [{"n": 1}, {"n": 2}]


async def test_a_room_feed_carries_events_and_changes_in_order(backend: Backend) -> None:
    feed = backend.gateway.SubscribeRoom(gateway_pb2.SubscribeRoomRequest(room_id="kept"), metadata=SERVICE)
    room = await backend.alice.join("kept")
    await asyncio.sleep(0.1)  # the subscription is in place
    first = await room.trigger("message", {"n": 1})
    edited = await room.edit(first.handle, {"n": 1, "edited": True})
    await room.send_ephemeral("typing")
    second = await room.trigger("message", {"n": 2})
    gone = await room.delete(second.handle)
    seen: list[tuple[str, int, object]] = []
    while len(seen) < 4:
        response = await asyncio.wait_for(feed.read(), 3)
        seen += [("event", e.seq, payload_of(e)) for e in response.events]
        seen += [("change", c.change_seq, c.kind) for c in response.changes]
    feed.cancel()
    # No signals, no frames posing as events; the log's order.
    assert seen == [
        ("event", first.seq, {"n": 1}),
        ("change", edited.change_seq, gateway_pb2.EventChanged.KIND_EDITED),
        ("event", second.seq, {"n": 2}),
        ("change", gone.change_seq, gateway_pb2.EventChanged.KIND_DELETED),
    ]


async def test_connections_rooms_and_presence_queries(backend: Backend) -> None:
    user = backend.alice.user_id
    async with stream(backend.address, await backend.alice.access_token()) as alice:
        await alice.join("lobby")
        assert alice.welcome is not None
        connections = await backend.gateway.ListConnections(
            gateway_pb2.ListConnectionsRequest(user_id=user), metadata=SERVICE
        )
        (connection,) = connections.connections
        assert (connection.session_id, list(connection.room_ids)) == (alice.welcome.session_id, ["lobby"])
        online = await backend.gateway.ListOnlineUsers(gateway_pb2.ListOnlineUsersRequest(), metadata=SERVICE)
        assert list(online.user_ids) == [user]
        rooms = await backend.gateway.ListUserRooms(gateway_pb2.ListUserRoomsRequest(user_id=user), metadata=SERVICE)
        assert list(rooms.room_ids) == ["lobby"]
        inside = await backend.gateway.IsInRoom(
            gateway_pb2.IsInRoomRequest(user_id=user, room_id="lobby"), metadata=SERVICE
        )
        outside = await backend.gateway.IsInRoom(
            gateway_pb2.IsInRoomRequest(user_id=user, room_id="news"), metadata=SERVICE
        )
        assert (inside.in_room, outside.in_room) == (True, False)


async def test_remove_a_user_from_every_room(backend: Backend) -> None:
    user = backend.alice.user_id
    async with stream(backend.address, await backend.alice.access_token()) as alice:
        await alice.join("lobby")
        await alice.next_other("presence")  # her own join
        removed = await backend.gateway.RemoveUserFromRooms(
            gateway_pb2.RemoveUserFromRoomsRequest(user_id=user), metadata=SERVICE
        )
        assert list(removed.room_ids) == ["lobby"]
        told = await alice.next_other("presence")
        assert told.presence.room_id == "lobby"
        assert [change.joined for change in told.presence.changes] == [False]
        assert (await alice.publish("lobby", "message", {})).status.reason == "NOT_IN_ROOM"


async def test_send_to_one_connection(backend: Backend) -> None:
    async with stream(backend.address, await backend.alice.access_token()) as alice:
        assert alice.welcome is not None
        await backend.gateway.SendToConnection(
            gateway_pb2.SendToConnectionRequest(
                session_id=alice.welcome.session_id, data=value({"hi": 1}), sender="ops"
            ),
            metadata=SERVICE,
        )
        direct = await alice.next_other("direct_message")
        assert direct.direct_message.sender == "ops"
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await backend.gateway.SendToConnection(
                gateway_pb2.SendToConnectionRequest(session_id="nope", data=value(1)), metadata=SERVICE
            )
        assert error_reason(missing.value) == "SESSION_NOT_FOUND"


async def test_a_backend_edits_and_deletes_as_the_sender_or_on_its_own_authority(backend: Backend) -> None:
    async with stream(backend.address, await backend.alice.access_token()) as alice:
        await alice.join("kept")
        first, second = [(await alice.publish("kept", "message", {"n": n})).publish for n in (1, 2)]
        await alice.next_event()
        await alice.next_event()
        as_alice = await backend.gateway.EditRoomEvent(
            gateway_pb2.EditRoomEventRequest(
                room_id="kept", handle=first.handles[0], payload=value({"n": 10}), as_user=backend.alice.user_id
            ),
            metadata=SERVICE,
        )
        live = (await alice.next_other("event_changed")).event_changed
        assert live == as_alice.change
        assert (live.kind, live.seq, payload_of(live)) == (
            gateway_pb2.EventChanged.KIND_EDITED,
            first.seqs[0],
            {"n": 10},
        )
        moderated = await backend.gateway.DeleteRoomEvent(
            gateway_pb2.DeleteRoomEventRequest(room_id="kept", handle=second.handles[0]), metadata=SERVICE
        )
        live = (await alice.next_other("event_changed")).event_changed
        assert (live.kind, live.handle, live.change_seq) == (
            gateway_pb2.EventChanged.KIND_DELETED,
            second.handles[0],
            moderated.change.change_seq,
        )
    log = await backend.alice.history("kept")
    assert [(e.seq, e.deleted, e.data) for e in log] == [
        (second.seqs[0], True, None),
        (first.seqs[0], False, {"n": 10}),
    ]
    for call, reason in [
        (
            backend.gateway.EditRoomEvent(
                gateway_pb2.EditRoomEventRequest(
                    room_id="kept", handle=first.handles[0], payload=value(1), as_user="someone-else"
                ),
                metadata=SERVICE,
            ),
            "NOT_AUTHOR",
        ),
        (
            backend.gateway.DeleteRoomEvent(
                gateway_pb2.DeleteRoomEventRequest(room_id="kept", handle=second.handles[0]), metadata=SERVICE
            ),
            "EVENT_NOT_FOUND",  # already deleted
        ),
        (
            backend.gateway.DeleteRoomEvent(
                gateway_pb2.DeleteRoomEventRequest(room_id="nowhere", handle="h"), metadata=SERVICE
            ),
            "ROOM_NOT_FOUND",
        ),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert error_reason(refused.value) == reason


async def test_a_user_token_is_refused(backend: Backend) -> None:
    user_token = bearer(await backend.alice.access_token())
    calls = [
        backend.gateway.PublishToRoom(gateway_pb2.PublishToRoomRequest(room_id="news"), metadata=user_token),
        backend.gateway.ListConnections(gateway_pb2.ListConnectionsRequest(), metadata=user_token),
        backend.gateway.ListOnlineUsers(gateway_pb2.ListOnlineUsersRequest(), metadata=user_token),
        backend.gateway.RemoveUserFromRooms(gateway_pb2.RemoveUserFromRoomsRequest(user_id="x"), metadata=user_token),
        backend.gateway.SendToConnection(gateway_pb2.SendToConnectionRequest(session_id="x"), metadata=user_token),
        backend.gateway.EditRoomEvent(gateway_pb2.EditRoomEventRequest(room_id="kept"), metadata=user_token),
        backend.gateway.DeleteRoomEvent(gateway_pb2.DeleteRoomEventRequest(room_id="kept"), metadata=user_token),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(refused.value) == "SERVICE_ONLY"
