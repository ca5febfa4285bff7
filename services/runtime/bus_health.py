"""The bus's health in `grpc.health.v1`: the service `parley.bus`, and the services that need the bus."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from grpc_health.v1 import health_pb2

from services.runtime.bus import Bus
from services.runtime.grpc_types import HealthStatus

BUS_HEALTH_NAME = "parley.bus"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def report_bus_health(bus: Bus, health: HealthStatus, services: Sequence[str]) -> None:
    """Keeps `parley.bus` and `services` NOT_SERVING while the bus is down (after a stop began, nothing changes)."""
    pending: set[asyncio.Task[None]] = set()

    async def set_all(healthy: bool) -> None:
        status = SERVING if healthy else NOT_SERVING
        for name in (BUS_HEALTH_NAME, *services):
            await health.set(name, status)

    def changed(healthy: bool) -> None:
        task = asyncio.ensure_future(set_all(healthy))
        pending.add(task)
        task.add_done_callback(pending.discard)

    bus.on_health(changed)
    changed(bus.healthy)
