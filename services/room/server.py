"""The room service: servicer and module."""

from __future__ import annotations

from parley.room.v1 import room_pb2, room_pb2_grpc
from services.room.registry import RoomRegistry
from services.runtime.config import Config
from services.runtime.errors import invalid_field
from services.runtime.grpc_types import Context
from services.runtime.paging import clamp_page_size, decode_page_token, encode_page_token
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry

SERVICE = room_pb2.DESCRIPTOR.services_by_name["RoomService"]


class RoomServicer(room_pb2_grpc.RoomServiceServicer):
    def __init__(self, registry: RoomRegistry) -> None:
        self._registry = registry

    async def ListRooms(self, request: room_pb2.ListRoomsRequest, context: Context) -> room_pb2.ListRoomsResponse:
        size = clamp_page_size(request.page_size)
        rooms, more = self._registry.listed_after(decode_page_token(request.page_token), size)
        next_token = encode_page_token(rooms[-1].room_id) if more else ""
        return room_pb2.ListRoomsResponse(rooms=rooms, next_page_token=next_token)

    async def GetRoom(self, request: room_pb2.GetRoomRequest, context: Context) -> room_pb2.GetRoomResponse:
        if not request.room_id:
            raise invalid_field("room_id", "is required")
        return room_pb2.GetRoomResponse(room=self._registry.get(request.room_id))


async def room_module(config: Config) -> ServiceModule:
    servicer = RoomServicer(RoomRegistry(config.rooms))
    return ServiceModule(
        services=[SERVICE],
        register=lambda server: room_pb2_grpc.add_RoomServiceServicer_to_server(servicer, server),
    )


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The room service alone; verification keys come from `peers.identity`."""
    return await serve_modules(
        config, [room_module], process_name="room", identity_address=config.peers.identity, telemetry=telemetry
    )
