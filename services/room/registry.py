"""Every room: declared in the config file, or created at run time (persisted)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable

from parley.api.v1 import errors_pb2
from parley.room.v1 import room_pb2
from services.room.allowance import SchemaAllowance
from services.room.definitions import compile_rules, schema_bytes_of
from services.room.history_client import RoomLogs
from services.room.storage import RoomStorage
from services.runtime.change_feed import ChangeFeed
from services.runtime.errors import ServiceError, already_exists, not_found, permission_denied, unavailable
from services.runtime.principal import Principal
from services.runtime.uncancellable import uncancellable

CREATED = room_pb2.RoomChange.KIND_CREATED
DELETED = room_pb2.RoomChange.KIND_DELETED
MEMBERS_REMOVED = room_pb2.RoomChange.KIND_MEMBERS_REMOVED
JOIN_REQUESTED = room_pb2.RoomChange.KIND_JOIN_REQUESTED
CHANNEL_COMMITTED = room_pb2.RoomChange.KIND_CHANNEL_COMMITTED


def room_not_found(room_id: str) -> ServiceError:
    return not_found(errors_pb2.ERROR_REASON_ROOM_NOT_FOUND, f"no room {room_id!r}", room_id=room_id)


class RoomRegistry:
    """Every room; a run-time room's log in the history service is erased when it goes.

    A deleted room's history is gone: deleting erases its log and leaves it
    closed before the room goes (a publish racing the deletion is refused),
    and creating opens a closed log again, so a room re-created with the same
    id starts a new log with a new epoch. If the history service cannot be
    reached, neither happens (UNAVAILABLE).
    """

    def __init__(
        self, storage: RoomStorage, declared: list[room_pb2.Room], logs: RoomLogs, allowance: SchemaAllowance
    ) -> None:
        self._storage = storage
        self._logs = logs
        self._allowance = allowance
        self._declared = {room.room_id for room in declared}
        self._rooms = {room.room_id: room for room in declared}
        # Room ids being created or deleted: one change at a time per id.
        self._changing: set[str] = set()
        self._changes: ChangeFeed[room_pb2.RoomChange] = ChangeFeed("room watch")

    async def load(self) -> None:
        for room in await self._storage.all_rooms():
            if room.room_id not in self._rooms:
                self._rooms[room.room_id] = room
                # Only rooms a user created count against an allowance.
                self._allowance.record(room.room_id, room.creator, schema_bytes_of(room) if room.creator else 0)

    def get(self, room_id: str) -> room_pb2.Room:
        room = self._rooms.get(room_id)
        if room is None:
            raise room_not_found(room_id)
        return room

    def listed_after(self, after: str, limit: int) -> tuple[list[room_pb2.Room], bool]:
        """Public rooms with ids after `after` (in id order), and whether more follow."""
        listed = sorted(
            (r for rid, r in self._rooms.items() if rid > after and r.visibility == room_pb2.ROOM_VISIBILITY_PUBLIC),
            key=lambda r: r.room_id,
        )
        return listed[:limit], len(listed) > limit

    async def create(
        self, room: room_pb2.Room, schema_bytes: int, prepare: Callable[[], Awaitable[None]] | None = None
    ) -> room_pb2.Room:
        """Creates a run-time room holding `schema_bytes` of JSON Schema (counted against its creator);
        `prepare()` runs once the id is reserved, before the room is stored (e.g. who may read its log)."""
        room_id = room.room_id
        if room_id in self._rooms or room_id in self._declared or room_id in self._changing:
            raise already_exists(
                errors_pb2.ERROR_REASON_ROOM_EXISTS, f"room {room_id!r} already exists", room_id=room_id
            )
        self._allowance.take(room_id, room.creator, schema_bytes)
        self._changing.add(room_id)
        try:
            await compile_rules(room)
        except BaseException:
            self._abandon_creation(room_id)
            raise
        # Once its log is opened, the room is created, held and announced even if the caller
        # stops waiting: a row written but never held would be a room nobody sees or re-creates.
        return await uncancellable(self._commit_creation(room, prepare))

    async def _commit_creation(
        self, room: room_pb2.Room, prepare: Callable[[], Awaitable[None]] | None
    ) -> room_pb2.Room:
        room_id = room.room_id
        try:
            if prepare is not None:
                await prepare()
            # A deleted room's log was closed: open it again. A log a backend
            # wrote under this id (never a room's) stays: the room adopts it.
            await self._logs.reopen_log(room_id)
            now = time.time()
            if not await self._storage.insert_room(room, now):
                raise already_exists(
                    errors_pb2.ERROR_REASON_ROOM_EXISTS, f"room {room_id!r} already exists", room_id=room_id
                )
        except BaseException:
            self._abandon_creation(room_id)
            raise
        self._changing.discard(room_id)
        self._rooms[room_id] = room
        self._announce(room_pb2.RoomChange(kind=CREATED, room=room))
        return room

    def _abandon_creation(self, room_id: str) -> None:
        self._changing.discard(room_id)
        self._allowance.give_back(room_id)

    async def reopen_declared_logs(self) -> None:
        """Opens the logs of config rooms whose ids belonged to deleted run-time rooms (closed logs).

        Run once the history service can be reached; an open log is not touched.
        """
        for room_id in sorted(self._declared):
            await self._logs.reopen_log(room_id)

    async def delete(self, room_id: str, caller: Principal, *, by_admin: bool = False) -> room_pb2.Room:
        """Deletes a run-time room: by its creator, a service, or (`by_admin`) an admin the caller checked."""
        room = self.get(room_id)
        if room_id in self._declared:
            raise permission_denied(
                errors_pb2.ERROR_REASON_NOT_CREATOR, f"room {room_id!r} is declared in the config file; remove it there"
            )
        if not caller.is_service and not by_admin and (not room.creator or caller.user_id != room.creator):
            raise permission_denied(
                errors_pb2.ERROR_REASON_NOT_CREATOR, f"only the creator of {room_id!r} may delete it"
            )
        if room_id in self._changing:
            raise unavailable(f"room {room_id!r} is being deleted; try again")
        self._changing.add(room_id)
        try:
            # The log first: if history cannot be reached, nothing changes. It stays
            # closed: what gateways that have not heard of the deletion yet publish
            # is refused (ROOM_NOT_FOUND), not kept under the deleted id.
            await self._logs.close_log(room_id)
            try:
                await self._storage.delete_room(room_id)
            except Exception:
                # The room stays, so its log must take events again (those it had are gone).
                with contextlib.suppress(ServiceError):
                    await self._logs.reopen_log(room_id)
                raise
        finally:
            self._changing.discard(room_id)
        del self._rooms[room_id]
        self._allowance.give_back(room_id)
        self._announce(room_pb2.RoomChange(kind=DELETED, room=room))
        return room

    async def watch(self) -> AsyncIterator[list[room_pb2.RoomChange] | None]:
        """Yields the snapshot, then None (snapshot complete), then batches of changes."""
        async with self._changes.watching() as batches:
            yield [room_pb2.RoomChange(kind=CREATED, room=r) for r in self._rooms.values()]
            yield None
            async for batch in batches:
                yield batch

    def members_removed(self, room: room_pb2.Room, user_ids: list[str]) -> None:
        """Tells every gateway: these users' connections leave the private room."""
        self._announce(room_pb2.RoomChange(kind=MEMBERS_REMOVED, room=room, user_ids=user_ids))

    def join_requested(self, room: room_pb2.Room, user_id: str) -> None:
        """Tells every gateway: members of the channel's room hear that `user_id` asks to join."""
        self._announce(room_pb2.RoomChange(kind=JOIN_REQUESTED, room=room, user_ids=[user_id]))

    def channel_committed(self, room: room_pb2.Room) -> None:
        """Tells every gateway: members of the channel's room should read its new commit."""
        self._announce(room_pb2.RoomChange(kind=CHANNEL_COMMITTED, room=room))

    def _announce(self, change: room_pb2.RoomChange) -> None:
        self._changes.announce(change)
