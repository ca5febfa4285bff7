"""Rules every decoded request obeys, whatever its type, checked in one place.

- An enum field holds a value its enum defines (proto3 enums are open: an
  unknown number would otherwise be stored as is).
- An unsigned 64-bit integer is below 2^63: the stores keep signed 64-bit
  integers, and a larger one cannot even be compared with them.
- A JSON value (google.protobuf.Value, Struct, ListValue) is one JSON can
  express: finite numbers, a defined null, a kind set on every element. And it
  nests at most MAX_JSON_DEPTH arrays and objects deep, so that every frame
  that carries it later can still be decoded (see MAX_JSON_DEPTH).

Per message type, the fields that can lead to one of these are worked out once;
a request is walked along its set fields only, skipping whole subtrees that
cannot hold anything to check.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any, cast

from google.protobuf import descriptor, message, struct_pb2

from services.runtime.errors import invalid_field

# Protobuf decoders (python upb, Java, C++) refuse a message nested more than
# 100 levels below its root. Each level of a JSON object costs 3 of them (Value >
# Struct > map entry > Value), of an array 2 (Value > ListValue > Value). The
# deepest frames put a payload 3 levels down (ConnectResponse > HistoryBatch >
# Event > Value) and a room's schema 5 (ConnectResponse > Reply > JoinResult >
# Room > EventDefinition > Struct): at 24 levels of objects they reach 75 and 76,
# leaving room for frames to grow.
MAX_JSON_DEPTH = 24
UNSIGNED_LIMIT = 2**63

_JSON_TYPES = frozenset(
    {
        struct_pb2.Value.DESCRIPTOR.full_name,
        struct_pb2.Struct.DESCRIPTOR.full_name,
        struct_pb2.ListValue.DESCRIPTOR.full_name,
    }
)
_UNSIGNED_64 = frozenset({descriptor.FieldDescriptor.TYPE_UINT64, descriptor.FieldDescriptor.TYPE_FIXED64})
_PLAIN_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,31}")
_SHOWN_KEY_CHARS = 32
_NULL_VALUE = struct_pb2.NULL_VALUE


def check_request(request: message.Message) -> None:
    """Raises INVALID_ARGUMENT / VALIDATION_FAILED naming the first field that breaks a rule."""
    plan = _plans.get(request.DESCRIPTOR.full_name)
    if plan is None:
        plan = _plan_of(cast(descriptor.Descriptor, request.DESCRIPTOR))
    if plan:
        _check_message(request, plan, "")


def check_json(value: struct_pb2.Value | struct_pb2.Struct | struct_pb2.ListValue, field: str) -> None:
    """The JSON rules alone, for a payload that does not come in a request (a hook's result)."""
    try:
        if isinstance(value, struct_pb2.Value):
            _check_value(value, 0)
        elif isinstance(value, struct_pb2.Struct):
            _check_struct(value, 1)
        else:
            _check_list(value, 1)
    except _TooDeep:
        raise invalid_field(field, f"nests arrays and objects more than {MAX_JSON_DEPTH} levels deep") from None
    except _NotJson as problem:
        raise invalid_field(field + "".join(reversed(problem.steps)), problem.message) from None


# What to check in a field; `plan` (for messages) maps field numbers to rules.
@dataclasses.dataclass(frozen=True)
class _Rule:
    name: str
    kind: str  # "enum", "unsigned", "json", "message" or "map"
    repeated: bool
    enum_values: frozenset[int] = frozenset()
    enum_name: str = ""
    plan: dict[int, _Rule] | None = None
    # For map fields: the rule of the entry's value (keys are strings or integers).
    map_value: _Rule | None = None
    map_key_unsigned: bool = False


_plans: dict[str, dict[int, _Rule]] = {}
_planning: set[str] = set()


def _plan_of(message_type: descriptor.Descriptor) -> dict[int, _Rule]:
    """The rules of a message type's fields that can lead to something to check."""
    plan = _plans.get(message_type.full_name)
    if plan is not None:
        return plan
    plan = {}
    # A type that contains itself sees this same dict, filled below.
    _plans[message_type.full_name] = plan
    _planning.add(message_type.full_name)
    try:
        for field in message_type.fields:
            rule = _rule_of(field)
            if rule is not None:
                plan[field.number] = rule
    finally:
        _planning.discard(message_type.full_name)
    return plan


def _rule_of(field: descriptor.FieldDescriptor, name: str | None = None) -> _Rule | None:
    name = field.name if name is None else name
    repeated = field.is_repeated
    if field.type == descriptor.FieldDescriptor.TYPE_ENUM:
        enum = field.enum_type
        assert enum is not None
        shown = enum.full_name.removeprefix(f"{enum.file.package}.")
        return _Rule(name, "enum", repeated, frozenset(enum.values_by_number), shown)
    if field.type in _UNSIGNED_64:
        return _Rule(name, "unsigned", repeated)
    if field.type != descriptor.FieldDescriptor.TYPE_MESSAGE:
        return None
    message_type = field.message_type
    assert message_type is not None
    if message_type.GetOptions().map_entry:
        value_rule = _rule_of(message_type.fields_by_name["value"], name)
        key_unsigned = message_type.fields_by_name["key"].type in _UNSIGNED_64
        if value_rule is None and not key_unsigned:
            return None
        return _Rule(name, "map", False, map_value=value_rule, map_key_unsigned=key_unsigned)
    if message_type.full_name in _JSON_TYPES:
        return _Rule(name, "json", repeated)
    in_progress = message_type.full_name in _planning
    plan = _plan_of(message_type)
    if not plan and not in_progress:
        return None
    return _Rule(name, "message", repeated, plan=plan)


def _check_message(request: message.Message, plan: dict[int, _Rule], prefix: str) -> None:
    for field, value in request.ListFields():
        rule = plan.get(field.number)
        if rule is None:
            continue
        path = prefix + rule.name
        if rule.kind == "map":
            _check_map(rule, value, path)
        elif rule.repeated:
            for i, item in enumerate(value):
                _check_one(rule, item, f"{path}[{i}]")
        else:
            _check_one(rule, value, path)


def _check_map(rule: _Rule, entries: Any, path: str) -> None:
    for key in entries:
        shown = f"{path}[{_quoted(key) if isinstance(key, str) else key}]"
        if rule.map_key_unsigned and key >= UNSIGNED_LIMIT:
            raise invalid_field(shown, "keys must be below 2^63")
        if rule.map_value is not None:
            _check_one(rule.map_value, entries[key], shown)


def _check_one(rule: _Rule, value: Any, path: str) -> None:
    if rule.kind == "message":
        assert rule.plan is not None
        if rule.plan:
            _check_message(value, rule.plan, path + ".")
    elif rule.kind == "json":
        check_json(value, path)
    elif rule.kind == "enum":
        if value not in rule.enum_values:
            raise invalid_field(path, f"{value} is not a {rule.enum_name} value")
    elif value >= UNSIGNED_LIMIT:
        raise invalid_field(path, "must be below 2^63")


class _TooDeep(Exception):
    pass


class _NotJson(Exception):
    """A value JSON cannot express; `steps` is its path from the innermost step out."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.steps: list[str] = []


# The walk builds no paths: a problem collects its path on the way out.
def _check_value(value: struct_pb2.Value, depth: int) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise _NotJson(f"{_number_name(number)} is not a JSON number (JSON numbers are finite)")
    elif kind == "struct_value":
        _check_struct(value.struct_value, depth + 1)
    elif kind == "list_value":
        _check_list(value.list_value, depth + 1)
    elif kind == "null_value":
        if value.null_value != _NULL_VALUE:
            raise _NotJson(f"{value.null_value} is not a NullValue value")
    elif kind is None:
        raise _NotJson("has no value (JSON null is null_value)")


def _check_struct(struct: struct_pb2.Struct, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _TooDeep
    for key, item in struct.fields.items():
        try:
            _check_value(item, depth)
        except _NotJson as problem:
            problem.steps.append(_key(key))
            raise


def _check_list(values: struct_pb2.ListValue, depth: int) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _TooDeep
    for i, item in enumerate(values.values):
        try:
            _check_value(item, depth)
        except _NotJson as problem:
            problem.steps.append(f"[{i}]")
            raise


def _key(key: str) -> str:
    """A key as a path step: `.name`, or `["any key"]` (long keys cut short: the path goes in a header)."""
    return f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{_quoted(key)}]"


def _quoted(key: str) -> str:
    shown = key if len(key) <= _SHOWN_KEY_CHARS else f"{key[:_SHOWN_KEY_CHARS]}…"
    return json.dumps(shown, ensure_ascii=False)


def _number_name(number: float) -> str:
    if math.isnan(number):
        return "NaN"
    return "Infinity" if number > 0 else "-Infinity"
