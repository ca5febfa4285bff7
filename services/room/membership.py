"""Who is in which room, by user and connection (live state, kept in memory)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import grpc

from parley.api.v1 import errors_pb2
from services.runtime.errors import ServiceError


def room_full(room_id: str, max_size: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.FAILED_PRECONDITION,
        errors_pb2.ERROR_REASON_ROOM_FULL,
        f"room {room_id!r} is full ({max_size} participants)",
        room_id=room_id,
    )


class Membership:
    """room -> user -> that user's connections in the room."""

    def __init__(self) -> None:
        self._rooms: dict[str, dict[str, set[str]]] = defaultdict(dict)

    def join(self, room_id: str, max_size: int, user_id: str, session_id: str) -> bool:
        """Adds the connection; True when it is the user's first in the room."""
        members = self._rooms[room_id]
        sessions = members.get(user_id)
        if sessions is None:
            if max_size and len(members) >= max_size:
                raise room_full(room_id, max_size)
            members[user_id] = {session_id}
            return True
        sessions.add(session_id)
        return False

    def leave(self, room_id: str | None, user_id: str, session_id: str | None) -> list[str]:
        """Removes a connection (or all of the user's), in one room or all; returns rooms the user left."""
        left = []
        for rid in [room_id] if room_id else self.rooms_of(user_id):
            members = self._rooms.get(rid)
            sessions = members.get(user_id) if members else None
            if members is None or sessions is None:
                continue
            if session_id:
                sessions.discard(session_id)
            if not session_id or not sessions:
                del members[user_id]
                left.append(rid)
            if not members:
                del self._rooms[rid]
        return left

    def size(self, room_id: str) -> int:
        return len(self._rooms.get(room_id, ()))

    def participants(self, room_id: str) -> dict[str, set[str]]:
        return {user: set(sessions) for user, sessions in self._rooms.get(room_id, {}).items()}

    def rooms_of(self, user_id: str) -> list[str]:
        return sorted(rid for rid, members in self._rooms.items() if user_id in members)

    def drop_sessions(self, belongs: Callable[[str], bool]) -> list[tuple[str, str]]:
        """Removes every connection for which `belongs(session_id)`; returns the (room, user) pairs left empty."""
        left = []
        for room_id, members in list(self._rooms.items()):
            for user_id, sessions in list(members.items()):
                gone = {s for s in sessions if belongs(s)}
                if not gone:
                    continue
                sessions -= gone
                if not sessions:
                    del members[user_id]
                    left.append((room_id, user_id))
            if not members:
                del self._rooms[room_id]
        return left

    def drop_room(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)
