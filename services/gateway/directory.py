"""Room definitions cached on the gateway, kept current by the room service's
change feed, so publishing never calls the room service.

Remembering a room is cheap: its schemas are compiled when it is first
published to (`EventRules.compile`, off the event loop). Clients are told of
changes without the schemas (`notice_of`): GetRoom serves them.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import grpc

from parley.room.v1 import room_pb2
from services.gateway.room_client import RoomClient
from services.room.rules import EventRules

log = logging.getLogger("parley.gateway")
RETRY_SECONDS = 1.0
ChangeHandler = Callable[[room_pb2.RoomChange], Awaitable[None]]


class RoomDirectory:
    def __init__(self) -> None:
        self._rooms: dict[str, tuple[room_pb2.Room, EventRules]] = {}
        # How often each room id was deleted: a join that saw the count change
        # while it was under way joined a room that no longer exists.
        self._deletions: dict[str, int] = {}

    def remember(self, room: room_pb2.Room) -> EventRules:
        """Caches the room; its rules compile their schemas when first awaited (`EventRules.compile`)."""
        cached = self._rooms.get(room.room_id)
        if cached is not None and cached[0].events == room.events:
            self._rooms[room.room_id] = (room, cached[1])
            return cached[1]
        rules = EventRules(room)
        self._rooms[room.room_id] = (room, rules)
        return rules

    def forget(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)
        self._deletions[room_id] = self._deletions.get(room_id, 0) + 1

    def deletions(self, room_id: str) -> int:
        return self._deletions.get(room_id, 0)

    def rules(self, room_id: str) -> EventRules | None:
        cached = self._rooms.get(room_id)
        return cached[1] if cached else None

    def room(self, room_id: str) -> room_pb2.Room | None:
        cached = self._rooms.get(room_id)
        return cached[0] if cached else None

    def room_ids(self) -> set[str]:
        return set(self._rooms)

    def tells_presence(self, room_id: str) -> bool:
        """Whether members hear of joins and leaves (the room's `no_presence` unset)."""
        room = self.room(room_id)
        return room is None or not room.no_presence


async def follow_room_changes(
    client: RoomClient,
    directory: RoomDirectory,
    on_change: ChangeHandler,
    on_resync: Callable[[], Awaitable[None]],
    on_snapshot: Callable[[], None],
) -> None:
    """Runs until cancelled: applies the room service's changes, reconnecting when it goes away.

    The first snapshot fills the cache. After a reconnection, the snapshot is
    compared with the cache (rooms created or deleted meanwhile are announced),
    and `on_resync` registers this gateway's memberships again, in case the
    room service restarted and forgot them. `on_snapshot` follows every
    snapshot applied.
    """
    synced_before = False
    while True:
        try:
            async for _ in _watch(client, directory, on_change, announce_snapshot=synced_before):
                on_snapshot()
                if synced_before:
                    await on_resync()
                synced_before = True
        except grpc.aio.AioRpcError as exc:
            log.info("room watch ended; retrying", extra={"code": exc.code().name})
        except Exception:
            log.exception("room watch failed; retrying")
        await asyncio.sleep(RETRY_SECONDS)


async def _watch(
    client: RoomClient, directory: RoomDirectory, on_change: ChangeHandler, announce_snapshot: bool
) -> AsyncIterator[None]:
    """Applies one watch; yields once, when its snapshot has been applied."""
    snapshot: dict[str, room_pb2.Room] = {}
    snapshot_done = False
    async for response in client.watch():
        for change in response.changes:
            if snapshot_done:
                await _apply(directory, change, on_change)
            else:
                snapshot[change.room.room_id] = change.room
        if response.snapshot_complete and not snapshot_done:
            snapshot_done = True
            await _apply_snapshot(directory, snapshot, on_change, announce_snapshot)
            yield


async def _apply_snapshot(
    directory: RoomDirectory, snapshot: dict[str, room_pb2.Room], on_change: ChangeHandler, announce: bool
) -> None:
    known = directory.room_ids()
    for room_id in known - snapshot.keys():
        room = directory.room(room_id) or room_pb2.Room(room_id=room_id)
        await _apply(directory, room_pb2.RoomChange(kind=room_pb2.RoomChange.KIND_DELETED, room=room), on_change)
    for room_id, room in snapshot.items():
        if announce and room_id not in known:
            await _apply(directory, room_pb2.RoomChange(kind=room_pb2.RoomChange.KIND_CREATED, room=room), on_change)
        else:
            directory.remember(room)


async def _apply(directory: RoomDirectory, change: room_pb2.RoomChange, on_change: ChangeHandler) -> None:
    if change.kind == room_pb2.RoomChange.KIND_DELETED:
        directory.forget(change.room.room_id)
    else:
        directory.remember(change.room)
    await on_change(notice_of(change))


def notice_of(change: room_pb2.RoomChange) -> room_pb2.RoomChange:
    """The change as clients are told of it: the room without its events' JSON Schemas.

    Schemas can be large and every connection gets every change; a client
    that wants them asks GetRoom.
    """
    if not any(event.HasField("schema") for event in change.room.events):
        return change
    notice = room_pb2.RoomChange()
    notice.CopyFrom(change)
    for event in notice.room.events:
        event.ClearField("schema")
    return notice
