"""The room service's calls to the history service: a deleted room's log goes with it, and stays closed;
a private room's log is readable by its members only."""

from __future__ import annotations

from typing import Protocol

from parley.history.v1 import history_pb2, history_pb2_grpc
from services.runtime.peer_client import PeerClient


class RoomLogs(Protocol):
    async def close_log(self, room_id: str) -> int:
        """Erases the room's log and closes it (appends to it fail) until it is reopened; returns the events erased."""

    async def reopen_log(self, room_id: str) -> None:
        """Opens the room's log if it is closed (its next event starts a new epoch); an open log is kept."""

    async def set_readers(self, room_id: str, restricted: bool, user_ids: list[str]) -> None:
        """Only these users may read the room's log (when `restricted`), from now on."""


class HistoryLogs(PeerClient):
    async def close_log(self, room_id: str) -> int:
        return await self._drop(history_pb2.DropLogRequest(room_id=room_id, close=True), "erase the room's history")

    async def reopen_log(self, room_id: str) -> None:
        await self._drop(history_pb2.DropLogRequest(room_id=room_id, reopen_only=True), "open the room's history")

    async def set_readers(self, room_id: str, restricted: bool, user_ids: list[str]) -> None:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        request = history_pb2.SetLogReadersRequest(room_id=room_id, restricted=restricted, user_ids=user_ids)
        await self.call(stub.SetLogReaders, request, "set who may read the room's history")

    async def _drop(self, request: history_pb2.DropLogRequest, what: str) -> int:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        response: history_pb2.DropLogResponse = await self.call(stub.DropLog, request, what)
        return response.dropped_events
