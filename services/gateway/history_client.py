"""The gateway's calls to the history service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from parley.history.v1 import history_pb2, history_pb2_grpc
from services.runtime.peer_client import PeerClient


class HistoryAppender(Protocol):
    """The history service as the gateway uses it: over gRPC, or in process (all-in-one)."""

    async def append(
        self, room_id: str, events: Sequence[history_pb2.NewEvent], no_echo_session: str = ""
    ) -> history_pb2.AppendEventsResponse: ...

    async def since(self, room_id: str, after_seq: int, limit: int) -> history_pb2.ListEventsSinceResponse: ...

    async def get(self, room_id: str, handle: str) -> history_pb2.GetEventResponse: ...

    async def edit(self, request: history_pb2.EditEventRequest) -> history_pb2.EditEventResponse: ...

    async def delete(self, request: history_pb2.DeleteEventRequest) -> history_pb2.DeleteEventResponse: ...

    async def set_retention(self, request: history_pb2.SetRetentionRequest) -> None: ...

    async def close(self) -> None: ...


class HistoryClient(PeerClient):
    async def append(
        self, room_id: str, events: Sequence[history_pb2.NewEvent], no_echo_session: str = ""
    ) -> history_pb2.AppendEventsResponse:
        """Returns once the events are durable (and announced), with their sequences."""
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        request = history_pb2.AppendEventsRequest(room_id=room_id, events=events, no_echo_session=no_echo_session)
        return await self.call(stub.AppendEvents, request, "append to history")

    async def since(self, room_id: str, after_seq: int, limit: int) -> history_pb2.ListEventsSinceResponse:
        """Kept events after `after_seq`, oldest first, with the log's epoch and newest sequence."""
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        request = history_pb2.ListEventsSinceRequest(room_id=room_id, after_seq=after_seq, limit=limit)
        return await self.call(stub.ListEventsSince, request, "read history")

    async def get(self, room_id: str, handle: str) -> history_pb2.GetEventResponse:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        request = history_pb2.GetEventRequest(room_id=room_id, handle=handle)
        return await self.call(stub.GetEvent, request, "read history")

    async def edit(self, request: history_pb2.EditEventRequest) -> history_pb2.EditEventResponse:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        return await self.call(stub.EditEvent, request, "edit an event")

    async def delete(self, request: history_pb2.DeleteEventRequest) -> history_pb2.DeleteEventResponse:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        return await self.call(stub.DeleteEvent, request, "delete an event")

    async def set_retention(self, request: history_pb2.SetRetentionRequest) -> None:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        await self.call(stub.SetRetention, request, "set retention")

    async def watch_logs(self) -> AsyncIterator[history_pb2.WatchLogsResponse]:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        async for response in self.server_stream(stub.WatchLogs, history_pb2.WatchLogsRequest()):
            yield response
