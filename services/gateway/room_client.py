"""The gateway's calls to the room service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from parley.room.v1 import room_pb2, room_pb2_grpc
from services.runtime.config import ServerConfig
from services.runtime.peer_client import PeerClient


class Memberships(Protocol):
    """The room service's memberships, as a servicer in this process offers them."""

    def join(self, request: room_pb2.JoinRoomRequest) -> room_pb2.JoinRoomResponse: ...

    def leave(self, request: room_pb2.LeaveRoomRequest) -> room_pb2.LeaveRoomResponse: ...


class RoomClient(PeerClient):
    @property
    def _stub(self) -> room_pb2_grpc.RoomServiceAsyncStub:
        return room_pb2_grpc.RoomServiceStub(self.channel)

    async def join(self, room_id: str, user_id: str, session_id: str) -> room_pb2.JoinRoomResponse:
        request = room_pb2.JoinRoomRequest(room_id=room_id, user_id=user_id, session_id=session_id)
        return await self.call(self._stub.JoinRoom, request, "join")

    async def renew_lease(self, gateway_id: str, ttl_seconds: float) -> None:
        request = room_pb2.RenewLeaseRequest(gateway_id=gateway_id, ttl_ms=int(ttl_seconds * 1000))
        await self.call(self._stub.RenewLease, request, "renew the gateway's lease")

    async def release_lease(self, gateway_id: str) -> None:
        """This gateway stops on purpose: its lease ends now, without the lapse warning."""
        request = room_pb2.RenewLeaseRequest(gateway_id=gateway_id, release=True)
        await self.call(self._stub.RenewLease, request, "give the gateway's lease back")

    async def leave(self, room_id: str, user_id: str, session_id: str) -> list[str]:
        request = room_pb2.LeaveRoomRequest(room_id=room_id, user_id=user_id, session_id=session_id)
        response: room_pb2.LeaveRoomResponse = await self.call(self._stub.LeaveRoom, request, "leave")
        return list(response.left_room_ids)

    async def get(self, room_id: str) -> room_pb2.Room:
        response: room_pb2.GetRoomResponse = await self.call(
            self._stub.GetRoom, room_pb2.GetRoomRequest(room_id=room_id), "get room"
        )
        return response.room

    async def participants(self, room_id: str) -> list[str]:
        """The users with a connection in the room (every gateway's)."""
        response: room_pb2.ListParticipantsResponse = await self.call(
            self._stub.ListParticipants, room_pb2.ListParticipantsRequest(room_id=room_id), "list participants"
        )
        return [participant.user_id for participant in response.participants]

    async def watch(self) -> AsyncIterator[room_pb2.WatchRoomsResponse]:
        async for response in self.server_stream(self._stub.WatchRooms, room_pb2.WatchRoomsRequest()):
            yield response


class InProcessRoomClient(RoomClient):
    """All-in-one: joins and leaves go straight to the room service in this process (a storm of
    joins makes no loopback calls); everything else takes the loopback channel like split mode."""

    def __init__(self, server: ServerConfig, secret: str, memberships: Memberships) -> None:
        super().__init__(server, secret, "")
        self._memberships = memberships

    async def join(self, room_id: str, user_id: str, session_id: str) -> room_pb2.JoinRoomResponse:
        return self._memberships.join(room_pb2.JoinRoomRequest(room_id=room_id, user_id=user_id, session_id=session_id))

    async def leave(self, room_id: str, user_id: str, session_id: str) -> list[str]:
        request = room_pb2.LeaveRoomRequest(room_id=room_id, user_id=user_id, session_id=session_id)
        return list(self._memberships.leave(request).left_room_ids)
