"""The gateway's calls to the room service, as Parley's own service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from parley.errors import error_info
from parley.room.v1 import room_pb2, room_pb2_grpc
from services.runtime.channels import open_channel
from services.runtime.config import ServerConfig
from services.runtime.errors import ServiceError, unavailable
from services.runtime.tokens import service_token

T = TypeVar("T")
CALL_TIMEOUT_SECONDS = 10.0


def relay(exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
    """The room service's error as a ServiceError with the same code and reason."""
    reason, metadata = error_info(exc.trailing_metadata() or ())
    if not reason:
        return unavailable(f"{what}: the room service did not answer ({exc.code().name}: {exc.details()})")
    return ServiceError.named(exc.code(), reason, exc.details() or "", **metadata)


class RoomClient:
    def __init__(self, server: ServerConfig, secret: str, address: str = "") -> None:
        self.address = address
        self._server = server
        self._metadata = (("authorization", f"Bearer {service_token('parley', secret)}"),)
        self._channel: grpc.aio.Channel | None = None

    @property
    def _stub(self) -> Any:
        if self._channel is None:
            self._channel = open_channel(self.address, self._server)
        return room_pb2_grpc.RoomServiceStub(self._channel)

    async def _call(self, method: Callable[..., Awaitable[T]], request: object, what: str) -> T:
        try:
            return await method(request, metadata=self._metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise relay(exc, what) from exc

    async def join(self, room_id: str, user_id: str, session_id: str) -> room_pb2.JoinRoomResponse:
        request = room_pb2.JoinRoomRequest(room_id=room_id, user_id=user_id, session_id=session_id)
        return await self._call(self._stub.JoinRoom, request, "join")

    async def leave(self, room_id: str, user_id: str, session_id: str) -> list[str]:
        request = room_pb2.LeaveRoomRequest(room_id=room_id, user_id=user_id, session_id=session_id)
        response: room_pb2.LeaveRoomResponse = await self._call(self._stub.LeaveRoom, request, "leave")
        return list(response.left_room_ids)

    async def get(self, room_id: str) -> room_pb2.Room:
        response: room_pb2.GetRoomResponse = await self._call(
            self._stub.GetRoom, room_pb2.GetRoomRequest(room_id=room_id), "get room"
        )
        return response.room

    async def watch(self) -> AsyncIterator[room_pb2.WatchRoomsResponse]:
        call = self._stub.WatchRooms(room_pb2.WatchRoomsRequest(), metadata=self._metadata)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
