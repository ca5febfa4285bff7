"""The SDK's stream ends with a clear error when a frame does not decode, rather than crashing its reader."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from parley.errors import ParleyError
from parley.gateway.v1 import gateway_pb2
from parley.stream import ConnectStream


async def _welcome_then_garbage(requests: AsyncIterator[bytes], context: Any) -> AsyncIterator[bytes]:
    yield gateway_pb2.ConnectResponse(welcome=gateway_pb2.Welcome(session_id="s1")).SerializeToString()
    yield b"\xff\xff\xff"  # not a ConnectResponse
    await asyncio.sleep(10)


async def test_an_undecodable_frame_ends_the_stream_with_an_error() -> None:
    server = grpc.aio.server()
    handler = grpc.stream_stream_rpc_method_handler(_welcome_then_garbage)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("parley.gateway.v1.GatewayService", {"Connect": handler}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            ended: asyncio.Future[ParleyError | None] = asyncio.get_running_loop().create_future()
            stream = ConnectStream(channel, "token", lambda frame: None, ended.set_result)
            assert (await stream.open()).session_id == "s1"
            error = await asyncio.wait_for(ended, 5)
            assert error is not None
            assert "does not decode" in error.message
            with pytest.raises(ParleyError):
                await stream.command(ping=gateway_pb2.PingCommand())
            await stream.close()
    finally:
        await server.stop(0)
