"""GatewayService: server info, the Connect stream, the browser path, the backend API."""

from __future__ import annotations

from collections.abc import Sequence
from importlib import metadata

from parley.gateway.v1 import gateway_pb2
from services.gateway.backend_api import DeploymentBackendApi
from services.gateway.realtime import Realtime
from services.runtime.errors import invalid_field
from services.runtime.grpc_types import Context
from services.runtime.principal import require_user

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]
SEND_COMMAND = f"/{SERVICE.full_name}/SendCommand"


def version() -> str:
    try:
        return metadata.version("parley")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class GatewayServicer:
    def __init__(
        self,
        realtime: Realtime,
        backend: DeploymentBackendApi,
        mode: gateway_pb2.DeploymentMode.ValueType,
        services: Sequence[str],
        max_message_bytes: int,
    ) -> None:
        self._realtime = realtime
        self._backend = backend
        # The streams go straight to the realtime core: no extra layer per frame.
        self.Connect = realtime.connect
        self.SubscribeRoom = realtime.subscribe_room
        self.Subscribe = realtime.subscribe
        self._info = gateway_pb2.GetServerInfoResponse(
            version=version(), mode=mode, services=sorted(services), max_message_bytes=max_message_bytes
        )

    async def GetServerInfo(
        self, request: gateway_pb2.GetServerInfoRequest, context: Context
    ) -> gateway_pb2.GetServerInfoResponse:
        return self._info

    async def SendCommand(
        self, request: gateway_pb2.SendCommandRequest, context: Context
    ) -> gateway_pb2.SendCommandResponse:
        """Its command is checked as it runs, like a Connect command (CHECKED_BY_HANDLER), so that a refusal is
        answered in the Reply."""
        caller = require_user()
        return await self._realtime.browser.send(request, caller.user_id, caller.device_id)

    async def PublishToRoom(
        self, request: gateway_pb2.PublishToRoomRequest, context: Context
    ) -> gateway_pb2.PublishToRoomResponse:
        return await self._realtime.publish_to_room(request)

    async def EditRoomEvent(
        self, request: gateway_pb2.EditRoomEventRequest, context: Context
    ) -> gateway_pb2.EditRoomEventResponse:
        return await self._realtime.edit_room_event(request)

    async def DeleteRoomEvent(
        self, request: gateway_pb2.DeleteRoomEventRequest, context: Context
    ) -> gateway_pb2.DeleteRoomEventResponse:
        return await self._realtime.delete_room_event(request)

    async def ListConnections(
        self, request: gateway_pb2.ListConnectionsRequest, context: Context
    ) -> gateway_pb2.ListConnectionsResponse:
        return gateway_pb2.ListConnectionsResponse(connections=await self._backend.list_connections(request.user_id))

    async def ListOnlineUsers(
        self, request: gateway_pb2.ListOnlineUsersRequest, context: Context
    ) -> gateway_pb2.ListOnlineUsersResponse:
        return gateway_pb2.ListOnlineUsersResponse(user_ids=await self._backend.online_users())

    async def ListUserRooms(
        self, request: gateway_pb2.ListUserRoomsRequest, context: Context
    ) -> gateway_pb2.ListUserRoomsResponse:
        _require_user_id(request.user_id)
        return gateway_pb2.ListUserRoomsResponse(room_ids=await self._backend.user_rooms(request.user_id))

    async def IsInRoom(self, request: gateway_pb2.IsInRoomRequest, context: Context) -> gateway_pb2.IsInRoomResponse:
        _require_user_id(request.user_id)
        return gateway_pb2.IsInRoomResponse(in_room=request.room_id in await self._backend.user_rooms(request.user_id))

    async def RemoveUserFromRooms(
        self, request: gateway_pb2.RemoveUserFromRoomsRequest, context: Context
    ) -> gateway_pb2.RemoveUserFromRoomsResponse:
        _require_user_id(request.user_id)
        return gateway_pb2.RemoveUserFromRoomsResponse(
            room_ids=await self._backend.remove_user_from_rooms(request.user_id)
        )

    async def SendToConnection(
        self, request: gateway_pb2.SendToConnectionRequest, context: Context
    ) -> gateway_pb2.SendToConnectionResponse:
        if not request.session_id:
            raise invalid_field("session_id", "is required")
        await self._backend.send_to_connection(request)
        return gateway_pb2.SendToConnectionResponse()

    async def AskClient(self, request: gateway_pb2.AskClientRequest, context: Context) -> gateway_pb2.AskClientResponse:
        target = request.WhichOneof("target")
        if target is None or not getattr(request, target):
            raise invalid_field("target", "give user_id or session_id")
        answer = await self._backend.ask_client(request, context.time_remaining())
        return gateway_pb2.AskClientResponse(session_id=answer.session_id, data=answer.data)

    async def ListPeers(self, request: gateway_pb2.ListPeersRequest, context: Context) -> gateway_pb2.ListPeersResponse:
        caller = require_user()
        return gateway_pb2.ListPeersResponse(peers=await self._backend.peers_of(caller.user_id))


def _require_user_id(user_id: str) -> None:
    if not user_id:
        raise invalid_field("user_id", "is required")
