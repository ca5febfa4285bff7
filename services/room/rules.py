"""What a room accepts: listed events, `*`, read-only, and JSON Schemas.

Each schema is compiled once (fastjsonschema generates a validator function,
off the event loop, shared through `SCHEMAS`), so checking a publish costs
one dictionary lookup and one call. Used by the room service when rooms are
defined and by gateways on publish.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import fastjsonschema
import grpc
from google.protobuf import json_format, struct_pb2

from parley.api.v1 import errors_pb2
from parley.room.v1 import room_pb2
from services.room.schema_cache import SchemaCache
from services.runtime.errors import ServiceError, invalid_field

ANY_EVENT = "*"
Validator = Callable[[Any], Any]


def to_json(message: struct_pb2.Struct | struct_pb2.Value) -> Any:
    """A Struct or Value as Python JSON, integral numbers as ints (protobuf keeps only floats)."""
    return _integral(json_format.MessageToDict(message))


def schema_to_dict(schema: struct_pb2.Struct) -> dict[str, Any]:
    return to_json(schema)  # type: ignore[no-any-return]


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


MAX_SCHEMA_BYTES = 16 * 1024
# Compiled schemas kept for reuse beyond the rooms using them (a compiled
# schema takes roughly a hundred times its own size in memory).
MAX_CACHED_SCHEMA_BYTES = 1024 * 1024
# Regular expressions run on every publish on the gateway's event loop; a
# room creator could pick one that backtracks for ever.
REGEX_KEYWORDS = frozenset({"pattern", "patternProperties"})
NO_REGEX = "pattern and patternProperties are not allowed in rooms created at run time"


def schema_bytes(schema: dict[str, Any]) -> int:
    """A schema's size as compact JSON, the measure of every schema limit."""
    return len(json.dumps(schema, separators=(",", ":"), ensure_ascii=False).encode())


class SchemaProblem(Exception):
    """A schema refused; the message says why, the caller names the field."""


def check_schema_is_safe(schema: Any) -> bool:
    """Refuses what would make a validator reach outside; returns whether it uses regular expressions.

    Only local references ("#/...") are allowed: fastjsonschema would fetch any
    other `$ref` with urllib, synchronously, from inside the server.
    """
    uses_regex = False
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
                raise SchemaProblem('only local $ref ("#/...") is allowed')
            for key in ("$id", "id"):
                value = node.get(key)
                if isinstance(value, str) and ":" in value:
                    raise SchemaProblem(f"{key} may not name a URI")
            uses_regex = uses_regex or bool(REGEX_KEYWORDS & node.keys())
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)
    return uses_regex


def check_schema(schema: dict[str, Any], field: str, *, allow_regex: bool) -> int:
    """INVALID_ARGUMENT naming `field` for a schema too large or unsafe; returns its size."""
    size = schema_bytes(schema)
    if size > MAX_SCHEMA_BYTES:
        raise invalid_field(field, f"at most {MAX_SCHEMA_BYTES} bytes of JSON")
    try:
        uses_regex = check_schema_is_safe(schema)
    except SchemaProblem as exc:
        raise invalid_field(field, str(exc)) from exc
    if uses_regex and not allow_regex:
        raise invalid_field(field, NO_REGEX)
    return size


@dataclasses.dataclass(frozen=True)
class CompiledSchema:
    validator: Validator
    uses_regex: bool


def compile_schema(data: bytes) -> CompiledSchema:
    """A schema (an encoded Struct) compiled to a validator; SchemaProblem when it is not safe or valid.

    Runs on the cache's worker thread.
    """
    schema = schema_to_dict(struct_pb2.Struct.FromString(data))
    uses_regex = check_schema_is_safe(schema)
    try:
        validator: Validator = fastjsonschema.compile(schema)
    except Exception as exc:  # a malformed schema can fail anywhere in fastjsonschema ('properties': [])
        raise SchemaProblem(f"not a valid JSON Schema: {exc}") from exc
    return CompiledSchema(validator, uses_regex)


