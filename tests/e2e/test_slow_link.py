"""A link whose round trip takes 600 ms (a phone far from the server, or a busy server that answers the
HTTP/2 handshake late): connecting takes longer than a few hundred milliseconds, and must still work,
for the SDK and for the services' own channels to each other."""

from __future__ import annotations

import asyncio
from pathlib import Path

from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley import Client
from services.runtime.channels import open_channel
from tests.chaos_proxy import chaos_proxy
from tests.support import make_config

# Each way: bytes cross the proxy this much later.
ONE_WAY_SECONDS = 0.3


async def test_the_sdk_connects_and_publishes_over_a_slow_link(server_address: str, tmp_path: Path) -> None:
    async with chaos_proxy(server_address) as proxy:
        proxy.delay = ONE_WAY_SECONDS
        async with Client(proxy.address, username="faraway", key_file=tmp_path / "faraway.json") as client:
            await asyncio.wait_for(client.create_room("lobby"), 30)
            room = await asyncio.wait_for(client.join("lobby"), 30)
            published = await asyncio.wait_for(room.trigger("message", {"text": "hello from afar"}), 30)
    assert published.seq >= 1


async def test_a_services_channel_connects_over_a_slow_link(server_address: str, data_dir: Path) -> None:
    async with chaos_proxy(server_address) as proxy:
        proxy.delay = ONE_WAY_SECONDS
        channel = open_channel(proxy.address, make_config(data_dir).server)
        try:
            health = health_pb2_grpc.HealthStub(channel)
            answer = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=30)
        finally:
            await channel.close(None)
    assert answer.status == health_pb2.HealthCheckResponse.SERVING
