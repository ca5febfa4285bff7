"""Room definitions: from the config file or a CreateRoom request to a checked Room."""

from __future__ import annotations

import json
import re
from pathlib import Path

from google.protobuf import struct_pb2

from parley.room.v1 import room_pb2
from services.room.rules import ANY_EVENT, EventRules, check_schema, schema_bytes, schema_to_dict
from services.runtime.config import ConfigError, EventDefinition, RoomDefinition
from services.runtime.errors import ServiceError, invalid_field

ROOM_ID = re.compile(r"[a-z0-9_.:-]{1,64}")
# No leading "-": "-typing" means "all but typing" in a subscription list.
EVENT_NAME = re.compile(r"[A-Za-z0-9_.:][A-Za-z0-9_.:-]{0,63}|\*")
MAX_EVENTS = 100
VISIBILITY = {"public": room_pb2.ROOM_VISIBILITY_PUBLIC, "unlisted": room_pb2.ROOM_VISIBILITY_UNLISTED}


def check_room_id(room_id: str, field: str = "room_id") -> None:
    if not room_id:
        raise invalid_field(field, "is required")
    if not ROOM_ID.fullmatch(room_id):
        raise invalid_field(field, "must be 1–64 characters of a-z, 0-9, '_', '.', ':' and '-'")


# Room and event texts travel in every RoomChanged notice to every connection.
MAX_NAME_CHARS = 128
MAX_DESCRIPTION_CHARS = 1024


def _check_text(text: str, field: str, limit: int) -> None:
    if len(text) > limit:
        raise invalid_field(field, f"at most {limit} characters")


# Retention bounds: ten million events, a hundred years.
MAX_HISTORY_LIMIT = 10_000_000
MAX_HISTORY_AGE_SECONDS = 100 * 365 * 24 * 3600


def check_room(room: room_pb2.Room, max_schema_bytes: int = 0) -> int:
    """Validates a definition (ids, names, sizes, schemas' safety; not their compilation, see
    `compile_rules`); returns the bytes of JSON Schema it holds, at most `max_schema_bytes` (0: no cap)."""
    check_room_id(room.room_id)
    _check_text(room.name, "name", MAX_NAME_CHARS)
    _check_text(room.description, "description", MAX_DESCRIPTION_CHARS)
    if room.max_size < 0:
        raise invalid_field("max_size", "must not be negative")
    if len(room.events) > MAX_EVENTS:
        raise invalid_field("events", f"at most {MAX_EVENTS} events")
    seen: set[str] = set()
    schema_bytes = 0
    for i, event in enumerate(room.events):
        if not EVENT_NAME.fullmatch(event.name):
            raise invalid_field(f"events[{i}].name", "must be 1–64 characters of letters, digits, '_.:-', or '*'")
        _check_text(event.description, f"events[{i}].description", MAX_DESCRIPTION_CHARS)
        if event.name in seen:
            raise invalid_field(f"events[{i}].name", f"{event.name!r} is listed twice")
        seen.add(event.name)
        if not 0 <= event.history.limit <= MAX_HISTORY_LIMIT:
            raise invalid_field(f"events[{i}].history.limit", f"must be 0 (no limit) to {MAX_HISTORY_LIMIT:,}")
        if not 0 <= event.history.max_age_seconds <= MAX_HISTORY_AGE_SECONDS:
            raise invalid_field(
                f"events[{i}].history.max_age_seconds", f"must be 0 (no limit) to {MAX_HISTORY_AGE_SECONDS:,}"
            )
        if event.HasField("schema"):
            field = f"events[{i}].schema"
            schema_bytes += check_schema(schema_to_dict(event.schema), field, allow_regex=not room.creator)
            if max_schema_bytes and schema_bytes > max_schema_bytes:
                raise invalid_field(
                    field,
                    f"the room's schemas come to more than {max_schema_bytes} bytes of JSON, the most a room may hold",
                )
    for i, name in enumerate(room.default_subscriptions):
        if name != ANY_EVENT and not EVENT_NAME.fullmatch(name):
            raise invalid_field(f"default_subscriptions[{i}]", "is not an event name")
    return schema_bytes


def schema_bytes_of(room: room_pb2.Room) -> int:
    """The bytes of JSON Schema a room holds, as `check_room` counts them."""
    return sum(schema_bytes(schema_to_dict(event.schema)) for event in room.events if event.HasField("schema"))


async def compile_rules(room: room_pb2.Room) -> EventRules:
    """The room's rules with every schema compiled (off the event loop), naming the one that is not valid."""
    return await EventRules(room).compile()


def from_request(request: room_pb2.CreateRoomRequest, creator: str, max_schema_bytes: int) -> tuple[room_pb2.Room, int]:
    """The room a CreateRoom asks for, checked, with the bytes of JSON Schema it holds.

    Converting and measuring large schemas takes a while: call it off the event loop.
    """
    events = list(request.events)
    if not events and not request.read_only:
        events = [room_pb2.EventDefinition(name=ANY_EVENT)]
    if request.read_only and request.events:
        raise invalid_field("read_only", "a read-only room lists no events")
    room = room_pb2.Room(
        room_id=request.room_id,
        name=request.name or request.room_id,
        description=request.description,
        max_size=request.max_size,
        creator=creator,
        visibility=request.visibility or room_pb2.ROOM_VISIBILITY_PUBLIC,
        events=events,
        default_subscriptions=list(request.default_subscriptions) or [ANY_EVENT],
        no_presence=request.no_presence,
    )
    return room, check_room(room, max_schema_bytes)


def from_config(definition: RoomDefinition, config_dir: Path) -> room_pb2.Room:
    """A config room as a Room; ConfigError naming the room on anything wrong."""
    try:
        events = (
            [room_pb2.EventDefinition(name=ANY_EVENT)]
            if definition.events is None
            else [_event(e, config_dir) for e in definition.events]
        )
        sync = definition.sync_history_on_join
        room = room_pb2.Room(
            room_id=definition.id,
            name=definition.name or definition.id,
            description=definition.description,
            max_size=definition.max_size,
            visibility=VISIBILITY[definition.visibility],
            events=events,
            default_subscriptions=definition.default_subscriptions,
            sync_history_on_join=room_pb2.SyncOnJoin(all=sync is True, last=sync if not isinstance(sync, bool) else 0),
            no_presence=not definition.presence,
        )
        check_room(room)
        return room
    except ServiceError as exc:
        raise ConfigError(f"rooms.{definition.id}: {exc.message}") from exc


async def compile_declared(rooms: list[room_pb2.Room]) -> None:
    """Compiles the config rooms' schemas; ConfigError naming the room whose schema is not valid."""
    for room in rooms:
        try:
            await compile_rules(room)
        except ServiceError as exc:
            raise ConfigError(f"rooms.{room.room_id}: {exc.message}") from exc


def _event(event: EventDefinition, config_dir: Path) -> room_pb2.EventDefinition:
    schema = event.schema
    if event.schema_file:
        path = config_dir / event.schema_file
        try:
            schema = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ConfigError(f"event {event.name!r}: cannot read schema file {path}: {exc}") from exc
    definition = room_pb2.EventDefinition(
        name=event.name,
        description=event.description,
        history=room_pb2.HistoryPolicy(
            enabled=event.history.enabled, limit=event.history.limit, max_age_seconds=event.history.max_age_seconds
        ),
    )
    if schema is not None:
        if not isinstance(schema, dict):
            raise ConfigError(f"event {event.name!r}: a schema is a JSON object")
        struct = struct_pb2.Struct()
        struct.update(schema)
        definition.schema.CopyFrom(struct)
    return definition
