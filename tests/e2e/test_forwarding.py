"""The gateway's raw-bytes forwarding, for every call shape, against a real peer."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2

from services.gateway.forwarding import ForwardingHandler, Peer, routes_for
from services.runtime.interceptors import CallInterceptor, translate_errors
from services.runtime.methods import MethodInfo, MethodTable
from tests.support import error_reason, grpcurl_async

HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"]
REFLECTION = reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"]


@contextlib.asynccontextmanager
async def no_hook(method: MethodInfo, context: object) -> AsyncIterator[None]:
    yield


async def forwarder_to(peer_address: str) -> tuple[grpc.aio.Server, grpc.aio.Channel, str]:
    channel = grpc.aio.insecure_channel(peer_address)
    peers = {service: Peer("backend", peer_address, channel) for service in (HEALTH, REFLECTION)}
    hooks = (translate_errors, no_hook, no_hook)
    server = grpc.aio.server(interceptors=[CallInterceptor(MethodTable([]), hooks)])
    server.add_generic_rpc_handlers((ForwardingHandler(routes_for(peers)),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, channel, f"127.0.0.1:{port}"


@pytest.fixture
async def forwarder(server_address: str) -> AsyncIterator[str]:
    server, channel, address = await forwarder_to(server_address)
    yield address
    await server.stop(None)
    await channel.close(None)


async def test_unary_and_server_streaming_calls_are_forwarded(forwarder: str) -> None:
    async with grpc.aio.insecure_channel(forwarder) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest(service="parley.identity.v1.IdentityService")
        assert (await stub.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
        watch = stub.Watch(request)
        first = await asyncio.wait_for(watch.read(), 5)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        watch.cancel()
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Check(health_pb2.HealthCheckRequest(service="nope.v1.Nope"))
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def test_bidirectional_streaming_is_forwarded(forwarder: str) -> None:
    # grpcurl's `list` talks ServerReflectionInfo, a bidirectional stream.
    code, out, err = await grpcurl_async(forwarder, "list")
    assert code == 0, err
    assert "parley.identity.v1.IdentityService" in out.split()


async def test_unreachable_peer_is_unavailable_with_a_clear_message() -> None:
    server, channel, address = await forwarder_to("127.0.0.1:1")
    try:
        async with grpc.aio.insecure_channel(address) as client:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await health_pb2_grpc.HealthStub(client).Check(health_pb2.HealthCheckRequest())
    finally:
        await server.stop(None)
        await channel.close(None)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert error_reason(caught.value) == "SERVICE_UNAVAILABLE"
    assert "the backend service at 127.0.0.1:1 is unavailable" in (caught.value.details() or "")
