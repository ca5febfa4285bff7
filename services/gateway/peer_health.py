"""Mirrors each peer's health status into the gateway's own health servicer,
so `parley health --service parley.identity.v1.IdentityService` against the
gateway tells the truth about the service behind it."""

from __future__ import annotations

import asyncio
import logging

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.runtime.grpc_types import HealthStatus

log = logging.getLogger("parley.gateway")
RETRY_SECONDS = 0.5


async def mirror_peer_health(channel: grpc.aio.Channel, service_name: str, health_servicer: HealthStatus) -> None:
    """Runs until cancelled: watch the peer, copy its status, NOT_SERVING when unreachable."""
    stub = health_pb2_grpc.HealthStub(channel)
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING
    while True:
        try:
            async for update in stub.Watch(health_pb2.HealthCheckRequest(service=service_name)):
                await health_servicer.set(service_name, update.status)
        except grpc.aio.AioRpcError as exc:
            log.debug("peer health watch ended", extra={"service": service_name, "code": exc.code().name})
        await health_servicer.set(service_name, not_serving)
        await asyncio.sleep(RETRY_SECONDS)
