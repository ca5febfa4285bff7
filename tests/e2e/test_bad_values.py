"""Values a request cannot mean (unknown enums, integers past 2^63, NaN, JSON nested past the limit)
get INVALID_ARGUMENT / VALIDATION_FAILED naming the field: never INTERNAL, never a dead stream."""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2

from parley import Client, ValidationError
from parley.errors import ParleyError, error_from_rpc, error_from_status
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.hooks import PublishContext, Transform
from parley.room.v1 import room_pb2, room_pb2_grpc
from parley.rooms import EventChange, RoomEvent, Signal
from parley.values import to_value
from services import allinone
from services.runtime import request_checks
from services.runtime.config import EventDefinition, HistorySettings, HooksConfig, RoomDefinition
from services.runtime.request_checks import MAX_JSON_DEPTH, MAX_REQUEST_VALUES
from tests.streams import Stream, stream
from tests.support import SERVICE_SECRET, bearer, grpcurl_command, make_config, running, wait_until

SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")
KEPT = HistorySettings(enabled=True)
SCORE_SCHEMA = {"type": "object", "properties": {"n": {"type": "number"}}}
ROOMS = [
    RoomDefinition(id="kept", events=[EventDefinition(name="*", history=KEPT)], sync_history_on_join=True),
    RoomDefinition(id="typed", events=[EventDefinition(name="score", schema=SCORE_SCHEMA, history=KEPT)]),
]
NON_FINITE = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
INVALID_ARGUMENT = grpc.StatusCode.INVALID_ARGUMENT.value[0]


