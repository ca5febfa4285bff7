"""The interceptor holds every request to the request rules: unary ones, and streamed ones unless the
method's handler checks each message itself (CHECKED_BY_HANDLER)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from parley.api.v1 import annotations_pb2
from parley.gateway.v1 import gateway_pb2
from parley.room.v1 import room_pb2
from services.runtime.errors import ServiceError
from services.runtime.interceptors import CHECKED_BY_HANDLER, CallHook, wrap_handler
from services.runtime.methods import MethodInfo, methods_of
from services.runtime.principal import Principal, reset_principal, set_principal
from services.runtime.request_checks import MAX_REQUEST_VALUES

UPLOAD = "/parley.test.v1.FileTestService/Upload"
CONNECT = "/parley.gateway.v1.GatewayService/Connect"


def method(full_name: str, client_streaming: bool) -> MethodInfo:
    service, _, name = full_name.strip("/").partition("/")
    access = annotations_pb2.ACCESS_POLICY_UNSPECIFIED
    return MethodInfo(full_name, service, name, access, client_streaming=client_streaming, server_streaming=False)


@contextlib.asynccontextmanager
async def nothing(method: MethodInfo, context: Any) -> AsyncIterator[None]:
    yield


def calling_as(principal: Principal) -> CallHook:
    @contextlib.asynccontextmanager
    async def hook(method: MethodInfo, context: Any) -> AsyncIterator[None]:
        token = set_principal(principal)
        try:
            yield
        finally:
            reset_principal(token)

    return hook


async def received(requests: AsyncIterator[room_pb2.CreateRoomRequest], context: Any) -> list[int]:
    return [request.visibility async for request in requests]


async def upload(full_name: str, *requests: room_pb2.CreateRoomRequest) -> list[int]:
    """Streams `requests` through a client-streaming handler wrapped like a served one."""
    handler = grpc.stream_unary_rpc_method_handler(received, request_deserializer=room_pb2.CreateRoomRequest.FromString)
    wrapped = wrap_handler(handler, method(full_name, client_streaming=True), (nothing, nothing, nothing))

    async def frames() -> AsyncIterator[bytes]:
        for request in requests:
            yield request.SerializeToString()

    result: list[int] = await wrapped.stream_unary(frames(), None)
    return result


UNKNOWN_VISIBILITY = room_pb2.CreateRoomRequest(room_id="r", visibility=99)  # type: ignore[arg-type]
GOOD = room_pb2.CreateRoomRequest(room_id="r", visibility=room_pb2.ROOM_VISIBILITY_UNLISTED)


async def test_a_streamed_request_with_an_unknown_enum_is_refused() -> None:
    with pytest.raises(ServiceError) as caught:
        await upload(UPLOAD, GOOD, UNKNOWN_VISIBILITY)
    assert (caught.value.reason, caught.value.message) == (
        "VALIDATION_FAILED",
        "visibility: 99 is not a RoomVisibility value",
    )
    assert await upload(UPLOAD, GOOD, GOOD) == [GOOD.visibility] * 2


async def test_a_stream_whose_handler_checks_its_messages_gets_them_unchecked() -> None:
    assert await upload(CONNECT, UNKNOWN_VISIBILITY) == [99]


def test_the_methods_left_to_their_handlers_are_connect_and_send_command_of_the_contract() -> None:
    gateway = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]
    send_command = "/parley.gateway.v1.GatewayService/SendCommand"
    assert {CONNECT, send_command} == CHECKED_BY_HANDLER
    assert CONNECT in {m.full_name for m in methods_of(gateway) if m.client_streaming}
    assert send_command in {m.full_name for m in methods_of(gateway) if not m.client_streaming}


async def test_a_unary_request_left_to_its_handler_is_parsed_but_not_checked() -> None:
    async def echo(request: gateway_pb2.SendCommandRequest, context: Any) -> gateway_pb2.SendCommandRequest:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo, request_deserializer=gateway_pb2.SendCommandRequest.FromString)
    info = method("/parley.gateway.v1.GatewayService/SendCommand", client_streaming=False)
    alice = Principal(user_id="u-alice", device_id="d-alice")
    wrapped = wrap_handler(handler, info, (nothing, calling_as(alice), nothing))
    nan = struct_pb2.Value(number_value=float("nan"))  # no JSON: the interceptor's check would refuse it
    publish = gateway_pb2.PublishCommand(room_id="lobby", events=[gateway_pb2.OutgoingEvent(event="m", payload=nan)])
    unchecked = gateway_pb2.SendCommandRequest(session_id="s1", command=gateway_pb2.ConnectRequest(publish=publish))
    result: gateway_pb2.SendCommandRequest = await wrapped.unary_unary(unchecked.SerializeToString(), None)
    assert (
        result.command.publish.events[0].payload.number_value != result.command.publish.events[0].payload.number_value
    )


async def create_room_as(principal: Principal, request: room_pb2.CreateRoomRequest) -> room_pb2.CreateRoomRequest:
    async def echo(request: room_pb2.CreateRoomRequest, context: Any) -> room_pb2.CreateRoomRequest:
        return request

    handler = grpc.unary_unary_rpc_method_handler(echo, request_deserializer=room_pb2.CreateRoomRequest.FromString)
    info = method("/parley.room.v1.RoomService/CreateRoom", client_streaming=False)
    wrapped = wrap_handler(handler, info, (nothing, calling_as(principal), nothing))
    result: room_pb2.CreateRoomRequest = await wrapped.unary_unary(request.SerializeToString(), None)
    return result


async def test_a_users_request_is_held_to_the_value_budget_and_a_services_is_not() -> None:
    schema = struct_pb2.Struct()
    schema.fields["enum"].list_value.values.extend([struct_pb2.Value(bool_value=True)] * MAX_REQUEST_VALUES)
    request = room_pb2.CreateRoomRequest(room_id="r", events=[room_pb2.EventDefinition(name="e", schema=schema)])
    with pytest.raises(ServiceError) as caught:
        await create_room_as(Principal(user_id="u"), request)
    assert caught.value.metadata == {"field": "events[0].schema.enum"}
    assert await create_room_as(Principal(service_name="backend"), request) == request
