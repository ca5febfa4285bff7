"""Room definitions cached on the gateway, kept current by the room service's
change feed, so publishing never calls the room service."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

import grpc

from parley.room.v1 import room_pb2
from services.gateway.room_client import RoomClient
from services.room.rules import EventRules
from services.runtime.errors import ServiceError

log = logging.getLogger("parley.gateway")
RETRY_SECONDS = 1.0
ChangeHandler = Callable[[room_pb2.RoomChange], Awaitable[None]]


class RoomDirectory:
    def __init__(self) -> None:
        self._rooms: dict[str, tuple[room_pb2.Room, EventRules]] = {}

    def remember(self, room: room_pb2.Room) -> EventRules:
        cached = self._rooms.get(room.room_id)
        if cached is not None and cached[0].events == room.events:
            return cached[1]
        rules = EventRules(room)
        self._rooms[room.room_id] = (room, rules)
        return rules

    def forget(self, room_id: str) -> None:
        self._rooms.pop(room_id, None)

    def rules(self, room_id: str) -> EventRules | None:
        cached = self._rooms.get(room_id)
        return cached[1] if cached else None


async def follow_room_changes(client: RoomClient, directory: RoomDirectory, on_change: ChangeHandler) -> None:
    """Runs until cancelled: applies the room service's changes, reconnecting when it goes away.

    The snapshot each (re)connection starts with refreshes the cache silently;
    changes after it are passed to `on_change` (clients are told).
    """
    while True:
        snapshot_done = False
        try:
            async for response in client.watch():
                for change in response.changes:
                    if change.kind == room_pb2.RoomChange.KIND_DELETED:
                        directory.forget(change.room.room_id)
                    else:
                        directory.remember(change.room)
                    if snapshot_done:
                        await on_change(change)
                snapshot_done = snapshot_done or response.snapshot_complete
        except grpc.aio.AioRpcError as exc:
            log.info("room watch ended; retrying", extra={"code": exc.code().name})
        except ServiceError:
            log.exception("room watch failed; retrying")
        await asyncio.sleep(RETRY_SECONDS)
