"""The rooms declared in the config file."""

from __future__ import annotations

from parley.api.v1 import errors_pb2
from parley.room.v1 import room_pb2
from services.runtime.config import RoomDefinition
from services.runtime.errors import not_found

_VISIBILITY = {
    "public": room_pb2.ROOM_VISIBILITY_PUBLIC,
    "unlisted": room_pb2.ROOM_VISIBILITY_UNLISTED,
}


class RoomRegistry:
    def __init__(self, definitions: list[RoomDefinition]) -> None:
        self._rooms = {d.id: _room(d) for d in sorted(definitions, key=lambda d: d.id)}

    def get(self, room_id: str) -> room_pb2.Room:
        room = self._rooms.get(room_id)
        if room is None:
            raise not_found(errors_pb2.ERROR_REASON_ROOM_NOT_FOUND, f"no room {room_id!r}", room_id=room_id)
        return room

    def listed_after(self, after: str, limit: int) -> tuple[list[room_pb2.Room], bool]:
        """Public rooms with ids after `after`, and whether more follow."""
        listed = [
            r for rid, r in self._rooms.items() if rid > after and r.visibility == room_pb2.ROOM_VISIBILITY_PUBLIC
        ]
        return listed[:limit], len(listed) > limit


def _room(definition: RoomDefinition) -> room_pb2.Room:
    return room_pb2.Room(
        room_id=definition.id,
        name=definition.name or definition.id,
        description=definition.description,
        max_size=definition.max_size,
        visibility=_VISIBILITY[definition.visibility],
    )
