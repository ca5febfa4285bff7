"""Fuzz requests for protobuf methods, built from their descriptors.

`requests(descriptor, scenes)` draws messages of any type, half of them wild
and half plausible:

- wild: any field set or not; scalars at their edges (0, -1, 2**31, 2**63,
  2**64-1), unknown enum values, unicode, empty and very long strings,
  repeated fields, any member of a oneof, and JSON values
  (google.protobuf.Value/Struct) with NaN, infinities and deep nesting;
- plausible: every field set, strings naming what the server knows (a
  scene: a room id with that room's handles and epoch) or new ids, and one
  of the payloads known to be hard to carry (NaN, nesting at the limit).
  Random requests rarely get past the first check; these reach the stores.

`encodings(...)` turns messages into the bytes sent on the wire: valid, or
truncated, bit-flipped, spliced, or random.

`edge_cases(descriptor, vocabulary, fresh)` is the systematic half: a sane
request with one field at a time set to each of its edge values, so a bug
that needs one bad field and everything else right is found every time.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from google.protobuf import descriptor, message, message_factory, struct_pb2
from hypothesis import strategies as st

FieldDescriptor = descriptor.FieldDescriptor
# Known values by field name ("room_id": ["lobby"]); "struct:<field>" keys give whole
# objects for Struct fields (e.g. JSON Schemas for "struct:schema").
Vocabulary = Mapping[str, Sequence[Any]]

INT32_EDGES = [0, 1, -1, 2**31 - 1, -(2**31), 1000]
INT64_EDGES = [0, 1, -1, 2**31, 2**53 + 1, 2**62, 2**63 - 1, -(2**63)]
UINT32_EDGES = [0, 1, 2**31, 2**32 - 1]
UINT64_EDGES = [0, 1, 2**31, 2**53 + 1, 2**62, 2**63 - 1, 2**63, 2**64 - 1]
# Enum numbers no contract defines.
UNKNOWN_ENUM_VALUES = [99, -1, 2**31 - 1]
ODD_STRINGS = ["", " ", "\x00", "a" * 129, "x" * 5000, "ü🎉\u200b", "../..", "%s%n", "*", "a*", "null"]
ODD_NUMBERS = [math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 2.0**53 + 1, 2.0**64]
# A protobuf parser stops at 100 nested messages; a JSON list adds two (Value,
# ListValue), an object three (Value, Struct, its map entry). A payload one frame
# carries at its limit may be one level too deep for a frame that nests it deeper:
# lists 47-50 and objects 31-33 deep straddle the limits of every frame.
LIST_EDGE_DEPTHS = range(47, 51)
OBJECT_EDGE_DEPTHS = range(31, 34)

_INTEGER_RANGES: dict[int, tuple[list[int], int, int]] = {
    FieldDescriptor.TYPE_INT32: (INT32_EDGES, -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SINT32: (INT32_EDGES, -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_SFIXED32: (INT32_EDGES, -(2**31), 2**31 - 1),
    FieldDescriptor.TYPE_INT64: (INT64_EDGES, -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SINT64: (INT64_EDGES, -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_SFIXED64: (INT64_EDGES, -(2**63), 2**63 - 1),
    FieldDescriptor.TYPE_UINT32: (UINT32_EDGES, 0, 2**32 - 1),
    FieldDescriptor.TYPE_FIXED32: (UINT32_EDGES, 0, 2**32 - 1),
    FieldDescriptor.TYPE_UINT64: (UINT64_EDGES, 0, 2**64 - 1),
    FieldDescriptor.TYPE_FIXED64: (UINT64_EDGES, 0, 2**64 - 1),
}


# Scalars


def integers(field_type: int) -> st.SearchStrategy[int]:
    edges, low, high = _INTEGER_RANGES[field_type]
    return st.one_of(st.sampled_from(edges), st.integers(0, 20), st.integers(low, high))


def identifiers() -> st.SearchStrategy[str]:
    """Strings shaped like ids and names (new room ids, usernames, event names)."""
    return st.from_regex(r"[a-z0-9_.:-]{1,16}", fullmatch=True)


def strings(known: Sequence[str] = ()) -> st.SearchStrategy[str]:
    wild = [st.sampled_from(ODD_STRINGS), st.text(max_size=12), identifiers()]
    # Known values weigh more: a request that names something real goes further.
    return st.one_of(st.sampled_from(known), st.sampled_from(known), *wild) if known else st.one_of(wild)


def binaries() -> st.SearchStrategy[bytes]:
    return st.one_of(st.binary(max_size=80), st.sampled_from([b"", b"\x00" * 32, b"\xff" * 64, b"k" * 5000]))


# JSON values


def nested(leaf: Any, depth: int, as_object: bool = False) -> Any:
    """`leaf` inside `depth` lists (or single-key objects)."""
    for _ in range(depth):
        leaf = {"k": leaf} if as_object else [leaf]
    return leaf


def json_leaves() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.none(),
        st.booleans(),
        st.sampled_from(ODD_NUMBERS),
        st.floats(allow_nan=True, allow_infinity=True),
        st.integers(-(2**53), 2**53).map(float),
        strings(),
    )


# Payloads known to be hard to carry: non-finite numbers, too large, nesting at the limits.
HARD_PAYLOADS: list[Any] = [
    math.nan,
    math.inf,
    -math.inf,
    [math.nan],
    {"text": math.inf},
    {"text": "x" * 70_000},
    *(nested(1.0, depth) for depth in LIST_EDGE_DEPTHS),
    *(nested(1.0, depth, as_object=True) for depth in OBJECT_EDGE_DEPTHS),
]


def hard_payloads() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(HARD_PAYLOADS),
        st.builds(nested, json_leaves(), st.sampled_from(LIST_EDGE_DEPTHS)),
        st.builds(nested, json_leaves(), st.sampled_from(OBJECT_EDGE_DEPTHS), st.just(True)),
    )


def json_values() -> st.SearchStrategy[Any]:
    """JSON-like values (None, bool, float, str, list, dict), NaN and deep ones included."""
    shallow = st.recursive(
        json_leaves(),
        lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)),
        max_leaves=12,
    )
    deep = st.one_of(
        st.builds(nested, json_leaves(), st.integers(0, 60)),
        st.builds(nested, json_leaves(), st.integers(0, 40), st.just(True)),
    )
    return st.one_of(shallow, shallow, hard_payloads(), deep)


def json_objects() -> st.SearchStrategy[dict[str, Any]]:
    return st.one_of(
        st.dictionaries(st.text(max_size=8), json_values(), max_size=4),
        st.builds(nested, json_leaves(), st.sampled_from(OBJECT_EDGE_DEPTHS), st.just(True)).map(lambda v: {"k": v}),
    )


def fill_value(target: struct_pb2.Value, value: Any) -> None:
    """Sets a Value from a JSON-like value without json_format, which refuses NaN."""
    if value is None:
        target.null_value = struct_pb2.NULL_VALUE
    elif isinstance(value, bool):
        target.bool_value = value
    elif isinstance(value, int | float):
        target.number_value = float(value)
    elif isinstance(value, str):
        target.string_value = value
    elif isinstance(value, list):
        target.list_value.SetInParent()
        for item in value:
            fill_value(target.list_value.values.add(), item)
    else:
        fill_struct(target.struct_value, value)


def fill_struct(target: struct_pb2.Struct, value: Mapping[str, Any]) -> None:
    target.SetInParent()
    for key, item in value.items():
        fill_value(target.fields[key], item)


# Messages


def enum_numbers(field: FieldDescriptor) -> list[int]:
    assert field.enum_type is not None
    return [value.number for value in field.enum_type.values]


def _well_known(field: FieldDescriptor, vocabulary: Vocabulary, plausible: bool) -> st.SearchStrategy[Any] | None:
    assert field.message_type is not None
    name = field.message_type.full_name
    if name == "google.protobuf.Value":
        return hard_payloads() if plausible else json_values()
    if name == "google.protobuf.Struct":
        objects = vocabulary.get(f"struct:{field.name}")
        if objects:
            return st.sampled_from(objects) if plausible else st.one_of(st.sampled_from(objects), json_objects())
        return json_objects()
    if name == "google.protobuf.ListValue":
        return st.lists(json_values(), max_size=4)
    return None


def _scalar(field: FieldDescriptor, vocabulary: Vocabulary, plausible: bool) -> st.SearchStrategy[Any]:
    if field.type == FieldDescriptor.TYPE_STRING:
        known = vocabulary.get(field.name, ())
        if plausible and known:
            return st.one_of(st.sampled_from(known), st.sampled_from(known), identifiers())
        return strings(known)
    if field.type == FieldDescriptor.TYPE_BYTES:
        return binaries()
    if field.type == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        floats = st.floats(width=64) if field.type == FieldDescriptor.TYPE_DOUBLE else st.floats(width=32)
        return st.one_of(st.sampled_from(ODD_NUMBERS), floats)
    if field.type == FieldDescriptor.TYPE_ENUM:
        return st.sampled_from(enum_numbers(field) + UNKNOWN_ENUM_VALUES)
    if plausible:  # sane, so the rest of the request is read, or an edge
        return st.one_of(st.integers(0, 20), st.sampled_from(_INTEGER_RANGES[field.type][0]))
    return integers(field.type)


def field_values(
    field: FieldDescriptor, vocabulary: Vocabulary, depth: int, plausible: bool
) -> st.SearchStrategy[Any] | None:
    """Values for one field (lists for repeated ones); None when nothing fits at this depth."""
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key = _scalar(entry.fields_by_name["key"], vocabulary, plausible)
        value = field_values(entry.fields_by_name["value"], vocabulary, depth - 1, plausible)
        return None if value is None else st.lists(st.tuples(key, value), max_size=3)
    if entry is not None:
        single = _well_known(field, vocabulary, plausible)
        if single is None:
            if depth <= 0:
                return None
            single = _message(entry, vocabulary, depth - 1, None, plausible)
    else:
        single = _scalar(field, vocabulary, plausible)
    if field.is_repeated:
        return st.lists(single, min_size=1, max_size=2) if plausible else st.lists(single, max_size=4)
    return single


def _set_field(target: message.Message, field: FieldDescriptor, value: Any) -> None:
    """Stores one drawn value (a list for repeated fields) in `target`."""
    container: Any = getattr(target, field.name)
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        value_is_message = entry.fields_by_name["value"].message_type is not None
        for key, item in value:
            if value_is_message:
                container[key].CopyFrom(item)
            else:
                container[key] = item
        return
    if entry is None:
        if field.is_repeated:
            container.extend(value)
        else:
            setattr(target, field.name, value)
        return
    for item in value if field.is_repeated else [value]:
        child = container.add() if field.is_repeated else container
        if entry.full_name == "google.protobuf.Value":
            fill_value(child, item)
        elif entry.full_name == "google.protobuf.Struct":
            fill_struct(child, item)
        elif entry.full_name == "google.protobuf.ListValue":
            child.SetInParent()
            for element in item:
                fill_value(child.values.add(), element)
        else:
            child.CopyFrom(item)


@st.composite
def _message(
    draw: st.DrawFn,
    desc: descriptor.Descriptor,
    vocabulary: Vocabulary,
    depth: int,
    oneof_member: str | None,
    plausible: bool,
) -> message.Message:
    target = message_factory.GetMessageClass(desc)()
    chosen: dict[str, str | None] = {}
    for oneof in desc.oneofs:
        names = [f.name for f in oneof.fields]
        if oneof_member in names:
            chosen[oneof.name] = oneof_member
        else:
            chosen[oneof.name] = draw(st.sampled_from(names if plausible else [None, *names]))
    for field in desc.fields:
        member_of = field.containing_oneof
        forced = plausible or (member_of is not None and chosen[member_of.name] == field.name)
        if member_of is not None and chosen[member_of.name] != field.name:
            continue
        values = field_values(field, vocabulary, depth, plausible)
        if values is None:
            if forced and field.message_type is not None and not field.is_repeated:
                getattr(target, field.name).SetInParent()
            continue
        # A field is left out now and then: absent and default values are inputs too.
        if forced or draw(st.integers(0, 3)) > 0:
            _set_field(target, field, draw(values))
    return target


def requests(
    desc: descriptor.Descriptor, scenes: Sequence[Vocabulary], depth: int = 3, oneof_member: str | None = None
) -> st.SearchStrategy[message.Message]:
    """Messages of type `desc`, wild or plausible, with nested messages down to `depth` levels.

    Each message draws its known values from one scene (one room, its handles, ...),
    so the ids in a request belong together. `oneof_member` forces that member of its
    oneof (e.g. a ConnectRequest's "join").
    """
    return st.tuples(st.sampled_from(scenes), st.booleans()).flatmap(
        lambda drawn: _message(desc, drawn[0], depth, oneof_member, drawn[1])
    )


@st.composite
def mutated(draw: st.DrawFn, encoded: bytes) -> bytes:
    """A valid encoding broken the ways a bad client or a bad network breaks it."""
    how = draw(st.sampled_from(["truncate", "flip", "splice", "append"]))
    if how == "truncate" and encoded:
        return encoded[: draw(st.integers(0, len(encoded) - 1))]
    if how == "flip" and encoded:
        position = draw(st.integers(0, len(encoded) - 1))
        bit = 1 << draw(st.integers(0, 7))
        return encoded[:position] + bytes([encoded[position] ^ bit]) + encoded[position + 1 :]
    if how == "splice":
        position = draw(st.integers(0, len(encoded)))
        return encoded[:position] + draw(st.binary(min_size=1, max_size=8)) + encoded[position:]
    return encoded + draw(st.binary(min_size=1, max_size=8))


def encodings(messages: st.SearchStrategy[message.Message]) -> st.SearchStrategy[bytes]:
    """Wire bytes: mostly valid encodings of `messages`, else mutated ones or random bytes."""
    valid = messages.map(lambda request: request.SerializeToString())
    return st.one_of(valid, valid, valid, valid.flatmap(mutated), st.binary(max_size=64))


def unknown_enum_values(request: message.Message) -> list[str]:
    """Enum fields of `request` (at any depth) set to numbers their enum does not define."""
    found = []
    for field, value in request.ListFields():
        if field.enum_type is not None:
            numbers = value if field.is_repeated else [value]
            found += [f"{field.full_name}={n}" for n in numbers if n not in field.enum_type.values_by_number]
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for child in value if field.is_repeated else [value]:
                found += unknown_enum_values(child)
    return found


def input_size(desc: descriptor.Descriptor, depth: int = 3) -> int:
    """How many scalar (and JSON) fields a message has, down to `depth` levels: its room for inputs."""
    size = 0
    for field in desc.fields:
        entry = field.message_type
        nested_message = entry is not None and not entry.full_name.startswith("google.")
        size += input_size(entry, depth - 1) if entry is not None and nested_message and depth > 0 else 1
    return size


# Edge cases: a sane request with one field at a time at an edge


class Fresh:
    """New ids ("fz1", "fz2", ...): they name nothing that exists yet."""

    def __init__(self) -> None:
        self._count = 0

    def __call__(self) -> str:
        self._count += 1
        return f"fz{self._count}"


def _sane_value(field: FieldDescriptor, vocabulary: Vocabulary, fresh: Callable[[], str], depth: int) -> Any:
    entry = field.message_type
    if entry is not None:
        if entry.GetOptions().map_entry:
            return None
        if entry.full_name == "google.protobuf.Value":
            return {"text": "hi"}
        if entry.full_name == "google.protobuf.Struct":
            objects = vocabulary.get(f"struct:{field.name}")
            return objects[0] if objects else {"note": "hi"}
        if entry.full_name == "google.protobuf.ListValue":
            return ["hi"]
        return sane_message(entry, vocabulary, fresh, depth - 1) if depth > 0 else None
    if field.type == FieldDescriptor.TYPE_STRING:
        known = vocabulary.get(field.name)
        return known[0] if known else fresh()
    if field.type == FieldDescriptor.TYPE_BYTES:
        return b"\x01" * 32
    if field.type == FieldDescriptor.TYPE_BOOL:
        return False
    if field.type == FieldDescriptor.TYPE_ENUM:
        return max(enum_numbers(field)[:2])
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return 1.0
    return 1


def _oneof_allows(field: FieldDescriptor, oneof_member: str | None) -> bool:
    """Whether `field` is the member its oneof uses: `oneof_member` if it is one, else the first."""
    oneof = field.containing_oneof
    if oneof is None:
        return True
    names = [member.name for member in oneof.fields]
    return field.name == (oneof_member if oneof_member in names else names[0])


def sane_message(
    desc: descriptor.Descriptor,
    vocabulary: Vocabulary,
    fresh: Callable[[], str],
    depth: int = 3,
    oneof_member: str | None = None,
) -> message.Message:
    """A request as a well-behaved client sends it: every field set, known names (or new
    ids), small numbers, a short text payload, one element in each repeated field."""
    target = message_factory.GetMessageClass(desc)()
    for field in desc.fields:
        if not _oneof_allows(field, oneof_member):
            continue
        value = _sane_value(field, vocabulary, fresh, depth)
        if value is not None:
            _set_field(target, field, [value] if field.is_repeated else value)
    return target


def edge_values(field: FieldDescriptor, vocabulary: Vocabulary) -> list[Any]:
    """The values worth trying in one field (its sane value aside)."""
    entry = field.message_type
    if entry is not None:
        if entry.full_name == "google.protobuf.Value":
            return HARD_PAYLOADS
        if entry.full_name == "google.protobuf.Struct":
            objects = list(vocabulary.get(f"struct:{field.name}", ()))[1:]
            deep = [{"k": nested(1.0, depth, as_object=True)} for depth in OBJECT_EDGE_DEPTHS]
            return [*objects, {"k": math.nan}, *deep]
        if entry.full_name == "google.protobuf.ListValue":
            return [[math.nan], nested(1.0, max(LIST_EDGE_DEPTHS))]
        return []
    if field.type == FieldDescriptor.TYPE_STRING:
        return ["", "x" * 5000, "\x00", "ü🎉", "a*"]
    if field.type == FieldDescriptor.TYPE_BYTES:
        return [b"", b"\xff" * 5000]
    if field.type == FieldDescriptor.TYPE_BOOL:
        return [True]
    if field.type == FieldDescriptor.TYPE_ENUM:
        return enum_numbers(field) + UNKNOWN_ENUM_VALUES[:2]
    if field.type in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return [math.nan, math.inf, -math.inf]
    return [edge for edge in _INTEGER_RANGES[field.type][0] if edge != 1]


def _leaf_paths(
    desc: descriptor.Descriptor, depth: int, oneof_member: str | None
) -> Iterator[tuple[FieldDescriptor, ...]]:
    for field in desc.fields:
        if oneof_member is not None and not _oneof_allows(field, oneof_member):
            continue
        entry = field.message_type
        if entry is not None and entry.GetOptions().map_entry:
            continue
        if entry is not None and not entry.full_name.startswith("google.protobuf."):
            if depth > 0:
                for path in _leaf_paths(entry, depth - 1, None):
                    yield (field, *path)
            continue
        yield (field,)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def edge_cases(
    desc: descriptor.Descriptor,
    vocabulary: Vocabulary,
    fresh: Callable[[], str],
    oneof_member: str | None = None,
) -> Iterator[tuple[str, message.Message]]:
    """(label, request): a sane request with one leaf field set to one of its edge values."""
    for path in _leaf_paths(desc, 3, oneof_member):
        leaf = path[-1]
        for edge in edge_values(leaf, vocabulary):
            request = sane_message(desc, vocabulary, fresh, oneof_member=oneof_member)
            parent: Any = request
            for field in path[:-1]:
                child = getattr(parent, field.name)
                if field.is_repeated and not child:  # under a oneof member the sane message left unset
                    parent = None
                    break
                parent = child[0] if field.is_repeated else child
            if parent is None:
                continue
            parent.ClearField(leaf.name)
            _set_field(parent, leaf, [edge] if leaf.is_repeated else edge)
            yield f"{'.'.join(field.name for field in path)}={_short(edge)}", request