SCHEMAS: SchemaCache[CompiledSchema] = SchemaCache(compile_schema, MAX_CACHED_SCHEMA_BYTES)


class EventRules:
    """A room's rules; its schemas are compiled by `compile()`, which publishing awaits first."""

    def __init__(self, room: room_pb2.Room, schemas: SchemaCache[CompiledSchema] = SCHEMAS) -> None:
        self.room_id = room.room_id
        self.read_only = not room.events
        # Regex keywords are for rooms an operator declared, not run-time rooms.
        self._allow_regex = not room.creator
        self._schemas = schemas
        self._keeps_history = {event.name: event.history.enabled for event in room.events}
        self._retention = {event.name: (event.history.limit, event.history.max_age_seconds) for event in room.events}
        # Each schema in canonical form (deterministic encoding: map keys sorted), by event name.
        self._encoded = {
            event.name: (f"events[{i}].schema", event.schema.SerializeToString(deterministic=True))
            for i, event in enumerate(room.events)
            if event.HasField("schema")
        }
        self._validators: dict[str, Validator] | None = None if self._encoded else {}

    async def compile(self) -> EventRules:
        """Compiles the schemas, off the event loop and each distinct one once; names the one that is not valid."""
        if self._validators is None:
            validators = {}
            for name, (field, encoded) in self._encoded.items():
                try:
                    compiled = await self._schemas.compile(encoded)
                except SchemaProblem as exc:
                    raise invalid_field(field, str(exc)) from exc
                if compiled.uses_regex and not self._allow_regex:
                    raise invalid_field(field, NO_REGEX)
                validators[name] = compiled.validator
            self._validators = validators
        return self

    def keeps_history(self, event: str) -> bool:
        """Whether the event's definition (or the room's "*") enables history."""
        return self._keeps_history.get(event, self._keeps_history.get(ANY_EVENT, False))

    def retention(self, event: str) -> tuple[int, int]:
        """(keep the newest N, keep at most S seconds) for a kept event; 0 is no limit."""
        return self._retention.get(event, self._retention.get(ANY_EVENT, (0, 0)))

    def retention_policy(self) -> tuple[dict[str, tuple[int, int]], tuple[int, int]]:
        """`retention` of every kept event name the room defines, and of any other name ("*")."""
        named = {name: limits for name, limits in self._retention.items() if self._keeps_history[name]}
        other = named.pop(ANY_EVENT, (0, 0))
        return named, other

    def accepts(self, event: str) -> bool:
        return event in self._keeps_history or ANY_EVENT in self._keeps_history

    def check(self, event: str, payload: struct_pb2.Value) -> None:
        """Raises EVENT_NOT_ALLOWED or VALIDATION_FAILED (naming the field) for a client publish."""
        if self.read_only:
            raise not_allowed(f"room {self.room_id!r} is read-only for clients")
        if not self.accepts(event):
            raise not_allowed(f"room {self.room_id!r} does not accept event {event!r}")
        self.validate(event, payload)

    def validate(self, event: str, payload: struct_pb2.Value) -> None:
        """Checks the payload against the event's schema (services publish to read-only rooms too)."""
        if self._validators is None:
            raise RuntimeError(f"the rules of room {self.room_id!r} are used before compile()")
        validator = self._validators.get(event, self._validators.get(ANY_EVENT))
        if validator is None:
            return
        try:
            validator(to_json(payload))
        except fastjsonschema.JsonSchemaValueException as exc:
            field = "payload" + "".join(f".{part}" for part in exc.path[1:])
            raise invalid_field(field, exc.message.replace(exc.name or "data", "value", 1)) from exc
        except Exception as exc:  # a schema that breaks its own validator ("multipleOf": 0, a $ref cycle)
            raise invalid_field("payload", f"the event's schema cannot check it ({type(exc).__name__})") from exc


def not_allowed(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, errors_pb2.ERROR_REASON_EVENT_NOT_ALLOWED, message)
