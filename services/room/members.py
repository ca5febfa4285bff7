"""Who may use a private room: its members and their roles, stored, held in memory, told to the history service.

Every change reaches the history service first (who may read the room's
log), then storage, then memory: if history cannot be reached, nothing
changes (UNAVAILABLE), and a removed member is refused by history before
anything else forgets them.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import grpc

from parley.api.v1 import errors_pb2
from parley.room.v1 import room_pb2
from services.room.history_client import RoomLogs
from services.room.storage import MemberRow, RoomStorage
from services.runtime.errors import ServiceError, permission_denied
from services.runtime.principal import Principal

ADMIN = room_pb2.MEMBER_ROLE_ADMIN
MEMBER = room_pb2.MEMBER_ROLE_MEMBER


def not_a_member(room_id: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.PERMISSION_DENIED,
        errors_pb2.ERROR_REASON_NOT_A_MEMBER,
        f"room {room_id!r} is private and you are not a member",
        room_id=room_id,
    )


def is_private(room: room_pb2.Room) -> bool:
    return room.visibility == room_pb2.ROOM_VISIBILITY_PRIVATE


class RoomMembers:
    def __init__(self, storage: RoomStorage, logs: RoomLogs) -> None:
        self._storage = storage
        self._logs = logs
        self._rooms: dict[str, dict[str, MemberRow]] = {}

    async def load(self) -> None:
        for row in await self._storage.all_members():
            self._rooms.setdefault(row.room_id, {})[row.user_id] = row

    def is_member(self, room_id: str, user_id: str) -> bool:
        return user_id in self._rooms.get(room_id, {})

    def may_use(self, room: room_pb2.Room, caller: Principal) -> bool:
        """Services and members may use a private room; anyone may use the others."""
        return not is_private(room) or caller.is_service or self.is_member(room.room_id, caller.user_id)

    def check_use(self, room: room_pb2.Room, caller: Principal) -> None:
        if not self.may_use(room, caller):
            raise not_a_member(room.room_id)

    def members(self, room_id: str) -> list[room_pb2.RoomMember]:
        rows = sorted(self._rooms.get(room_id, {}).values(), key=lambda row: row.user_id)
        return [
            room_pb2.RoomMember(user_id=r.user_id, role=room_pb2.MemberRole.ValueType(r.role), add_time_ms=r.added_ms)
            for r in rows
        ]

    def check_admin(self, room: room_pb2.Room, caller: Principal) -> None:
        if caller.is_service:
            return
        row = self._rooms.get(room.room_id, {}).get(caller.user_id)
        if row is None:
            raise not_a_member(room.room_id)
        if row.role != ADMIN:
            raise permission_denied(
                errors_pb2.ERROR_REASON_NOT_ADMIN, f"only admins of {room.room_id!r} change its members"
            )

    async def open(self, room_id: str, creator: str) -> None:
        """A new private room: only its creator (when a user created it) may read it from now on."""
        await self._logs.set_readers(room_id, True, [creator] if creator else [])

    async def created(self, room_id: str, creator: str) -> None:
        """The room exists: its creator is its first admin."""
        if creator:
            await self.add(room_id, [creator], ADMIN)

    async def add(self, room_id: str, user_ids: Sequence[str], role: int) -> list[room_pb2.RoomMember]:
        current = self._rooms.get(room_id, {})
        now_ms = int(time.time() * 1000)
        rows = [MemberRow(room_id, u, role, current[u].added_ms if u in current else now_ms) for u in user_ids]
        await self._logs.set_readers(room_id, True, sorted(set(current) | set(user_ids)))
        await self._storage.put_members(rows)
        members = self._rooms.setdefault(room_id, {})
        for row in rows:
            members[row.user_id] = row
        return [m for m in self.members(room_id) if m.user_id in set(user_ids)]

    async def remove(self, room_id: str, user_ids: Sequence[str]) -> list[str]:
        current = self._rooms.get(room_id, {})
        removed = sorted(set(user_ids) & set(current))
        if not removed:
            return []
        await self._logs.set_readers(room_id, True, sorted(set(current) - set(removed)))
        await self._storage.remove_members(room_id, removed)
        for user_id in removed:
            current.pop(user_id, None)
        return removed

    async def dropped(self, room_id: str) -> None:
        """The room was deleted (its rows with it): a room created again under its id starts open."""
        self._rooms.pop(room_id, None)
        await self._logs.set_readers(room_id, False, [])
