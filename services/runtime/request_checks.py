"""Rules every decoded request obeys, whatever its type, checked in one place.

- An enum field holds a value its enum defines (proto3 enums are open: an
  unknown number would otherwise be stored as is).
- An unsigned 64-bit integer is below 2^63: the stores keep signed 64-bit
  integers, and a larger one cannot even be compared with them.
- A JSON value (google.protobuf.Value, Struct, ListValue) is one JSON can
  express: finite numbers, a defined null, a kind set on every element of an
  array or object. And it nests at most MAX_JSON_DEPTH arrays and objects deep,
  so that every frame that carries it later can still be decoded (see
  MAX_JSON_DEPTH).
- A Value field left unset (a payload or data a client leaves out; present but
  empty reads the same in every decoder) is not walked: it means JSON null, and
  the handler that keeps or relays it writes it as null (null_if_unset), since
  Go's protojson (grpcurl) cannot print a Value without a kind.
- A request holds at most MAX_REQUEST_VALUES JSON values, and as many entries
  of repeated fields that are walked: the walk runs on the event loop, and this
  bounds what one request can cost (see MAX_REQUEST_VALUES). A request checked
  in parts (a Connect publish, event by event) passes one RequestBudget to each.

Per message type, the fields that can lead to one of these are worked out once;
a request is walked along its set fields only, skipping whole subtrees that
cannot hold anything to check.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import sys
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
# Walking a JSON value costs about 0.4 µs (up to 0.7 µs in objects): this many
# cost at most ~25 ms of event loop. The densest JSON (`[null, null, ...]`, 4
# bytes a value) fits 16,371 values in 64 KiB, the default gateway payload limit
# and room_service.max_schema_bytes_per_room: any payload or room's schemas
# within those fits twice over. A Connect publish checks its events one by one,
# once their count, sizes and the sender's rate allow them, all against one
# budget: the whole command walks at most this many. Services (whose batches
# hold many users' payloads) are not held to it: service calls are trusted, so
# in split mode the history service walks a client's publish again, unbounded,
# when the gateway appends it as a service (the gateway bounded it first).
MAX_REQUEST_VALUES = 32_768
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


class RequestBudget:
    """What is left to walk of one request: JSON values, and entries of repeated fields.

    `limit` None: no bound (a service's request, trusted; see MAX_REQUEST_VALUES).
    """

    def __init__(self, limit: int | None = MAX_REQUEST_VALUES) -> None:
        self.limit = limit
        self.json_values = sys.maxsize if limit is None else limit
        self.entries = self.json_values


def check_request(
    request: message.Message,
    within: str = "",
    *,
    max_values: int | None = MAX_REQUEST_VALUES,
    budget: RequestBudget | None = None,
) -> None:
    """Raises INVALID_ARGUMENT / VALIDATION_FAILED naming the first field that breaks a rule.

    `within` is where `request` sits in a larger one (e.g. "publish.events[2]"),
    named before the fields. The walk spends `budget`, shared by the parts of
    one request checked apart; without one, a budget of `max_values` (None: no
    bound, for a service's request: service calls are trusted).
    """
    plan = _plans.get(request.DESCRIPTOR.full_name)
    if plan is None:
        plan = _plan_of(cast(descriptor.Descriptor, request.DESCRIPTOR))
    if plan:
        spent = RequestBudget(max_values) if budget is None else budget
        _check_message(request, plan, f"{within}." if within else "", spent)


def check_json(
    value: struct_pb2.Value | struct_pb2.Struct | struct_pb2.ListValue,
    field: str,
    *,
    max_values: int | None = MAX_REQUEST_VALUES,
    budget: RequestBudget | None = None,
) -> None:
    """The JSON rules alone, for one value: a command's payload, a hook's result (budget as check_request's)."""
    _check_json(value, field, RequestBudget(max_values) if budget is None else budget)


def null_if_unset(value: struct_pb2.Value) -> struct_pb2.Value:
    """`value`, or JSON null if it has no kind: what a payload or data field left unset is kept and relayed as."""
    if value.WhichOneof("kind") is not None:
        return value
    return struct_pb2.Value(null_value=_NULL_VALUE)


def fields_to_check(message_type: descriptor.Descriptor) -> frozenset[str]:
    """The fields of a message type that can hold something these rules refuse."""
    return frozenset(rule.name for rule in _plan_of(message_type).values())


def _check_json(
    value: struct_pb2.Value | struct_pb2.Struct | struct_pb2.ListValue, field: str, budget: RequestBudget
) -> None:
    try:
        if isinstance(value, struct_pb2.Value):
            # A field's own Value may be unset (JSON null, see null_if_unset); an element may not.
            if value.WhichOneof("kind") is not None:
                _check_value(value, 0, budget)
        elif isinstance(value, struct_pb2.Struct):
            _check_struct(value, 1, budget)
        else:
            _check_list(value, 1, budget)
    except _TooDeep:
        raise invalid_field(field, f"nests arrays and objects more than {MAX_JSON_DEPTH} levels deep") from None
    except _Refused as problem:
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


def _check_message(request: message.Message, plan: dict[int, _Rule], prefix: str, budget: RequestBudget) -> None:
    for field, value in request.ListFields():
        rule = plan.get(field.number)
        if rule is None:
            continue
        path = prefix + rule.name
        if rule.kind == "map" or rule.repeated:
            budget.entries -= len(value)
            if budget.entries < 0:
                raise invalid_field(path, f"the request has more than {budget.limit} repeated entries")
        if rule.kind == "map":
            _check_map(rule, value, path, budget)
        elif rule.repeated:
            for i, item in enumerate(value):
                _check_one(rule, item, f"{path}[{i}]", budget)
        else:
            _check_one(rule, value, path, budget)


def _check_map(rule: _Rule, entries: Any, path: str, budget: RequestBudget) -> None:
    for key in entries:
        shown = f"{path}[{_quoted(key) if isinstance(key, str) else key}]"
        if rule.map_key_unsigned and key >= UNSIGNED_LIMIT:
            raise invalid_field(shown, "keys must be below 2^63")
        if rule.map_value is not None:
            _check_one(rule.map_value, entries[key], shown, budget)


def _check_one(rule: _Rule, value: Any, path: str, budget: RequestBudget) -> None:
    if rule.kind == "message":
        assert rule.plan is not None
        if rule.plan:
            _check_message(value, rule.plan, path + ".", budget)
    elif rule.kind == "json":
        _check_json(value, path, budget)
    elif rule.kind == "enum":
        if value not in rule.enum_values:
            raise invalid_field(path, f"{value} is not a {rule.enum_name} value")
    elif value >= UNSIGNED_LIMIT:
        raise invalid_field(path, "must be below 2^63")


class _TooDeep(Exception):
    """A JSON value nests deeper than MAX_JSON_DEPTH (caught and reported with the field's path)."""


class _Refused(Exception):
    """A value JSON cannot express, or one too many; `steps` is its path from the innermost step out."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message
        self.steps: list[str] = []


# The walk builds no paths: a problem collects its path on the way out.
def _check_value(value: struct_pb2.Value, depth: int, budget: RequestBudget) -> None:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if not math.isfinite(number):
            raise _Refused(f"{_number_name(number)} is not a JSON number (JSON numbers are finite)")
    elif kind == "struct_value":
        _check_struct(value.struct_value, depth + 1, budget)
    elif kind == "list_value":
        _check_list(value.list_value, depth + 1, budget)
    elif kind == "null_value":
        if value.null_value != _NULL_VALUE:
            raise _Refused(f"{value.null_value} is not a NullValue value")
    elif kind is None:
        raise _Refused("has no value (JSON null is null_value)")


def _check_struct(struct: struct_pb2.Struct, depth: int, budget: RequestBudget) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _TooDeep
    fields = struct.fields
    _take(budget, len(fields))
    for key, item in fields.items():
        try:
            _check_value(item, depth, budget)
        except _Refused as problem:
            problem.steps.append(_key(key))
            raise


def _check_list(values: struct_pb2.ListValue, depth: int, budget: RequestBudget) -> None:
    if depth > MAX_JSON_DEPTH:
        raise _TooDeep
    items = values.values
    _take(budget, len(items))
    for i, item in enumerate(items):
        try:
            _check_value(item, depth, budget)
        except _Refused as problem:
            problem.steps.append(f"[{i}]")
            raise


def _take(budget: RequestBudget, values: int) -> None:
    """Counts a container's values before walking them: one too many is refused unwalked."""
    budget.json_values -= values
    if budget.json_values < 0:
        raise _Refused(f"the request has more than {budget.limit} JSON values")


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
