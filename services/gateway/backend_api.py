"""The backend API's questions about connections, answered for the whole deployment.

Each gateway knows only its own connections; these ask every gateway of the
deployment (services/gateway/deployment.py) and merge the answers, so a
backend may call any gateway.
"""

from __future__ import annotations

import json
import time
from typing import Any, NoReturn

import grpc
from google.protobuf import json_format, struct_pb2

from parley.api.v1 import errors_pb2
from parley.gateway.v1 import gateway_pb2
from services.gateway.client_questions import Answer, deadline_exceeded
from services.gateway.deployment import GatewayPeers
from services.gateway.realtime import Realtime
from services.runtime.errors import ServiceError, not_found, unavailable
from services.runtime.session_ids import gateway_of

CONNECTIONS = "connections"
ONLINE_USERS = "online_users"
USER_ROOMS = "user_rooms"
REMOVE_USER = "remove_user"
SEND = "send"
ASK_CLIENT = "ask_client"
# An AskClient without a deadline waits this long at most.
DEFAULT_ASK_SECONDS = 30.0
# Past the deadline, how long a gateway's "too late" may take to come back over the bus.
RELAY_MARGIN_SECONDS = 1.0


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
        if op == ASK_CLIENT:
            return await self._ask_here(args)
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

    async def ask_client(self, request: gateway_pb2.AskClientRequest, seconds_left: float | None) -> Answer:
        """Asks the user's connections (or the one), wherever they are; the first answer."""
        deadline = time.time() + (DEFAULT_ASK_SECONDS if seconds_left is None else seconds_left)
        args = json_format.MessageToDict(request, preserving_proto_field_name=True)
        args["deadline"] = deadline
        within = max(0.0, deadline - time.time()) + RELAY_MARGIN_SECONDS
        if request.session_id:
            answer = await self._all().ask(gateway_of(request.session_id), ASK_CLIENT, args, within)
            answers = [answer] if answer is not None else []
        else:
            answers = await self._all().ask_all(ASK_CLIENT, args, within, enough=lambda a: "session_id" in a)
        return _first_answer(answers, request)

    async def peers_of(self, user_id: str) -> list[gateway_pb2.Peer]:
        """The online users who share a room with `user_id` (a participant is connected), with those rooms."""
        shared: dict[str, list[str]] = {}
        for room_id in await self.user_rooms(user_id):
            try:
                participants = await self._realtime.rooms.participants(room_id)
            except ServiceError as error:
                if error.code != grpc.StatusCode.NOT_FOUND:
                    raise
                continue  # deleted meanwhile
            for other in participants:
                if other != user_id:
                    shared.setdefault(other, []).append(room_id)
        return [gateway_pb2.Peer(user_id=u, room_ids=sorted(rooms)) for u, rooms in sorted(shared.items())]

    async def _ask_here(self, args: dict[str, Any]) -> dict[str, Any]:
        """This gateway's part of AskClient: its connections of the user (or the session), as JSON."""
        request = json_format.ParseDict(
            {k: v for k, v in args.items() if k != "deadline"}, gateway_pb2.AskClientRequest()
        )
        connections = (
            [c for c in [self._realtime.connections.get(request.session_id)] if c is not None]
            if request.session_id
            else self._realtime.connections.of_user(request.user_id)
        )
        if not connections:
            return {"missing": True}
        try:
            answer = await self._realtime.questions.ask(
                connections, request.topic, request.data, float(args["deadline"])
            )
        except ServiceError as error:
            return {"error": {"code": error.code.name, "reason": error.reason, "message": error.message}}
        return {"session_id": answer.session_id, "data": json_format.MessageToDict(answer.data)}

    async def _union(self, op: str, args: dict[str, Any], field: str) -> list[str]:
        answers = await self._all().ask_all(op, args)
        return sorted({str(item) for answer in answers for item in answer.get(field, [])})


def _first_answer(answers: list[dict[str, Any]], request: gateway_pb2.AskClientRequest) -> Answer:
    """The first data answer of the gateways'; else the error one gave; else nobody to ask."""
    errors = [a["error"] for a in answers if "error" in a]
    for answer in answers:
        if "session_id" in answer:
            data = json_format.Parse(json.dumps(answer.get("data")), struct_pb2.Value())
            return Answer(str(answer["session_id"]), data)
    if errors:
        timed_out = [e for e in errors if e["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.name]
        error = timed_out[0] if timed_out else errors[-1]
        if error["code"] == grpc.StatusCode.DEADLINE_EXCEEDED.name:
            raise deadline_exceeded(str(error["message"]))
        _raise_relayed(error)
    if request.session_id:
        raise session_not_found(request.session_id)
    raise not_found(
        errors_pb2.ERROR_REASON_USER_NOT_FOUND,
        f"user {request.user_id!r} has no open connection in this deployment",
        user_id=request.user_id,
    )


def _raise_relayed(error: dict[str, Any]) -> NoReturn:
    raise ServiceError.named(grpc.StatusCode[str(error["code"])], str(error["reason"]), str(error["message"]))
