"""The room service's calls to the history service: a deleted room's log goes with it."""

from __future__ import annotations

from typing import Protocol

from parley.history.v1 import history_pb2, history_pb2_grpc
from services.runtime.peer_client import PeerClient


class RoomLogs(Protocol):
    async def drop_log(self, room_id: str) -> int:
        """Erases the room's log (its next event starts a new epoch); returns the events erased."""
        ...


class HistoryLogs(PeerClient):
    async def drop_log(self, room_id: str) -> int:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        request = history_pb2.DropLogRequest(room_id=room_id)
        response: history_pb2.DropLogResponse = await self.call(stub.DropLog, request, "erase the room's history")
        return response.dropped_events
