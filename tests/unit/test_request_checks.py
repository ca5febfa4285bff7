"""The rules every request obeys: defined enums, 64-bit integers the stores hold, JSON a frame can carry."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import descriptor, descriptor_pb2, descriptor_pool, message, message_factory, struct_pb2
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.file.v1 import file_pb2
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from parley.identity.v1 import identity_pb2
from parley.room.v1 import room_pb2
from parley.values import to_value
from services.gateway.commands import CHECKED_AFTER_LIMITS
from services.runtime.errors import ServiceError
from services.runtime.request_checks import (
    MAX_JSON_DEPTH,
    MAX_REQUEST_VALUES,
    RequestBudget,
    check_json,
    check_request,
    fields_to_check,
    null_if_unset,
)

# Protobuf decoders refuse more than this many message levels below a root.
DECODER_LIMIT = 100
# What the deepest frame must leave free, so frames can grow a little.
HEADROOM = 20
FILES = (gateway_pb2, history_pb2, room_pb2, identity_pb2, file_pb2)
JSON_TYPES = {t.DESCRIPTOR.full_name for t in (struct_pb2.Value, struct_pb2.Struct, struct_pb2.ListValue)}


def refusal(request: message.Message) -> ServiceError:
    with pytest.raises(ServiceError) as caught:
        check_request(request)
    assert caught.value.reason == "VALIDATION_FAILED"
    assert caught.value.code.name == "INVALID_ARGUMENT"
    return caught.value


def nested(levels: int, kind: str = "object") -> Any:
    """JSON with `levels` arrays or objects inside each other around a number."""
    value: Any = 1
    for _ in range(levels):
        value = {"a": value} if kind == "object" else [value]
    return value


def deep_value(levels: int, kind: str = "object") -> struct_pb2.Value:
    """`nested(levels, kind)` built in place (json_format refuses to build very deep values)."""
    root = struct_pb2.Value()
    inner = root
    for _ in range(levels):
        inner = inner.struct_value.fields["a"] if kind == "object" else inner.list_value.values.add()
    inner.number_value = 1
    return root


def edit_of(payload: struct_pb2.Value) -> gateway_pb2.ConnectRequest:
    return gateway_pb2.ConnectRequest(request_id="r", edit=gateway_pb2.EditCommand(room_id="r", payload=payload))


# Enums


def test_an_enum_value_the_enum_does_not_define_is_refused() -> None:
    error = refusal(room_pb2.CreateRoomRequest(room_id="r", visibility=99))  # type: ignore[arg-type]
    assert error.message == "visibility: 99 is not a RoomVisibility value"
    assert error.metadata == {"field": "visibility"}
    check_request(room_pb2.CreateRoomRequest(room_id="r", visibility=room_pb2.ROOM_VISIBILITY_UNLISTED))


def test_enums_are_checked_at_any_depth_and_in_repeated_fields() -> None:
    changes = [room_pb2.RoomChange(kind=room_pb2.RoomChange.KIND_CREATED), room_pb2.RoomChange(kind=7)]  # type: ignore[arg-type]
    error = refusal(room_pb2.WatchRoomsResponse(changes=changes))
    assert error.message == "changes[1].kind: 7 is not a RoomChange.Kind value"


def test_a_null_value_other_than_null_is_refused() -> None:
    payload = to_value({"list": [1, None]})
    payload.struct_value.fields["list"].list_value.values[1].null_value = 3  # type: ignore[assignment]
    assert refusal(edit_of(payload)).message == "edit.payload.list[1]: 3 is not a NullValue value"


# 64-bit integers


def test_unsigned_integers_must_fit_a_signed_64_bit_column() -> None:
    check_request(gateway_pb2.ConnectRequest(request_id="r", join=gateway_pb2.JoinCommand(since_seq=2**63 - 1)))
    error = refusal(gateway_pb2.ConnectRequest(request_id="r", join=gateway_pb2.JoinCommand(since_seq=2**63)))
    assert error.message == "join.since_seq: must be below 2^63"
    assert refusal(history_pb2.ListEventsSinceRequest(after_seq=2**64 - 1)).metadata == {"field": "after_seq"}
    assert refusal(history_pb2.ListEventsRequest(before_seq=2**63)).metadata == {"field": "before_seq"}
    retention = history_pb2.RoomRetention(
        room_id="r", events=[history_pb2.EventRetention(), history_pb2.EventRetention(keep_seconds=2**63)]
    )
    error = refusal(history_pb2.SetRetentionRequest(rooms=[retention]))
    assert error.metadata == {"field": "rooms[0].events[1].keep_seconds"}


def test_signed_and_32_bit_integers_are_left_to_the_handlers() -> None:
    check_request(history_pb2.AppendEventsRequest(events=[history_pb2.NewEvent(time_ms=-(2**63), keep_last=2**32 - 1)]))


# JSON values


@pytest.mark.parametrize(("number", "name"), [(math.nan, "NaN"), (math.inf, "Infinity"), (-math.inf, "-Infinity")])
def test_non_finite_numbers_are_refused_with_their_path(number: float, name: str) -> None:
    payload = to_value({"a": [0, {"b c": number}]})
    error = refusal(edit_of(payload))
    assert error.message == f'edit.payload.a[1]["b c"]: {name} is not a JSON number (JSON numbers are finite)'
    assert error.metadata == {"field": 'edit.payload.a[1]["b c"]'}


def test_every_json_field_of_a_request_is_checked() -> None:
    bad = to_value(math.nan)
    meta = struct_pb2.Struct()
    meta.update({"m": math.inf})
    publish = gateway_pb2.PublishCommand(
        room_id="r",
        events=[gateway_pb2.OutgoingEvent(event="e", payload=to_value(1)), gateway_pb2.OutgoingEvent(meta=meta)],
    )
    cases: list[tuple[message.Message, str]] = [
        (gateway_pb2.ConnectRequest(request_id="r", publish=publish), "publish.events[1].meta.m"),
        (
            gateway_pb2.ConnectRequest(request_id="r", ephemeral=gateway_pb2.EphemeralCommand(data=bad)),
            "ephemeral.data",
        ),
        (
            gateway_pb2.ConnectRequest(request_id="r", subject_publish=gateway_pb2.SubjectPublishCommand(data=bad)),
            "subject_publish.data",
        ),
        (gateway_pb2.SendToConnectionRequest(session_id="s", data=bad), "data"),
        (gateway_pb2.EditRoomEventRequest(payload=bad), "payload"),
        (gateway_pb2.PublishToRoomRequest(events=[gateway_pb2.OutgoingEvent(payload=bad)]), "events[0].payload"),
        (history_pb2.AppendEventsRequest(events=[history_pb2.NewEvent(payload=bad)]), "events[0].payload"),
        (history_pb2.EditEventRequest(payload=bad), "payload"),
        (room_pb2.CreateRoomRequest(events=[room_pb2.EventDefinition(schema=meta)]), "events[0].schema.m"),
    ]
    for request, field in cases:
        assert refusal(request).metadata == {"field": field}


def test_a_value_without_a_kind_is_refused() -> None:
    # Go's protojson (grpcurl) cannot print one: the room's history would become unreadable there.
    payload = to_value({"k": 1})
    payload.struct_value.fields["k"].Clear()
    assert refusal(edit_of(payload)).message == "edit.payload.k: has no value (JSON null is null_value)"


def test_an_unset_payload_or_data_is_accepted_on_every_path_and_means_null() -> None:
    # A client in another language leaves `data` out of a typing signal; a present but empty
    # Value reads the same in every decoder. Only inside an array or object must a value have a kind.
    unset = struct_pb2.Value()
    for field in ("edit.payload", "ephemeral.data", "subject_publish.data", "publish.events[0].payload"):
        check_json(unset, field)
    commands = [
        gateway_pb2.ConnectRequest(request_id="r", edit=gateway_pb2.EditCommand(room_id="r", handle="h")),
        edit_of(struct_pb2.Value()),
        gateway_pb2.ConnectRequest(request_id="r", ephemeral=gateway_pb2.EphemeralCommand(subject="typing")),
        gateway_pb2.ConnectRequest(request_id="r", subject_publish=gateway_pb2.SubjectPublishCommand(subject="s")),
        gateway_pb2.ConnectRequest(
            request_id="r", publish=gateway_pb2.PublishCommand(events=[gateway_pb2.OutgoingEvent(event="e")])
        ),
        gateway_pb2.EditRoomEventRequest(room_id="r", handle="h", payload=struct_pb2.Value()),
    ]
    for request in commands:
        check_request(request)
    assert null_if_unset(unset) == to_value(None)
    assert null_if_unset(unset).WhichOneof("kind") == "null_value"
    kept = to_value({"k": 1})
    assert null_if_unset(kept) is kept
    inside = to_value([1])
    inside.list_value.values[0].Clear()
    with pytest.raises(ServiceError) as caught:
        check_json(inside, "ephemeral.data")
    assert caught.value.message == "ephemeral.data[0]: has no value (JSON null is null_value)"


def test_a_long_key_is_cut_short_in_the_path() -> None:
    error = refusal(edit_of(to_value({"k" * 5000: math.nan})))
    assert error.metadata["field"] == f'edit.payload["{"k" * 32}…"]'


@pytest.mark.parametrize("kind", ["object", "array"])
def test_json_may_nest_up_to_the_limit_and_no_further(kind: str) -> None:
    check_request(edit_of(to_value(nested(MAX_JSON_DEPTH, kind))))
    error = refusal(edit_of(to_value(nested(MAX_JSON_DEPTH + 1, kind))))
    assert error.message == f"edit.payload: nests arrays and objects more than {MAX_JSON_DEPTH} levels deep"


def test_a_struct_field_counts_as_one_level() -> None:
    for levels, accepted in ((MAX_JSON_DEPTH, True), (MAX_JSON_DEPTH + 1, False)):
        meta = struct_pb2.Struct()
        meta.update(nested(levels))
        request = gateway_pb2.PublishToRoomRequest(events=[gateway_pb2.OutgoingEvent(meta=meta)])
        if accepted:
            check_request(request)
        else:
            assert refusal(request).metadata == {"field": "events[0].meta"}


def test_check_json_takes_a_value_struct_or_list() -> None:
    values = to_value([1, [math.inf]]).list_value
    with pytest.raises(ServiceError) as caught:
        check_json(values, "payload")
    assert caught.value.metadata == {"field": "payload[1][0]"}


finite = st.floats(allow_nan=False, allow_infinity=False)
scalars = st.none() | st.booleans() | finite | st.text(max_size=5)


def json_within(depth: int) -> st.SearchStrategy[Any]:
    if depth == 0:
        return scalars
    inner = json_within(depth - 1)
    return scalars | st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)


@st.composite
def deep_json(draw: st.DrawFn) -> Any:
    """Random JSON, sometimes with a path all the way down to MAX_JSON_DEPTH."""
    value = draw(json_within(3))
    for _ in range(draw(st.integers(0, MAX_JSON_DEPTH - 3))):
        value = [value] if draw(st.booleans()) else {draw(st.text(max_size=3)): value}
    return value


def places(value: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every position in a JSON value, as a path of keys and indexes."""
    yield path
    if isinstance(value, dict):
        for key, item in value.items():
            yield from places(item, (*path, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from places(item, (*path, i))


def replaced(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: replaced(value[head], rest, new)}
    return [replaced(item, rest, new) if i == head else item for i, item in enumerate(value)]


def depth_of(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((depth_of(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((depth_of(v) for v in value), default=0)
    return 0


@settings(max_examples=150, deadline=None)
@given(deep_json(), st.data())
def test_json_within_the_limits_is_accepted_and_any_nan_inf_or_extra_depth_is_refused(value: Any, data: Any) -> None:
    assert depth_of(value) <= MAX_JSON_DEPTH
    check_request(edit_of(to_value(value)))
    path = data.draw(st.sampled_from(list(places(value))))
    bad = data.draw(st.sampled_from([math.nan, math.inf, -math.inf, nested(MAX_JSON_DEPTH + 1 - len(path))]))
    error = refusal(edit_of(to_value(replaced(value, path, bad))))
    assert error.metadata["field"].startswith("edit.payload")


# How much one request may make the walk do


def nulls(count: int) -> struct_pb2.Value:
    """A list of `count` nulls: the most JSON values per byte (4 bytes each)."""
    value = struct_pb2.Value()
    value.list_value.values.extend([struct_pb2.Value(null_value=struct_pb2.NULL_VALUE)] * count)
    return value


def test_the_value_budget_fits_the_densest_payload_of_the_default_size_twice() -> None:
    densest = nulls(1000)
    per_value = densest.ByteSize() / 1000
    assert 4 <= per_value < 4.01
    assert 2 * (64 * 1024) / per_value <= MAX_REQUEST_VALUES


def test_a_request_holds_at_most_the_budget_of_json_values_in_all() -> None:
    check_request(edit_of(nulls(MAX_REQUEST_VALUES)))
    error = refusal(edit_of(nulls(MAX_REQUEST_VALUES + 1)))
    assert error.message == f"edit.payload: the request has more than {MAX_REQUEST_VALUES} JSON values"
    half = MAX_REQUEST_VALUES // 2
    payload = struct_pb2.Value()
    payload.list_value.values.extend([nulls(half), nulls(half)])  # with the outer list's 2: one too many
    assert refusal(edit_of(payload)).metadata == {"field": "edit.payload[1]"}
    events = [gateway_pb2.OutgoingEvent(payload=nulls(half)), gateway_pb2.OutgoingEvent(payload=nulls(half + 1))]
    assert refusal(gateway_pb2.PublishToRoomRequest(events=events)).metadata == {"field": "events[1].payload"}


def test_values_over_the_budget_are_refused_before_they_are_walked() -> None:
    payload = nulls(MAX_REQUEST_VALUES + 1)
    payload.list_value.values[-1].number_value = math.nan
    assert "more than" in refusal(edit_of(payload)).message


def test_entries_of_repeated_fields_count_too() -> None:
    many = [history_pb2.RoomRetention()] * (MAX_REQUEST_VALUES + 1)
    error = refusal(history_pb2.SetRetentionRequest(rooms=many))
    assert error.message == f"rooms: the request has more than {MAX_REQUEST_VALUES} repeated entries"


def test_without_a_budget_a_request_may_hold_any_number_of_values() -> None:
    events = [gateway_pb2.OutgoingEvent(payload=nulls(MAX_REQUEST_VALUES))] * 3
    check_request(gateway_pb2.PublishToRoomRequest(events=events), max_values=None)
    check_json(nulls(MAX_REQUEST_VALUES + 1), "payload", max_values=None)


def test_the_parts_of_one_request_can_share_its_budget() -> None:
    # A Connect publish checks its events one by one, after its limits: all of them together
    # hold at most MAX_REQUEST_VALUES values.
    half = MAX_REQUEST_VALUES // 2
    budget = RequestBudget()
    check_request(gateway_pb2.OutgoingEvent(payload=nulls(half)), "publish.events[0]", budget=budget)
    meta = struct_pb2.Struct()
    meta.update({"m": [None] * (half - 1)})  # with its key "m": the budget in all
    check_request(gateway_pb2.OutgoingEvent(meta=meta), "publish.events[1]", budget=budget)
    with pytest.raises(ServiceError) as caught:
        check_request(gateway_pb2.OutgoingEvent(payload=to_value([1])), "publish.events[2]", budget=budget)
    assert caught.value.message == (
        f"publish.events[2].payload: the request has more than {MAX_REQUEST_VALUES} JSON values"
    )
    shared = RequestBudget()
    check_json(nulls(half), "payload", budget=shared)
    with pytest.raises(ServiceError):
        check_json(nulls(half + 1), "payload", budget=shared)
    check_json(nulls(half + 1), "payload")  # a budget of its own


def test_a_part_of_a_request_is_checked_with_its_place_in_the_request() -> None:
    event = gateway_pb2.OutgoingEvent(event="e", payload=to_value({"x": math.inf}))
    with pytest.raises(ServiceError) as caught:
        check_request(event, "publish.events[3]")
    assert caught.value.metadata == {"field": "publish.events[3].payload.x"}


def test_connect_commands_checked_after_their_limits_hold_only_what_their_handlers_check() -> None:
    # Their handlers walk exactly these fields: a new field to check needs a handler's check first.
    walked_by_handler = {
        "publish": {"events"},  # each event whole (check_request per event, one budget for all)
        "edit": {"payload"},
        "ephemeral": {"data"},
        "subject_publish": {"data"},
    }
    assert set(CHECKED_AFTER_LIMITS) == set(walked_by_handler)
    commands = gateway_pb2.ConnectRequest.DESCRIPTOR.fields_by_name
    for command, fields in walked_by_handler.items():
        command_type = commands[command].message_type
        assert command_type is not None
        assert fields_to_check(command_type) == fields, command


# The plan: what is walked


def test_a_type_that_contains_itself_is_checked_all_the_way_down() -> None:
    node_type = dynamic_node_type()
    node = node_type()
    node.child.child.child.seq = 2**63
    assert refusal(node).message == "child.child.child.seq: must be below 2^63"
    check_request(node_type(child=node_type(child=node_type(seq=5))))


def dynamic_node_type() -> Any:
    """message Node { Node child = 1; uint64 seq = 2; } in a pool of its own."""
    proto = descriptor_pb2.FileDescriptorProto(name="test_node.proto", package="test.node", syntax="proto3")
    node = proto.message_type.add(name="Node")
    node.field.add(name="child", number=1, type=descriptor.FieldDescriptor.TYPE_MESSAGE, type_name=".test.node.Node")
    node.field.add(name="seq", number=2, type=descriptor.FieldDescriptor.TYPE_UINT64)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("test.node.Node"))


def test_requests_without_anything_to_check_pass() -> None:
    check_request(identity_pb2.LoginRequest(challenge_id="c", signature=b"s"))
    check_request(gateway_pb2.ConnectRequest(request_id="r", ping=gateway_pb2.PingCommand()))


# Every frame that can carry JSON can carry it at the limit


def all_message_types() -> Iterator[descriptor.Descriptor]:
    def walk(message_type: descriptor.Descriptor) -> Iterator[descriptor.Descriptor]:
        yield message_type
        for nested_type in message_type.nested_types:
            yield from walk(nested_type)

    for module in FILES:
        for message_type in module.DESCRIPTOR.message_types_by_name.values():
            yield from walk(message_type)


def json_paths(
    message_type: descriptor.Descriptor, seen: frozenset[str] = frozenset()
) -> Iterator[list[descriptor.FieldDescriptor]]:
    """Every path of fields from `message_type` to a Value, Struct or ListValue field."""
    for field in message_type.fields:
        sub = field.message_type
        if sub is None or sub.GetOptions().map_entry:
            continue
        if sub.full_name in JSON_TYPES:
            yield [field]
        elif sub.full_name not in seen:
            for rest in json_paths(sub, seen | {message_type.full_name}):
                yield [field, *rest]


def deepest_json(type_name: str, levels: int) -> message.Message:
    """JSON of `levels` containers in the form that costs the most protobuf levels: objects."""
    value = deep_value(levels)
    if type_name == struct_pb2.Value.DESCRIPTOR.full_name:
        return value
    if type_name == struct_pb2.Struct.DESCRIPTOR.full_name:
        return value.struct_value
    return deep_value(levels, "array").list_value


def carrying(
    message_type: descriptor.Descriptor, path: list[descriptor.FieldDescriptor], levels: int
) -> message.Message:
    root = message_factory.GetMessageClass(message_type)()
    holder = root
    for field in path[:-1]:
        holder = getattr(holder, field.name).add() if field.is_repeated else getattr(holder, field.name)
    last = path[-1]
    assert last.message_type is not None
    json = deepest_json(last.message_type.full_name, levels)
    target = getattr(holder, last.name).add() if last.is_repeated else getattr(holder, last.name)
    target.CopyFrom(json)
    return root


def message_depth(value: message.Message) -> int:
    """Message levels below `value`, as decoders count them (a map entry is a level of its own)."""
    deepest = 0
    for field, item in value.ListFields():
        if field.message_type is None:
            continue
        if field.message_type.GetOptions().map_entry:
            levels, items = 2, list(item.values())
        else:
            levels, items = 1, list(item) if field.is_repeated else [item]
        for sub in items:
            if isinstance(sub, message.Message):
                deepest = max(deepest, levels + message_depth(sub))
    return deepest


@pytest.mark.parametrize(("kind", "fits", "too_many"), [("object", 33, 34), ("array", 50, 51)])
def test_message_depth_counts_levels_as_the_decoder_does(kind: str, fits: int, too_many: int) -> None:
    decodable = deep_value(fits, kind)
    assert message_depth(decodable) <= DECODER_LIMIT
    assert struct_pb2.Value.FromString(decodable.SerializeToString()) == decodable
    undecodable = deep_value(too_many, kind)
    assert message_depth(undecodable) > DECODER_LIMIT
    with pytest.raises(message.DecodeError):
        struct_pb2.Value.FromString(undecodable.SerializeToString())


CARRIERS = [(message_type, path) for message_type in all_message_types() for path in json_paths(message_type)]


def test_the_carriers_include_the_deepest_frames() -> None:
    names = {f"{t.name}." + ".".join(f.name for f in path) for t, path in CARRIERS}
    assert "ConnectResponse.history.events.payload" in names
    assert "ConnectResponse.history.changes.payload" in names
    assert "ConnectResponse.reply.join.room.events.schema" in names
    assert "ConnectResponse.room_changed.change.room.events.schema" in names
    assert "SubscribeRoomResponse.changes.payload" in names
    assert "ListEventsSinceResponse.changed.payload" in names
    assert "GetEventResponse.event.meta" in names


@pytest.mark.parametrize(
    ("message_type", "path"),
    CARRIERS,
    ids=[f"{t.name}." + ".".join(f.name for f in p) for t, p in CARRIERS],
)
def test_every_message_carries_json_at_the_limit_and_decodes(
    message_type: descriptor.Descriptor, path: list[descriptor.FieldDescriptor]
) -> None:
    frame = carrying(message_type, path, MAX_JSON_DEPTH)
    assert message_depth(frame) <= DECODER_LIMIT - HEADROOM
    decoded = type(frame).FromString(frame.SerializeToString())
    assert decoded == frame


REQUESTS = [
    (method.input_type, path)
    for module in FILES
    for service in module.DESCRIPTOR.services_by_name.values()
    for method in service.methods
    for path in json_paths(method.input_type)
]


@pytest.mark.parametrize(
    ("message_type", "path"),
    REQUESTS,
    ids=[f"{t.name}." + ".".join(f.name for f in p) for t, p in REQUESTS],
)
def test_every_request_refuses_json_one_level_over_the_limit(
    message_type: descriptor.Descriptor, path: list[descriptor.FieldDescriptor]
) -> None:
    check_request(carrying(message_type, path, MAX_JSON_DEPTH))
    error = refusal(carrying(message_type, path, MAX_JSON_DEPTH + 1))
    expected = ".".join(f.name + ("[0]" if f.is_repeated else "") for f in path)
    assert error.metadata == {"field": expected}
    assert "levels deep" in error.message