def nested(levels: int, kind: str = "object") -> Any:
    """JSON with `levels` objects (or arrays) inside each other around a number."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value} if kind == "object" else [value]
    return value


TOO_DEEP = f"nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"
HOOK_RESULTS = {
    "nan": Transform(payload={"x": math.nan}),
    "deep": Transform(payload=nested(MAX_JSON_DEPTH + 1)),
    "junk": Transform(payload={1, 2}),
    "meta": Transform(payload=1, meta={"m": math.inf}),
}


def screen(context: PublishContext) -> Transform | None:
    """The before_publish hook of these tests: payloads {"hook": name} become HOOK_RESULTS[name]."""
    if isinstance(context.payload, dict) and "hook" in context.payload:
        return HOOK_RESULTS[context.payload["hook"]]
    return None


@dataclass
class Server:
    address: str
    alice: Client
    channel: grpc.aio.Channel

    @property
    def gateway(self) -> gateway_pb2_grpc.GatewayServiceAsyncStub:
        return gateway_pb2_grpc.GatewayServiceStub(self.channel)

    @property
    def history(self) -> history_pb2_grpc.HistoryServiceAsyncStub:
        return history_pb2_grpc.HistoryServiceStub(self.channel)

    @property
    def rooms(self) -> room_pb2_grpc.RoomServiceAsyncStub:
        return room_pb2_grpc.RoomServiceStub(self.channel)

    async def stored(self, room_id: str) -> list[Any]:
        page = await self.history.ListEvents(history_pb2.ListEventsRequest(room_id=room_id), metadata=SERVICE)
        return [to_json(e.payload) for e in reversed(page.events)]


@pytest.fixture
async def server(data_dir: Path, tmp_path: Path) -> AsyncIterator[Server]:
    hooks = HooksConfig(before_publish=f"{__name__}:screen")
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS, hooks=hooks)) as (_, address):
        async with Client(address, username="alice", key_file=tmp_path / "alice.json") as alice:
            async with grpc.aio.insecure_channel(address) as channel:
                yield Server(address, alice, channel)


def to_json(value: struct_pb2.Value) -> Any:
    return json_format.MessageToDict(value)


def struct(data: dict[str, Any]) -> struct_pb2.Struct:
    made = struct_pb2.Struct()
    made.update(data)
    return made


async def refused(call: Awaitable[Any]) -> ValidationError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return validation_error(error_from_rpc(caught.value))


def refused_in_stream(reply: gateway_pb2.Reply) -> ValidationError:
    assert reply.status.code == INVALID_ARGUMENT, reply.status
    return validation_error(error_from_status(reply.status))


def validation_error(error: ParleyError) -> ValidationError:
    assert isinstance(error, ValidationError), error
    assert (error.code, error.reason) == (grpc.StatusCode.INVALID_ARGUMENT, "VALIDATION_FAILED"), error
    return error


async def assert_stream_lives(s: Stream) -> None:
    await s.ok(ping=gateway_pb2.PingCommand())
    assert not s.ended.done()


# Enums


async def test_an_enum_value_its_enum_does_not_define_is_refused(server: Server) -> None:
    token = await server.alice.access_token()
    command = grpcurl_command(
        server.address,
        "parley.room.v1.RoomService/CreateRoom",
        data={"room_id": "nowhere", "visibility": 99},
        headers={"authorization": f"Bearer {token}"},
    )
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode != 0, out
    assert "Code: InvalidArgument" in err.decode()
    assert "visibility: 99 is not a RoomVisibility value" in err.decode()
    request = room_pb2.CreateRoomRequest(room_id="nowhere", visibility=7)  # type: ignore[arg-type]
    error = await refused(server.rooms.CreateRoom(request, metadata=bearer(token)))
    assert error.metadata["field"] == "visibility"
    missing = await server.rooms.ListRooms(room_pb2.ListRoomsRequest(), metadata=bearer(token))
    assert "nowhere" not in [room.room_id for room in missing.rooms]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await server.rooms.GetRoom(room_pb2.GetRoomRequest(room_id="nowhere"), metadata=bearer(token))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


# 64-bit integers


async def test_integers_the_store_cannot_hold_are_refused_and_the_stream_goes_on(server: Server) -> None:
    token = await server.alice.access_token()
    async with stream(server.address, token) as s:
        reply = await s.command(join=gateway_pb2.JoinCommand(room_id="kept", since_seq=2**64 - 1))
        assert refused_in_stream(reply).message == "join.since_seq: must be below 2^63"
        await assert_stream_lives(s)
        largest = await s.ok(join=gateway_pb2.JoinCommand(room_id="kept", since_seq=2**63 - 1, resume=True))
        assert not largest.join.recovered
    user = bearer(token)
    error = await refused(
        server.history.ListEventsSince(
            history_pb2.ListEventsSinceRequest(room_id="kept", after_seq=2**63), metadata=user
        )
    )
    assert error.metadata["field"] == "after_seq"
    await server.history.ListEventsSince(
        history_pb2.ListEventsSinceRequest(room_id="kept", after_seq=2**63 - 1), metadata=user
    )
    error = await refused(
        server.history.ListEvents(history_pb2.ListEventsRequest(room_id="kept", before_seq=2**64 - 1), metadata=user)
    )
    assert error.metadata["field"] == "before_seq"
    await server.history.ListEvents(history_pb2.ListEventsRequest(room_id="kept", before_seq=2**63 - 1), metadata=user)
    retention = history_pb2.RoomRetention(room_id="kept", other=history_pb2.EventRetention(keep_seconds=2**63))
    error = await refused(
        server.history.SetRetention(history_pb2.SetRetentionRequest(rooms=[retention]), metadata=SERVICE)
    )
    assert error.metadata["field"] == "rooms[0].other.keep_seconds"
    # Signed integers at their extremes are stored as they are.
    oldest = history_pb2.NewEvent(event="note", handle="h-old", time_ms=-(2**63), payload=to_value("old"))
    await server.history.AppendEvents(
        history_pb2.AppendEventsRequest(room_id="kept", events=[oldest]), metadata=SERVICE
    )
    assert await server.stored("kept") == ["old"]


# JSON a frame can carry: finite numbers, a kind on every value, MAX_JSON_DEPTH


def outgoing(data: Any, meta: dict[str, Any] | None = None, event: str = "note") -> gateway_pb2.OutgoingEvent:
    return gateway_pb2.OutgoingEvent(event=event, payload=to_value(data), meta=struct(meta or {}))


def stream_commands(handle: str, bad: Any) -> list[tuple[dict[str, Any], str, str]]:
    """Commands carrying `bad` one step inside a JSON field: (command, that field, the step)."""
    return [
        (
            {"publish": gateway_pb2.PublishCommand(room_id="kept", events=[outgoing({"x": bad})])},
            "publish.events[0].payload",
            ".x",
        ),
        (
            {"publish": gateway_pb2.PublishCommand(room_id="typed", events=[outgoing({"n": bad}, event="score")])},
            "publish.events[0].payload",
            ".n",
        ),
        (
            {"publish": gateway_pb2.PublishCommand(room_id="kept", events=[outgoing(1, {"m": bad})])},
            "publish.events[0].meta",
            ".m",
        ),
        (
            {"edit": gateway_pb2.EditCommand(room_id="kept", handle=handle, payload=to_value([bad]))},
            "edit.payload",
            "[0]",
        ),
        (
            {"ephemeral": gateway_pb2.EphemeralCommand(room_id="kept", subject="cursor", data=to_value({"x": bad}))},
            "ephemeral.data",
            ".x",
        ),
        (
            {"subject_publish": gateway_pb2.SubjectPublishCommand(subject="dots", data=to_value({"x": bad}))},
            "subject_publish.data",
            ".x",
        ),
    ]


async def test_stream_commands_carrying_what_json_cannot_are_answered_and_the_stream_goes_on(
    server: Server, tmp_path: Path
) -> None:
    async with (
        Client(server.address, username="bob", key_file=tmp_path / "bob.json") as bob,
        stream(server.address, await server.alice.access_token()) as s,
        stream(server.address, await bob.access_token()) as watcher,
    ):
        await s.join("kept")
        await s.join("typed")
        handle = (await s.publish("kept", "note", {"ok": 1})).publish.handles[0]
        await watcher.join("kept")
        await watcher.ok(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject="dots"))
        for name, number in NON_FINITE.items():
            for command, field, step in stream_commands(handle, number):
                error = refused_in_stream(await s.command(**command))
                message = f"{field}{step}: {name} is not a JSON number (JSON numbers are finite)"
                assert (error.field, error.message) == (f"{field}{step}", message)
        for command, field, _ in stream_commands(handle, nested(MAX_JSON_DEPTH)):
            error = refused_in_stream(await s.command(**command))
            assert (error.field, error.message) == (field, f"{field}: {TOO_DEEP}")
        odd_null = to_value({"k": None})
        odd_null.struct_value.fields["k"].null_value = 5  # type: ignore[assignment]
        no_kind = to_value({"k": 1})
        no_kind.struct_value.fields["k"].Clear()
        for payload, why in (
            (odd_null, "5 is not a NullValue value"),
            (no_kind, "has no value (JSON null is null_value)"),
        ):
            event = gateway_pb2.OutgoingEvent(event="note", payload=payload)
            reply = await s.command(publish=gateway_pb2.PublishCommand(room_id="kept", events=[event]))
            assert refused_in_stream(reply).message == f"publish.events[0].payload.k: {why}"
        await assert_stream_lives(s)
        await assert_stream_lives(watcher)
        # The watcher got the room's history on join, and nothing since.
        assert (await watcher.next_other("history")).history.events[0].handle == handle
        assert (watcher.events.qsize(), watcher.subject_events.qsize()) == (0, 0)
        assert "ephemeral" not in [f.WhichOneof("frame") for f in drain(watcher.others)]
    assert await server.stored("kept") == [{"ok": 1}]
    assert await server.stored("typed") == []


def drain(queue: asyncio.Queue[gateway_pb2.ConnectResponse]) -> list[gateway_pb2.ConnectResponse]:
    frames = []
    while not queue.empty():
        frames.append(queue.get_nowait())
    return frames


def unary_calls(server: Server, token: str, session_id: str, handle: str, bad: Any) -> list[tuple[Any, str]]:
    """Calls carrying `bad` in a JSON field (under key "x"), with that field."""
    data = {"x": bad}
    gateway, history = server.gateway, server.history
    events = [history_pb2.NewEvent(event="note", handle="h2", payload=to_value(data))]
    schema = room_pb2.EventDefinition(name="e", schema=struct(data))
    return [
        (
            gateway.PublishToRoom(
                gateway_pb2.PublishToRoomRequest(room_id="kept", events=[outgoing(data)]), metadata=SERVICE
            ),
            "events[0].payload",
        ),
        (
            gateway.PublishToRoom(
                gateway_pb2.PublishToRoomRequest(room_id="kept", events=[outgoing(1, data)]), metadata=SERVICE
            ),
            "events[0].meta",
        ),
        (
            gateway.EditRoomEvent(
                gateway_pb2.EditRoomEventRequest(room_id="kept", handle=handle, payload=to_value(data)),
                metadata=SERVICE,
            ),
            "payload",
        ),
        (
            gateway.SendToConnection(
                gateway_pb2.SendToConnectionRequest(session_id=session_id, data=to_value(data)), metadata=SERVICE
            ),
            "data",
        ),
        (
            history.AppendEvents(history_pb2.AppendEventsRequest(room_id="kept", events=events), metadata=SERVICE),
            "events[0].payload",
        ),
        (
            history.EditEvent(
                history_pb2.EditEventRequest(room_id="kept", handle=handle, payload=to_value(data)), metadata=SERVICE
            ),
            "payload",
        ),
        (
            server.rooms.CreateRoom(
                room_pb2.CreateRoomRequest(room_id="shaped", events=[schema]), metadata=bearer(token)
            ),
            "events[0].schema",
        ),
    ]


async def test_unary_calls_carrying_what_json_cannot_are_invalid_argument(server: Server) -> None:
    request = gateway_pb2.PublishToRoomRequest(room_id="kept", events=[outgoing(1)])
    handle = (await server.gateway.PublishToRoom(request, metadata=SERVICE)).handles[0]
    token = await server.alice.access_token()
    async with stream(server.address, token) as s:
        assert s.welcome is not None
        for bad, step in ((math.nan, ".x"), (math.inf, ".x"), (nested(MAX_JSON_DEPTH), "")):
            for call, field in unary_calls(server, token, s.welcome.session_id, handle, bad):
                assert (await refused(call)).field == field + step
        await assert_stream_lives(s)
        assert s.others.empty()  # no direct message came
    assert await server.stored("kept") == [1]
    rooms = await server.rooms.ListRooms(room_pb2.ListRoomsRequest(), metadata=bearer(token))
    assert "shaped" not in [room.room_id for room in rooms.rooms]


async def test_a_before_publish_hook_cannot_publish_what_a_client_may_not(server: Server) -> None:
    async with stream(server.address, await server.alice.access_token()) as s:
        await s.join("kept")
        handle = (await s.publish("kept", "note", {"ok": 1})).publish.handles[0]
        expected = {
            "nan": "payload.x: NaN is not a JSON number",
            "deep": f"payload: {TOO_DEEP}",
            "junk": "has unexpected type",
            "meta": "meta.m: Infinity is not a JSON number",
        }
        for name, fragment in expected.items():
            for reply in (
                await s.publish("kept", "note", {"hook": name}),
                await s.command(
                    edit=gateway_pb2.EditCommand(room_id="kept", handle=handle, payload=to_value({"hook": name}))
                ),
            ):
                assert reply.status.reason == "HOOK_FAILED", reply.status
                assert "the before_publish hook returned a Transform" in reply.status.message
                assert fragment in reply.status.message
        await assert_stream_lives(s)
    assert await server.stored("kept") == [{"ok": 1}]


async def test_json_one_level_too_deep_is_refused_where_it_enters_and_at_the_limit_every_frame_carries_it(
    server: Server, tmp_path: Path
) -> None:
    deepest, too_deep = nested(MAX_JSON_DEPTH), nested(MAX_JSON_DEPTH + 1)
    ann = server.alice
    async with (
        Client(server.address, username="bob", key_file=tmp_path / "bob.json") as bob,
        Client(server.address, username="carol", key_file=tmp_path / "carol.json") as carol,
    ):
        ann_room = await ann.join("kept")
        bob_room = await bob.join("kept")
        earlier = await bob_room.trigger("note", {"n": 0})
        assert (await asyncio.wait_for(anext(ann_room.events()), 5)).seq == earlier.seq
        await ann.close()  # ann resumes from here later

        with pytest.raises(ValidationError) as caught:
            await bob_room.trigger("note", too_deep)
        assert (caught.value.field, caught.value.message) == (
            "publish.events[0].payload",
            f"publish.events[0].payload: {TOO_DEEP}",
        )
        with pytest.raises(ValidationError) as caught:
            await bob_room.edit(earlier.handle, too_deep)
        assert caught.value.field == "edit.payload"
        with pytest.raises(ValidationError) as caught:
            await bob_room.send_ephemeral("cursor", too_deep)
        assert caught.value.field == "ephemeral.data"
        backend_event = gateway_pb2.OutgoingEvent(event="note", payload=to_value(too_deep))
        error = await refused(
            server.gateway.PublishToRoom(
                gateway_pb2.PublishToRoomRequest(room_id="kept", events=[backend_event]), metadata=SERVICE
            )
        )
        assert error.metadata["field"] == "events[0].payload"

        carol_room = await carol.join("kept")
        signals: list[Signal] = []
        carol_room.on_ephemeral(signals.append)
        live_changes: list[EventChange] = []
        carol_room.on_edited(live_changes.append)
        published = await bob_room.trigger("note", deepest, meta=deepest)
        await bob_room.edit(earlier.handle, deepest)
        backend_event = gateway_pb2.OutgoingEvent(event="note", payload=to_value(deepest), meta=struct(deepest))
        await server.gateway.PublishToRoom(
            gateway_pb2.PublishToRoomRequest(room_id="kept", events=[backend_event]), metadata=SERVICE
        )
        await bob_room.send_ephemeral("cursor", deepest)
        carol_events = carol_room.events()  # from the join: the event synced, then the live ones
        received = [await asyncio.wait_for(anext(carol_events), 5) for _ in range(3)]
        assert [(e.data, e.meta) for e in received] == [({"n": 0}, {}), (deepest, deepest), (deepest, deepest)]
        await wait_until(lambda: signals and live_changes, within=5)
        assert [s.data for s in signals] == [deepest]
        assert [c.data for c in live_changes] == [deepest]

    # A newcomer's sync on join, and ann's resume, carry every payload at the limit.
    async with Client(server.address, username="dan", key_file=tmp_path / "dan.json") as dan:
        synced: list[list[RoomEvent]] = []
        dan.on_history(lambda room_id, events, recovered: synced.append(events))
        await dan.join("kept")
        await wait_until(lambda: synced, within=5)
        assert [[e.data for e in batch] for batch in synced] == [[deepest, deepest, deepest]]
    replayed: list[list[RoomEvent]] = []
    ann.on_history(lambda room_id, events, recovered: replayed.append(events))
    again = await ann.join("kept")
    changes: list[EventChange] = []
    again.on_edited(changes.append)
    await wait_until(lambda: replayed and changes, within=5)
    assert again.recovered
    assert [[e.seq for e in batch] for batch in replayed] == [[published.seq, published.seq + 2]]
    assert [(c.handle, c.data) for c in changes] == [(earlier.handle, deepest)]


async def test_an_edit_no_replay_frame_could_carry_does_not_make_the_room_unjoinable(
    server: Server, tmp_path: Path
) -> None:
    # ConnectRequest > EditCommand > Value takes 49 nested arrays; a replay
    # (ConnectResponse > HistoryBatch > Event > Value) one level more than decoders accept.
    async with stream(server.address, await server.alice.access_token()) as s:
        await s.join("kept")
        handle = (await s.publish("kept", "note", {"ok": 1})).publish.handles[0]
        reply = await s.command(
            edit=gateway_pb2.EditCommand(room_id="kept", handle=handle, payload=to_value(nested(49, "array")))
        )
        assert refused_in_stream(reply).message == f"edit.payload: {TOO_DEEP}"
    async with Client(server.address, username="erin", key_file=tmp_path / "erin.json") as erin:
        synced: list[list[RoomEvent]] = []
        erin.on_history(lambda room_id, events, recovered: synced.append(events))
        await asyncio.wait_for(erin.join("kept"), 5)
        await wait_until(lambda: synced, within=5)
        assert [[e.data for e in batch] for batch in synced] == [[{"ok": 1}]]


# What a request can make the server walk: a budget of values, and the cheap refusals first


def nulls(count: int) -> struct_pb2.Value:
    """A list of `count` nulls: the most JSON values per byte (4 bytes each)."""
    value = struct_pb2.Value()
    value.list_value.values.extend([struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)] * count)
    return value


def commands_carrying(data: struct_pb2.Value, handle: str) -> dict[str, dict[str, Any]]:
    """One Connect command per kind that carries JSON, each carrying `data`."""
    return {
        "publish": {
            "publish": gateway_pb2.PublishCommand(
                room_id="kept", events=[gateway_pb2.OutgoingEvent(event="note", payload=data)]
            )
        },
        "edit": {"edit": gateway_pb2.EditCommand(room_id="kept", handle=handle, payload=data)},
        "ephemeral": {"ephemeral": gateway_pb2.EphemeralCommand(room_id="kept", subject="cursor", data=data)},
        "subject_publish": {"subject_publish": gateway_pb2.SubjectPublishCommand(subject="dots", data=data)},
    }


BUDGET = f"the request has more than {MAX_REQUEST_VALUES} JSON values"


async def test_a_command_over_the_value_budget_is_refused_and_the_stream_goes_on(
    data_dir: Path, tmp_path: Path
) -> None:
    # Payloads large enough to hold more values than the budget.
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.max_payload_bytes": 256 * 1024})
    async with (
        running(allinone.create_server, config) as (_, address),
        Client(address, username="alice", key_file=tmp_path / "alice.json") as alice,
        grpc.aio.insecure_channel(address) as channel,
        stream(address, await alice.access_token()) as s,
    ):
        await s.join("kept")
        handle = (await s.publish("kept", "note", {"ok": 1})).publish.handles[0]
        fields = {
            "publish": "publish.events[0].payload",
            "edit": "edit.payload",
            "ephemeral": "ephemeral.data",
            "subject_publish": "subject_publish.data",
        }
        for kind, command in commands_carrying(nulls(MAX_REQUEST_VALUES + 1), handle).items():
            error = refused_in_stream(await s.command(**command))
            assert (error.field, error.message) == (fields[kind], f"{fields[kind]}: {BUDGET}")
            await assert_stream_lives(s)
        # A publish's events share one budget: half and half fit, one value more does not.
        half = MAX_REQUEST_VALUES // 2
        halves = [gateway_pb2.OutgoingEvent(event="note", payload=nulls(n)) for n in (half, half)]
        await s.ok(publish=gateway_pb2.PublishCommand(room_id="kept", events=halves))
        halves[1].payload.list_value.values.add(null_value=struct_pb2.NULL_VALUE)
        error = refused_in_stream(await s.command(publish=gateway_pb2.PublishCommand(room_id="kept", events=halves)))
        assert (error.field, error.message) == ("publish.events[1].payload", f"publish.events[1].payload: {BUDGET}")

        # A user's unary call is held to the budget; a service's (a backend's batch) is not.
        schema = room_pb2.EventDefinition(name="e", schema=struct({"enum": [True] * (MAX_REQUEST_VALUES + 1)}))
        rooms = room_pb2_grpc.RoomServiceStub(channel)
        error = await refused(
            rooms.CreateRoom(
                room_pb2.CreateRoomRequest(room_id="shaped", events=[schema]),
                metadata=bearer(await alice.access_token()),
            )
        )
        assert (error.field, error.message) == ("events[0].schema.enum", f"events[0].schema.enum: {BUDGET}")
        big = gateway_pb2.OutgoingEvent(event="note", payload=nulls(MAX_REQUEST_VALUES + 1))
        gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
        await gateway.PublishToRoom(gateway_pb2.PublishToRoomRequest(room_id="kept", events=[big]), metadata=SERVICE)
        history = history_pb2_grpc.HistoryServiceStub(channel)
        page = await history.ListEvents(history_pb2.ListEventsRequest(room_id="kept"), metadata=SERVICE)
        assert [len(e.payload.list_value.values) for e in page.events] == [MAX_REQUEST_VALUES + 1, half, half, 0]


async def test_limits_refuse_big_commands_before_their_values_are_walked(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walked: list[int] = []
    original = request_checks._check_list

    def counting(values: struct_pb2.ListValue, *rest: Any) -> None:
        walked.append(len(values.values))
        original(values, *rest)

    monkeypatch.setattr(request_checks, "_check_list", counting)

    async def refused_unwalked(s: Stream, reason: str, command: dict[str, Any]) -> None:
        walked.clear()
        reply = await s.command(**command)
        assert reply.status.reason == reason, reply.status
        assert walked == []

    window = 2
    config = make_config(data_dir, rooms=ROOMS, **{"gateway.events_per_window": window, "gateway.window_seconds": 600})
    async with (
        running(allinone.create_server, config) as (_, address),
        Client(address, username="alice", key_file=tmp_path / "alice.json") as alice,
        stream(address, await alice.access_token()) as s,
    ):
        await s.join("kept")
        handle = (await s.publish("kept", "note", {"ok": 1})).publish.handles[0]
        # Within the size limit (64 KiB): nulls(16_000) is 64,004 bytes; nulls(17_000) is over it.
        big, oversized, small = nulls(16_000), nulls(17_000), to_value([1])
        too_many = [gateway_pb2.OutgoingEvent(event="note", payload=big)] * (window + 1)
        await refused_unwalked(
            s, "VALIDATION_FAILED", {"publish": gateway_pb2.PublishCommand(room_id="kept", events=too_many)}
        )
        for kind in ("publish", "edit", "ephemeral", "subject_publish"):
            walked.clear()
            for _ in range(window if kind != "publish" else window - 1):  # one publish came first
                await s.ok(**commands_carrying(small, handle)[kind])
            assert walked, "an allowed command's values are walked"
            await refused_unwalked(s, "RATE_LIMITED", commands_carrying(big, handle)[kind])
            # An edit counts against the rate before its size; the others the other way round.
            reason = "RATE_LIMITED" if kind == "edit" else "PAYLOAD_TOO_LARGE"
            await refused_unwalked(s, reason, commands_carrying(oversized, handle)[kind])
        await assert_stream_lives(s)


async def test_a_publish_walks_at_most_the_budget_over_all_its_events(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    walked: list[int] = []
    original = request_checks._take

    def counting(budget: Any, values: int) -> None:
        original(budget, values)
        walked.append(values)

    monkeypatch.setattr(request_checks, "_take", counting)
    async with (
        Client(server.address, username="bob", key_file=tmp_path / "bob.json") as bob,
        stream(server.address, await server.alice.access_token()) as s,
        stream(server.address, await bob.access_token()) as dense_sender,
    ):
        await s.join("kept")
        await dense_sender.join("kept")
        # 60 events of 16,000 nulls: each within the default 64 KiB, 3.8 MB in all.
        dense = [gateway_pb2.OutgoingEvent(event="note", payload=nulls(16_000))] * 60
        reply = await dense_sender.command(publish=gateway_pb2.PublishCommand(room_id="kept", events=dense))
        error = refused_in_stream(reply)
        assert (error.field, error.message) == ("publish.events[2].payload", f"publish.events[2].payload: {BUDGET}")
        assert sum(walked) <= MAX_REQUEST_VALUES
        # The most events one publish may carry (events_per_window, 200 by default), of
        # 160 values each, fit (docs/rooms.md says what a publish may carry).
        walked.clear()
        chat = {"text": "x", "tags": ["t"] * 156, "at": 1, "by": "a"}  # 4 keys and 156 elements
        many = [outgoing(chat) for _ in range(200)]
        reply = await s.ok(publish=gateway_pb2.PublishCommand(room_id="kept", events=many))
        assert len(reply.publish.seqs) == 200
        assert sum(walked) == 200 * 160 <= MAX_REQUEST_VALUES
        await assert_stream_lives(s)
        await assert_stream_lives(dense_sender)
    assert await server.stored("kept") == [chat] * 100  # the newest page: nothing of the dense publish


async def test_a_payload_or_data_left_unset_is_json_null_on_every_path(server: Server, tmp_path: Path) -> None:
    async with (
        Client(server.address, username="bob", key_file=tmp_path / "bob.json") as bob,
        stream(server.address, await server.alice.access_token()) as s,
        stream(server.address, await bob.access_token()) as watcher,
    ):
        await s.join("kept")
        await watcher.join("kept")
        await watcher.ok(subject_subscribe=gateway_pb2.SubjectSubscribeCommand(subject="dots"))
        no_payload = gateway_pb2.OutgoingEvent(event="note")
        handle = (await s.ok(publish=gateway_pb2.PublishCommand(room_id="kept", events=[no_payload]))).publish.handles[
            0
        ]
        # A Value present but empty reads as unset in every decoder: the same rule.
        empty = gateway_pb2.OutgoingEvent(event="note", payload=struct_pb2.Value())
        assert empty.HasField("payload")
        await s.ok(publish=gateway_pb2.PublishCommand(room_id="kept", events=[empty]))
        await s.ok(edit=gateway_pb2.EditCommand(room_id="kept", handle=handle))
        await s.ok(ephemeral=gateway_pb2.EphemeralCommand(room_id="kept", subject="typing"))
        await s.ok(subject_publish=gateway_pb2.SubjectPublishCommand(subject="dots"))
        # Everyone else gets JSON null, which every decoder can print (Go's protojson cannot print an empty Value).
        events = [await watcher.next_event(), await watcher.next_event()]
        assert [e.payload.WhichOneof("kind") for e in events] == ["null_value", "null_value"]
        changed = (await watcher.next_other("event_changed")).event_changed
        assert (changed.handle, changed.payload.WhichOneof("kind")) == (handle, "null_value")
        signal = (await watcher.next_other("ephemeral")).ephemeral
        assert (signal.subject, signal.data.WhichOneof("kind")) == ("typing", "null_value")
        subject_event = await asyncio.wait_for(watcher.subject_events.get(), 3)
        assert subject_event.data.WhichOneof("kind") == "null_value"
        # A value without a kind inside an array or object is still refused, on every path.
        inside = to_value([1])
        inside.list_value.values[0].Clear()
        fields = {
            "publish": "publish.events[0].payload",
            "edit": "edit.payload",
            "ephemeral": "ephemeral.data",
            "subject_publish": "subject_publish.data",
        }
        for kind, command in commands_carrying(inside, handle).items():
            error = refused_in_stream(await s.command(**command))
            assert error.message == f"{fields[kind]}[0]: has no value (JSON null is null_value)"
        await assert_stream_lives(s)
    assert await server.stored("kept") == [None, None]
    # grpcurl (Go's protojson) prints the room's history.
    listing = grpcurl_command(
        server.address,
        "parley.history.v1.HistoryService/ListEvents",
        data={"room_id": "kept"},
        headers={"authorization": f"Bearer svc:backend:{SERVICE_SECRET}"},
    )
    process = await asyncio.create_subprocess_exec(
        *listing, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()
    assert out.decode().count('"payload": null') == 2
