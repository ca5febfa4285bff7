"""Fuzzing every public RPC and the Connect stream: no INTERNAL, no UNKNOWN, a healthy server.

Requests come from the contract's descriptors (tests/fuzzing.py) and go out as
raw bytes with the credentials each method's access rule asks for. Each batch
(one method, or one Connect command) first sends a sane request with one field
at a time at each edge value, then hypothesis examples: wild, plausible, and
broken encodings. After each batch the server must still answer its health
check, carry a join/publish round trip, and let a client join every fuzzed room.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
from google.protobuf import descriptor, message, message_factory, struct_pb2, text_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

from parley.api.v1 import annotations_pb2
from parley.client import Client
from parley.errors import NotFoundError, ParleyError
from parley.file.v1 import file_pb2
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.history.v1 import history_pb2
from parley.identity.v1 import identity_pb2
from parley.room.v1 import room_pb2
from parley.rooms import RoomEvent
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from services.runtime.methods import MethodInfo, methods_of
from tests.fuzzing import Fresh, edge_cases, encodings, input_size, requests, unknown_enum_values
from tests.support import SERVICE_SECRET, bearer, make_config, running

T = TypeVar("T")
Scene = dict[str, list[Any]]
SERVICES = [
    module.DESCRIPTOR.services_by_name[name]
    for module, name in [
        (identity_pb2, "IdentityService"),
        (room_pb2, "RoomService"),
        (history_pb2, "HistoryService"),
        (file_pb2, "FileService"),
        (gateway_pb2, "GatewayService"),
    ]
]
CONNECT = "/parley.gateway.v1.GatewayService/Connect"
SERVICE_TOKEN = f"svc:backend:{SERVICE_SECRET}"
# Calls that take away what later batches fuzz with (rooms, logs, memberships,
# sessions, devices, signing keys) come last.
DESTRUCTIVE = ("DeleteRoom", "DropLog", "RemoveUserFromRooms", "Logout", "RevokeDevice", "RotateSigningKey")
FORBIDDEN = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN)
FORBIDDEN_IN_STREAM = (grpc.StatusCode.INTERNAL.value[0], grpc.StatusCode.UNKNOWN.value[0])
# Hypothesis examples per unary method: a few, plus more for each field a request has.
UNARY_EXAMPLES = 15
UNARY_EXAMPLES_PER_FIELD = 10
UNARY_EXAMPLES_MAX = 100
STREAMING_EXAMPLES = 8
CONNECT_EXAMPLES = 20
CALL_SECONDS = 10.0
# A server-streaming call is read this long, then cancelled.
STREAM_READ_SECONDS = 0.1
FUZZ_SETTINGS = settings(
    deadline=None, derandomize=True, database=None, suppress_health_check=list(HealthCheck), print_blob=False
)

TEXT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {"text": {"type": "string", "maxLength": 100}},
    "required": ["text"],
}
KEPT = HistorySettings(enabled=True)
ROOMS = [
    RoomDefinition(id="open"),
    # Sync-on-join replays kept events: a stored payload no frame can carry makes it unjoinable.
    RoomDefinition(id="kept", events=[EventDefinition(name="*", history=KEPT)], sync_history_on_join=20),
    RoomDefinition(id="typed", events=[EventDefinition(name="*", schema=TEXT_SCHEMA, history=KEPT)]),
    RoomDefinition(id="news", events=[]),
    # Only the health probe uses it, so fuzzing never deletes it.
    RoomDefinition(id="probe"),
]
FUZZED_ROOMS = ["open", "kept", "typed", "news"]
# JSON Schemas a room may be created with: valid, recursive, unresolvable, nonsense.
SCHEMAS: list[dict[str, Any]] = [
    TEXT_SCHEMA,
    {"$ref": "#"},
    {"type": "object", "properties": {"a": {"$ref": "#"}}},
    {"allOf": [{"$ref": "#/definitions/missing"}]},
    {"pattern": "("},
    {"type": "number", "minimum": float("nan")},
    {"type": "wat"},
    {"maxLength": -1},
    {"enum": []},
]


# The server under fuzz


@dataclasses.dataclass
class FuzzTarget:
    """One all-in-one server, driven from a loop that lives as long as the module."""

    runner: asyncio.Runner
    address: str
    channel: grpc.aio.Channel
    fuzzer: Client
    prober_key: Path
    # What requests name: one scene per room (its id, handles and epoch) and what all
    # share; rooms with history twice, as their replays nest a payload deepest and a
    # schema reads every payload.
    scenes: list[Scene]
    # The scenes the edge cases run in: "kept", "typed", and nowhere (new ids only).
    edge_scenes: list[Scene]

    def run(self, work: Coroutine[Any, Any, T]) -> T:
        return self.runner.run(work)


def text_value(text: str) -> struct_pb2.Value:
    value = struct_pb2.Value()
    value.struct_value.update({"text": text})
    return value


async def start(runner: asyncio.Runner, stack: contextlib.AsyncExitStack, tmp: Path) -> FuzzTarget:
    config = make_config(
        tmp / "data",
        rooms=ROOMS,
        **{
            "gateway.events_per_window": 1_000_000,
            "room_service.creations_per_hour": 1_000_000,
            # Each batch logs in afresh, and CreateLoginChallenge is fuzzed with the real name.
            "auth.challenges_per_minute": 1_000_000,
            # RotateSigningKey is fuzzed many times a second: the next token names a key the
            # verifier must fetch at once (by default it refetches at most every 5 s).
            "auth.key_refresh_interval_seconds": 0.0,
        },
    )
    _, address = await stack.enter_async_context(running(allinone.create_server, config))
    channel = await stack.enter_async_context(grpc.aio.insecure_channel(address))
    fuzzer = await stack.enter_async_context(Client(address, username="fuzzer", key_file=tmp / "fuzzer.json"))
    async with Client(address, username="prober", key_file=tmp / "prober.json"):
        pass  # registered; each probe logs in afresh
    gateway = gateway_pb2_grpc.GatewayServiceStub(channel)
    spare = await fuzzer.add_device("spare")
    mine = await fuzzer.create_room("mine", name="Mine")
    shared: Scene = {
        "user_id": [fuzzer.user_id, "system"],
        "as_user": [fuzzer.user_id],
        "editor": [fuzzer.user_id],
        "sender": [fuzzer.user_id, "system"],
        "username": ["fuzzer"],
        "device_id": [spare.device_id],
        "event": ["message", "note", "*"],
        "name": ["message", "*"],
        "events": ["message", "note", "*", "-message"],
        "subscriptions": ["*", "message", "-note"],
        "default_subscriptions": ["*", "message"],
        "subject": ["presence:lobby", "presence:*", "typing", "*"],
        "idempotency_key": ["k1", "k2"],
        "struct:schema": SCHEMAS,
    }
    scenes = []
    for room_id in ["kept", "typed", *FUZZED_ROOMS, mine.room_id]:
        room = await fuzzer.join(room_id)
        await room.leave()
        # By a service as the fuzzing user: "news" is read-only for clients. Nothing fuzzed publishes
        # "seed", so these stay among the events "kept" replays on join.
        seeds = [gateway_pb2.OutgoingEvent(event="seed", payload=text_value(f"{n}")) for n in range(2)]
        published = await gateway.PublishToRoom(
            gateway_pb2.PublishToRoomRequest(room_id=room_id, events=seeds, sender=fuzzer.user_id),
            metadata=bearer(SERVICE_TOKEN),
        )
        scenes.append({**shared, "room_id": [room_id], "handle": list(published.handles), "epoch": [room.epoch]})
    nowhere: Scene = {**shared, "room_id": [], "handle": [], "epoch": []}
    return FuzzTarget(runner, address, channel, fuzzer, tmp / "prober.json", scenes, [*scenes[:2], nowhere])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzTarget]:
    tmp = tmp_path_factory.mktemp("fuzz")
    runner = asyncio.Runner()
    stack = contextlib.AsyncExitStack()
    try:
        yield runner.run(start(runner, stack, tmp))
    finally:
        runner.run(stack.aclose())
        runner.close()


@dataclasses.dataclass
class Batch:
    """What one batch sends with: a fresh session (a fuzzed Logout may have ended the last one)."""

    token: str
    scenes: list[Scene]
    edge_scenes: list[Scene]


async def new_batch(target: FuzzTarget) -> Batch:
    session = await target.fuzzer.login()
    tokens = {"refresh_token": [session.refresh_token], "access_token": [session.access_token]}
    return Batch(
        session.access_token,
        [{**scene, **tokens} for scene in target.scenes],
        [{**scene, **tokens} for scene in target.edge_scenes],
    )


async def assert_healthy(target: FuzzTarget) -> None:
    """Health SERVING, a join/publish round trip, and every fuzzed room still joinable."""
    try:
        await probe(target)
    finally:
        # Collect now the tasks a failing SDK stream leaves with an exception nobody retrieved.
        # Collected later, inside pytest's ast.parse of a failure report, the traceback they log
        # is parsed too, and CPython 3.11.7 then aborts the whole session (AST recursion depth
        # mismatch).
        gc.collect()


async def probe(target: FuzzTarget) -> None:
    health = await health_pb2_grpc.HealthStub(target.channel).Check(health_pb2.HealthCheckRequest(service=""))
    assert health.status == health_pb2.HealthCheckResponse.SERVING
    async with Client(target.address, key_file=target.prober_key, reconnect=False) as prober:
        room = await prober.join("probe")
        arrived: asyncio.Future[RoomEvent] = asyncio.get_running_loop().create_future()
        room.on("ping", lambda event: None if arrived.done() else arrived.set_result(event))
        published = await room.trigger("ping", {"n": 1})
        received = await asyncio.wait_for(arrived, CALL_SECONDS)
        assert (received.handle, received.data) == (published.handle, {"n": 1})
        for room_id in FUZZED_ROOMS:
            try:
                await prober.get_room(room_id)
            except NotFoundError:
                continue  # a fuzzed service call deleted it
            try:
                joined = await prober.join(room_id, resume=False)
                await joined.leave()
            except ParleyError as error:
                raise AssertionError(f"room {room_id!r} can no longer be joined: {error!r}") from None


def describe(payload: bytes, message_type: type[message.Message]) -> str:
    """The request as text (shortened), or its bytes when it does not decode."""
    try:
        decoded = message_type.FromString(payload)
    except Exception:
        return f"undecodable bytes {payload[:200]!r} ({len(payload)} bytes)"
    text = text_format.MessageToString(decoded, as_one_line=True)
    return text if len(text) < 1500 else f"{text[:1500]}... ({len(payload)} bytes)"


def first_failures(cases: list[tuple[str, str]]) -> list[str]:
    """One line per distinct failure: the first case that showed it."""
    seen: dict[str, str] = {}
    for failure, case in cases:
        seen.setdefault(failure, f"{failure}\n    {case}")
    return list(seen.values())


# The Connect stream


@dataclasses.dataclass
class Conversation:
    """What one Connect stream sent back."""

    frames: list[gateway_pb2.ConnectResponse]
    code: grpc.StatusCode
    details: str


def well_formed(frame: bytes) -> bool:
    """Decodes as a ConnectRequest and has a request_id: the server must answer it."""
    try:
        return bool(gateway_pb2.ConnectRequest.FromString(frame).request_id)
    except Exception:
        return False


async def converse(target: FuzzTarget, token: str, frames: list[bytes]) -> Conversation:
    call = target.channel.stream_stream(CONNECT, None, None)(None, metadata=bearer(token), timeout=CALL_SECONDS)
    received: list[bytes] = []

    async def read() -> None:
        with contextlib.suppress(grpc.aio.AioRpcError):
            async for raw in call:
                received.append(raw)

    reader = asyncio.create_task(read())
    try:
        for frame in frames:
            await call.write(frame)
        await call.done_writing()
    except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
        pass  # the server ended the stream early; what it said is checked below
    await reader
    decoded = []
    for raw in received:
        try:
            decoded.append(gateway_pb2.ConnectResponse.FromString(raw))
        except Exception as error:
            raise AssertionError(f"the server sent a frame no client can decode ({len(raw)} bytes): {error}") from None
    return Conversation(decoded, await call.code(), await call.details())


CLIENT_CORE_RACE = "Internal error from Core"


def check_conversation(sent: list[bytes], conversation: Conversation) -> None:
    go_aways = [frame.go_away for frame in conversation.frames if frame.WhichOneof("frame") == "go_away"]
    # A client still writing when the server ends the stream (after its GoAway) may see grpc's own client-side
    # INTERNAL instead of the server's status: the server's verdict is the GoAway.
    core_race = conversation.details == CLIENT_CORE_RACE and bool(go_aways)
    assert conversation.code not in FORBIDDEN or core_race, (
        f"the stream ended with {conversation.code.name}: {conversation.details}"
    )
    replies = [reply for frame in conversation.frames for reply in replies_in(frame)]
    for reply in replies:
        assert reply.status.code not in FORBIDDEN_IN_STREAM, f"a reply with {reply.status}"
    for go_away in go_aways:
        assert go_away.status.reason == "PROTOCOL_VIOLATION", f"GoAway with {go_away.status}"
    answered = 0
    for frame in sent:
        if not well_formed(frame):
            assert go_aways, "a malformed frame did not end the stream with PROTOCOL_VIOLATION"
            return
        answered += 1
    assert not go_aways, "the stream was ended though every frame was well formed"
    assert conversation.code == grpc.StatusCode.OK, conversation.details
    assert len(replies) == answered, f"{answered} commands, {len(replies)} replies"


def replies_in(frame: gateway_pb2.ConnectResponse) -> list[gateway_pb2.Reply]:
    kind = frame.WhichOneof("frame")
    return [frame.reply] if kind == "reply" else list(frame.replies.replies) if kind == "replies" else []


def plain_join(scene: Scene) -> bytes:
    join = gateway_pb2.JoinCommand(room_id=scene["room_id"][0] if scene["room_id"] else "nowhere")
    return gateway_pb2.ConnectRequest(request_id="j", join=join).SerializeToString()


def with_request_id(frame: Any) -> Any:
    if not frame.request_id:
        frame.request_id = "r"
    return frame


def connect_frames(command: str, scenes: list[Scene]) -> st.SearchStrategy[list[bytes]]:
    """Frames about one room: a plain join, then mostly `command`, any command, and malformed bytes."""

    def about(scene: Scene) -> st.SearchStrategy[list[bytes]]:
        def request(member: str | None) -> st.SearchStrategy[bytes]:
            drawn = requests(gateway_pb2.ConnectRequest.DESCRIPTOR, [scene], oneof_member=member)
            return drawn.map(lambda frame: with_request_id(frame).SerializeToString())

        chosen = request(command)
        malformed = encodings(requests(gateway_pb2.ConnectRequest.DESCRIPTOR, [scene]))
        rest = st.lists(st.one_of(chosen, chosen, chosen, request(None), malformed), min_size=1, max_size=5)
        if command == "join":
            return rest  # a second join of the room would be refused before it reads anything
        return rest.map(lambda frames: [plain_join(scene), *frames])

    return st.sampled_from(scenes).flatmap(about)


async def connect_edge_cases(target: FuzzTarget, batch: Batch, command: str) -> list[str]:
    failures = []
    fresh = Fresh()
    for scene in batch.edge_scenes[:2]:  # nowhere adds nothing to a stream: it can join no room
        for label, frame in edge_cases(gateway_pb2.ConnectRequest.DESCRIPTOR, scene, fresh, command):
            frames = (
                [frame.SerializeToString()] if command == "join" else [plain_join(scene), frame.SerializeToString()]
            )
            try:
                check_conversation(frames, await converse(target, batch.token, frames))
            except AssertionError as failure:
                sent = " | ".join(describe(frame, gateway_pb2.ConnectRequest) for frame in frames)
                failures.append((str(failure).splitlines()[0], f"{label}: {sent}"))
    return first_failures(failures)


COMMANDS = [field.name for field in gateway_pb2.ConnectRequest.DESCRIPTOR.oneofs_by_name["command"].fields]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("command", COMMANDS)
def test_no_connect_frame_fails_internally(target: FuzzTarget, command: str) -> None:
    batch = target.run(new_batch(target))

    @settings(FUZZ_SETTINGS, max_examples=CONNECT_EXAMPLES)
    @given(frames=connect_frames(command, batch.scenes))
    def fuzz(frames: list[bytes]) -> None:
        note("frames sent:\n" + "\n".join(describe(frame, gateway_pb2.ConnectRequest) for frame in frames))
        check_conversation(frames, target.run(converse(target, batch.token, frames)))

    try:
        failures = target.run(connect_edge_cases(target, batch, command))
        assert not failures, "edge cases failed:\n" + "\n".join(failures)
        fuzz()
    finally:  # also after a failure: what the batch stored may have broken more
        target.run(assert_healthy(target))


# Unary and server-streaming RPCs


def credentials(token: str) -> dict[str, tuple[tuple[str, str], ...]]:
    return {"none": (), "user": bearer(token), "service": bearer(SERVICE_TOKEN)}


def credential_names(info: MethodInfo) -> list[str]:
    """Who may call the method: the credentials its requests are sent with."""
    if info.access == annotations_pb2.ACCESS_POLICY_PUBLIC:
        return ["none", "user"]
    if info.access == annotations_pb2.ACCESS_POLICY_USER:
        return ["user"]
    if info.access == annotations_pb2.ACCESS_POLICY_SERVICE:
        return ["service"]
    return ["user", "service"]


def fuzzed_methods() -> list[tuple[MethodInfo, descriptor.MethodDescriptor]]:
    found = [
        (info, service.methods_by_name[info.method])
        for service in SERVICES
        for info in methods_of(service)
        if not info.client_streaming
    ]
    return sorted(found, key=lambda pair: pair[0].method in DESTRUCTIVE)


def decodable(response: bytes, response_type: type[message.Message], method: str) -> None:
    try:
        response_type.FromString(response)
    except Exception as error:
        raise AssertionError(f"{method} sent a response no client can decode: {error}") from None


async def call_unary(
    target: FuzzTarget, info: MethodInfo, method: descriptor.MethodDescriptor, payload: bytes, metadata: Any
) -> None:
    response_type = message_factory.GetMessageClass(method.output_type)
    if info.server_streaming:
        call = target.channel.unary_stream(info.full_name, None, None)(payload, metadata=metadata, timeout=CALL_SECONDS)
        try:
            async with asyncio.timeout(STREAM_READ_SECONDS):
                async for response in call:
                    decodable(response, response_type, info.full_name)
        except (TimeoutError, grpc.aio.AioRpcError):
            pass  # still open after a while (healthy), or ended: its status is checked below
        finally:
            call.cancel()
        code = await call.code()
        details = await call.details()
    else:
        try:
            response = await target.channel.unary_unary(info.full_name, None, None)(
                payload, metadata=metadata, timeout=CALL_SECONDS
            )
        except grpc.aio.AioRpcError as error:
            code, details = error.code(), error.details() or ""
        else:
            decodable(response, response_type, info.full_name)
            unknown = unknown_enum_values(message_factory.GetMessageClass(method.input_type).FromString(payload))
            assert not unknown, f"{info.full_name} accepted unknown enum values: {', '.join(unknown)}"
            return
    assert code not in FORBIDDEN, f"{info.full_name} answered {code.name}: {details}"


async def unary_edge_cases(
    target: FuzzTarget, batch: Batch, info: MethodInfo, method: descriptor.MethodDescriptor
) -> list[str]:
    # The most privileged caller the method takes gets furthest past the checks.
    who = credential_names(info)[-1]
    request_type = message_factory.GetMessageClass(method.input_type)
    failures = []
    fresh = Fresh()
    for scene in batch.edge_scenes:
        for label, request in edge_cases(method.input_type, scene, fresh):
            payload = request.SerializeToString()
            try:
                await call_unary(target, info, method, payload, credentials(batch.token)[who])
            except AssertionError as failure:
                case = f"{label}: as {who}: {describe(payload, request_type)}"
                failures.append((str(failure).splitlines()[0], case))
    return first_failures(failures)


def examples_for(info: MethodInfo, method: descriptor.MethodDescriptor) -> int:
    if info.server_streaming:
        return STREAMING_EXAMPLES
    return min(UNARY_EXAMPLES_MAX, UNARY_EXAMPLES + UNARY_EXAMPLES_PER_FIELD * input_size(method.input_type))


METHODS = fuzzed_methods()


@pytest.mark.timeout(120)
@pytest.mark.parametrize(("info", "method"), METHODS, ids=[info.full_name.strip("/") for info, _ in METHODS])
def test_no_request_fails_internally(target: FuzzTarget, info: MethodInfo, method: descriptor.MethodDescriptor) -> None:
    batch = target.run(new_batch(target))
    metadata = credentials(batch.token)
    request_type = message_factory.GetMessageClass(method.input_type)

    @settings(FUZZ_SETTINGS, max_examples=examples_for(info, method))
    @given(payload=encodings(requests(method.input_type, batch.scenes)), who=st.sampled_from(credential_names(info)))
    def fuzz(payload: bytes, who: str) -> None:
        note(f"request as {who}: {describe(payload, request_type)}")
        target.run(call_unary(target, info, method, payload, metadata[who]))

    try:
        failures = target.run(unary_edge_cases(target, batch, info, method))
        assert not failures, "edge cases failed:\n" + "\n".join(failures)
        fuzz()
    finally:  # also after a failure: what the batch stored may have broken more
        target.run(assert_healthy(target))
