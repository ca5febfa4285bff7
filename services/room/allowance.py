"""How many bytes of JSON Schema each user's live rooms hold, against a per-user allowance.

A room's bytes are taken before it is created and given back when it is
deleted (or its creation fails), so concurrent creations cannot overdraw.
Rooms without a creator (config rooms, rooms a service created) are not counted.
"""

from __future__ import annotations

import grpc

from parley.api.v1 import errors_pb2
from services.runtime.errors import ServiceError


def quota_exceeded(held: int, wanted: int, allowance: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors_pb2.ERROR_REASON_QUOTA_EXCEEDED,
        f"your rooms hold {held} bytes of JSON Schema; this one's {wanted} would pass the {allowance} one user "
        "may hold (delete a room you created to free some)",
        quota="room_service.max_schema_bytes_per_user",
    )


class SchemaAllowance:
    def __init__(self, per_user: int) -> None:
        self._per_user = per_user
        self._held: dict[str, int] = {}
        # What each counted room took: room id -> (creator, bytes).
        self._rooms: dict[str, tuple[str, int]] = {}

    def held(self, user_id: str) -> int:
        return self._held.get(user_id, 0)

    def record(self, room_id: str, creator: str, size: int) -> None:
        """Counts a room that exists already (loaded at start), whatever the allowance."""
        if creator and size:
            self._rooms[room_id] = (creator, size)
            self._held[creator] = self.held(creator) + size

    def take(self, room_id: str, creator: str, size: int) -> None:
        """Counts a room about to be created; QUOTA_EXCEEDED if it does not fit."""
        held = self.held(creator)
        if creator and size and held + size > self._per_user:
            raise quota_exceeded(held, size, self._per_user)
        self.record(room_id, creator, size)

    def give_back(self, room_id: str) -> None:
        creator, size = self._rooms.pop(room_id, ("", 0))
        if creator:
            left = self.held(creator) - size
            if left:
                self._held[creator] = left
            else:
                del self._held[creator]
