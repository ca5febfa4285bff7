"""The bus's health shows in grpc.health: `parley.bus` and the services that need it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from services.runtime.bus import InProcessBus
from services.runtime.bus_health import BUS_HEALTH_NAME, NOT_SERVING, SERVING, report_bus_health


class FlakyBus(InProcessBus):
    def __init__(self) -> None:
        super().__init__()
        self.up = True
        self.handlers: list[Callable[[bool], None]] = []

    @property
    def healthy(self) -> bool:
        return self.up

    def on_health(self, handler: Callable[[bool], None]) -> None:
        self.handlers.append(handler)

    def flip(self, up: bool) -> None:
        self.up = up
        for handler in self.handlers:
            handler(up)


class RecordedHealth:
    def __init__(self) -> None:
        self.status: dict[str, int] = {}

    async def set(self, service: str, status: int) -> None:
        self.status[service] = status

    async def enter_graceful_shutdown(self) -> None:
        raise AssertionError("not used")


async def test_services_follow_the_bus_health() -> None:
    bus, health = FlakyBus(), RecordedHealth()
    report_bus_health(bus, health, ["parley.gateway.v1.GatewayService"])  # type: ignore[arg-type]
    await asyncio.sleep(0)
    assert set(health.status.values()) == {SERVING}
    bus.flip(False)
    await asyncio.sleep(0)
    assert health.status == {BUS_HEALTH_NAME: NOT_SERVING, "parley.gateway.v1.GatewayService": NOT_SERVING}
    bus.flip(True)
    await asyncio.sleep(0)
    assert set(health.status.values()) == {SERVING}
