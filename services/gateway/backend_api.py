"""The backend API's questions about connections, answered for the whole deployment.

Each gateway knows only its own connections; these ask every gateway of the
deployment (services/gateway/deployment.py) and merge the answers, so a
backend may call any gateway.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format

from parley.api.v1 import errors_pb2
from parley.gateway.v1 import gateway_pb2
from services.gateway.deployment import GatewayPeers
from services.gateway.realtime import Realtime
from services.runtime.errors import ServiceError, not_found, unavailable
from services.runtime.session_ids import gateway_of

CONNECTIONS = "connections"
ONLINE_USERS = "online_users"
USER_ROOMS = "user_rooms"
REMOVE_USER = "remove_user"
SEND = "send"


def session_not_found(session_id: str) -> ServiceError:
    return not_found(
        errors_pb2.ERROR_REASON_SESSION_NOT_FOUND,
        f"no open connection {session_id!r} in this deployment",
        session_id=session_id,
    )


class DeploymentBackendApi:
    def __init__(self, realtime: Realtime) -> None:
        self._realtime = realtime
        self.peers: GatewayPeers | None = None

    def _all(self) -> GatewayPeers:
        if self.peers is None:
            raise unavailable("this gateway is still starting")
        return self.peers

    async def answer(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        """This gateway's own part of an answer."""
        realtime = self._realtime
        user_id = str(args.get("user_id", ""))
        if op == CONNECTIONS:
            return {"connections": [json_format.MessageToDict(c) for c in realtime.list_connections(user_id)]}
        if op == ONLINE_USERS:
            return {"user_ids": realtime.connections.online_users()}
        if op == USER_ROOMS:
            return {"room_ids": realtime.user_rooms(user_id)}
        if op == REMOVE_USER:
            return {"room_ids": await realtime.remove_user_from_rooms(user_id)}
        if op == SEND:
            request = json_format.ParseDict(args, gateway_pb2.SendToConnectionRequest())
            try:
                realtime.send_to_connection(request)
            except ServiceError:
                return {"missing": True}
            return {}
        raise ValueError(f"unknown gateway question {op!r}")

    async def list_connections(self, user_id: str) -> list[gateway_pb2.Connection]:
        answers = await self._all().ask_all(CONNECTIONS, {"user_id": user_id})
        found = [
            json_format.ParseDict(c, gateway_pb2.Connection())
            for answer in answers
            for c in answer.get("connections", [])
        ]
        return sorted(found, key=lambda c: c.session_id)

    async def online_users(self) -> list[str]:
        return await self._union(ONLINE_USERS, {}, "user_ids")

    async def user_rooms(self, user_id: str) -> list[str]:
        return await self._union(USER_ROOMS, {"user_id": user_id}, "room_ids")

    async def remove_user_from_rooms(self, user_id: str) -> list[str]:
        return await self._union(REMOVE_USER, {"user_id": user_id}, "room_ids")

    async def send_to_connection(self, request: gateway_pb2.SendToConnectionRequest) -> None:
        args = json_format.MessageToDict(request, preserving_proto_field_name=True)
        answer = await self._all().ask(gateway_of(request.session_id), SEND, args)
        if answer is None or answer.get("missing"):
            raise session_not_found(request.session_id)

    async def _union(self, op: str, args: dict[str, Any], field: str) -> list[str]:
        answers = await self._all().ask_all(op, args)
        return sorted({str(item) for answer in answers for item in answer.get(field, [])})
