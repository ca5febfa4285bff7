"""Relays a history service's announcements into this gateway's bus.

For split mode on the in-process bus, where the history service runs in
another process and its bus does not reach here. (On NATS the history
service publishes to the shared bus itself and this is not used.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import grpc

from services.gateway.history_client import HistoryClient
from services.runtime.bus import Bus, BusMessage

log = logging.getLogger("parley.gateway")
RETRY_SECONDS = 0.5


async def follow_logs(client: HistoryClient, bus: Bus, on_gap: Callable[[], None]) -> None:
    """Runs until cancelled. Each time the watch is (re)established, `on_gap` is called:
    writes made while it was away are read from the log by the rooms' feeds."""
    while True:
        try:
            async for response in client.watch_logs():
                if not response.subject:
                    on_gap()
                    continue
                await bus.publish(BusMessage(response.subject, response.data, dict(response.headers)))
        except grpc.aio.AioRpcError as exc:
            log.info("log watch ended; retrying", extra={"code": exc.code().name})
        except Exception:
            log.exception("log watch failed; retrying")
        await asyncio.sleep(RETRY_SECONDS)
