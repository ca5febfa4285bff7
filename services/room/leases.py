"""Gateway leases: the memberships of a gateway's connections last while it renews its lease.

A gateway that stops without leaving (killed, or cut off) stops renewing;
once its lease lapses, its connections leave every room and the rooms are
told on the bus that users with no connection left are gone. Gateways that
never took a lease (an all-in-one server's own) are never swept.
"""

from __future__ import annotations

import asyncio
import logging
import time

from services.room.membership import Membership
from services.runtime import room_stream
from services.runtime.bus import Bus
from services.runtime.session_ids import gateway_of

log = logging.getLogger("parley.room")


class GatewayLeases:
    def __init__(self, membership: Membership, bus: Bus, sweep_seconds: float = 1.0) -> None:
        self._membership = membership
        self._bus = bus
        self._sweep_seconds = sweep_seconds
        # Gateway id -> when its lease lapses (time.monotonic()).
        self._until: dict[str, float] = {}

    def renew(self, gateway_id: str, ttl_seconds: float) -> None:
        self._until[gateway_id] = time.monotonic() + ttl_seconds

    async def run(self) -> None:
        """Sweeps lapsed leases until cancelled."""
        while True:
            await asyncio.sleep(self._sweep_seconds)
            try:
                await self.sweep(time.monotonic())
            except Exception:
                log.exception("could not sweep gateway leases")

    async def release(self, gateway_id: str) -> list[tuple[str, str]]:
        """A gateway that stops on purpose gives its lease back: it ends now, without a warning."""
        self._until.pop(gateway_id, None)
        return await self._end({gateway_id})

    async def sweep(self, now: float) -> list[tuple[str, str]]:
        """Ends the memberships of gateways whose lease lapsed; returns the (room, user) pairs that left."""
        lapsed = {gateway for gateway, until in self._until.items() if until <= now}
        if not lapsed:
            return []
        for gateway in lapsed:
            del self._until[gateway]
        log.warning("gateway leases lapsed; their connections left their rooms", extra={"gateways": sorted(lapsed)})
        return await self._end(lapsed)

    async def _end(self, gateways: set[str]) -> list[tuple[str, str]]:
        left = self._membership.drop_sessions(lambda session_id: gateway_of(session_id) in gateways)
        for room_id, user_id in left:
            await self._bus.publish(room_stream.presence_message(room_id, user_id, joined=False))
        return left
