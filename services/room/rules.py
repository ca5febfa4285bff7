"""What a room accepts: listed events, `*`, read-only, and JSON Schemas.

Compiled once per room definition (fastjsonschema generates a validator
function), so checking a publish costs one dictionary lookup and one call.
Used by the room service when rooms are defined and by gateways on publish.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import fastjsonschema
import grpc
from google.protobuf import json_format, struct_pb2

from parley.api.v1 import errors_pb2
from parley.room.v1 import room_pb2
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
# Regular expressions run on every publish on the gateway's event loop; a
# room creator could pick one that backtracks for ever.
REGEX_KEYWORDS = frozenset({"pattern", "patternProperties"})


def check_schema_is_safe(schema: Any, field: str, *, allow_regex: bool) -> None:
    """Refuses what would make a validator reach outside or stall the server.

    Only local references ("#/...") are allowed: fastjsonschema would fetch any
    other `$ref` with urllib, synchronously, from inside the server.
    """
    if len(json.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise invalid_field(field, f"at most {MAX_SCHEMA_BYTES} bytes of JSON")
    pending = [schema]
    while pending:
        node = pending.pop()
        if isinstance(node, dict):
            ref = node.get("$ref")
            if ref is not None and not (isinstance(ref, str) and ref.startswith("#")):
                raise invalid_field(field, 'only local $ref ("#/...") is allowed')
            for key in ("$id", "id", "$schema"):
                value = node.get(key)
                if isinstance(value, str) and ":" in value and key != "$schema":
                    raise invalid_field(field, f"{key} may not name a URI")
            if not allow_regex and REGEX_KEYWORDS & node.keys():
                raise invalid_field(field, "pattern and patternProperties are not allowed in rooms created at run time")
            pending.extend(node.values())
        elif isinstance(node, list):
            pending.extend(node)


def compile_schema(schema: dict[str, Any], field: str, *, allow_regex: bool = True) -> Validator:
    """A validator for `schema`; INVALID_ARGUMENT naming `field` when the schema is not valid or safe."""
    check_schema_is_safe(schema, field, allow_regex=allow_regex)
    try:
        validator: Validator = fastjsonschema.compile(schema)
    except (fastjsonschema.JsonSchemaDefinitionException, TypeError, ValueError, OSError) as exc:
        raise invalid_field(field, f"not a valid JSON Schema: {exc}") from exc
    return validator


class EventRules:
    def __init__(self, room: room_pb2.Room) -> None:
        self.room_id = room.room_id
        self.read_only = not room.events
        # Regex keywords are for rooms an operator declared, not run-time rooms.
        allow_regex = not room.creator
        self._keeps_history = {event.name: event.history.enabled for event in room.events}
        self._retention = {event.name: (event.history.limit, event.history.max_age_seconds) for event in room.events}
        self._validators: dict[str, Validator | None] = {
            event.name: compile_schema(schema_to_dict(event.schema), f"events[{i}].schema", allow_regex=allow_regex)
            if event.HasField("schema")
            else None
            for i, event in enumerate(room.events)
        }

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
        return event in self._validators or ANY_EVENT in self._validators

    def check(self, event: str, payload: struct_pb2.Value) -> None:
        """Raises EVENT_NOT_ALLOWED or VALIDATION_FAILED (naming the field) for a client publish."""
        if self.read_only:
            raise not_allowed(f"room {self.room_id!r} is read-only for clients")
        if not self.accepts(event):
            raise not_allowed(f"room {self.room_id!r} does not accept event {event!r}")
        self.validate(event, payload)

    def validate(self, event: str, payload: struct_pb2.Value) -> None:
        """Checks the payload against the event's schema (services publish to read-only rooms too)."""
        validator = self._validators.get(event, self._validators.get(ANY_EVENT))
        if validator is None:
            return
        try:
            validator(to_json(payload))
        except fastjsonschema.JsonSchemaValueException as exc:
            field = "payload" + "".join(f".{part}" for part in exc.path[1:])
            raise invalid_field(field, exc.message.replace(exc.name or "data", "value", 1)) from exc


def not_allowed(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.FAILED_PRECONDITION, errors_pb2.ERROR_REASON_EVENT_NOT_ALLOWED, message)
