"""Starts Parley: all-in-one, one service per process, or K gateway processes on one port."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from typing import TypeVar

from services import allinone
from services.file import server as file_server
from services.gateway import server as gateway_server
from services.gateway_pool import GatewayExited, GatewayPool
from services.history import server as history_server
from services.identity import server as identity_server
from services.room import server as room_server
from services.runtime.collector import tune_collector
from services.runtime.config import Config, ConfigError
from services.runtime.lifecycle import serve_until_signalled
from services.runtime.logs import setup_logging
from services.runtime.server import ParleyServer, require_port_sharing

ServerFactory = Callable[[Config], Awaitable[tuple[ParleyServer, int]]]

SERVERS: dict[str, ServerFactory] = {
    "all": allinone.create_server,
    "identity": identity_server.create_server,
    "room": room_server.create_server,
    "history": history_server.create_server,
    "file": file_server.create_server,
    "gateway": gateway_server.create_server,
}
# What `server.gateway_processes` > 1 applies to: the gateway alone, or the gateway beside the services.
POOLED = ("all", "gateway")

log = logging.getLogger("parley")
T = TypeVar("T")


async def serve(config: Config, which: str = "all") -> None:
    """Runs one server (or a gateway pool) until SIGTERM/SIGINT; prints where it listens."""
    setup_logging(config.logging)
    processes = config.server.gateway_processes
    if config.server.reuse_port or processes > 1:
        require_port_sharing()
    label = "all-in-one" if which == "all" else which
    if processes > 1:
        if which not in POOLED:
            raise ConfigError(
                f"server.gateway_processes applies to `parley serve` and `parley serve gateway`, not {which}"
            )
        await serve_gateway_pool(config, which, f"{label} ({processes} gateway processes)")
        return
    server, port = await SERVERS[which](config)
    tune_collector(config.server.gc_threshold)
    _announce(label, f"{config.server.host}:{port}", which)
    try:
        await serve_until_signalled(server)
    finally:
        print(f"Parley {label} stopped", file=sys.stderr, flush=True)


async def serve_gateway_pool(config: Config, which: str, label: str) -> None:
    """`server.gateway_processes` gateways sharing the port; for "all", the other services in this process.

    SIGTERM/SIGINT stops the gateways (each drains), then the services. A gateway that
    exits on its own stops the others too, and raises GatewayExited.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    services: ParleyServer | None = None
    pool: GatewayPool | None = None
    try:
        if which == "all":
            services, config = await allinone.create_services_for_gateways(config)
            tune_collector(config.server.gc_threshold)
        pool = GatewayPool(config, config.server.gateway_processes)
        port = await _unless_stopped(stop, pool.start())
        if port is None:
            return
        _announce(label, f"{config.server.host}:{port}", which)
        exited = await _unless_stopped(stop, pool.first_exit())
        if exited is not None:
            raise GatewayExited(f"{exited.exit_message()}; stopped the others")
    finally:
        if pool is not None:
            await pool.stop(config.server.grace_seconds)
        if services is not None:
            await services.stop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        print(f"Parley {label} stopped", file=sys.stderr, flush=True)


async def _unless_stopped(stop: asyncio.Event, work: Awaitable[T]) -> T | None:
    """What `work` returns, or None if `stop` is set first (then `work` is cancelled)."""
    working = asyncio.ensure_future(work)
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({working, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        stopping.cancel()
        if not working.done():
            working.cancel()
            await asyncio.gather(working, return_exceptions=True)
    return None if working.cancelled() else working.result()


def _announce(label: str, address: str, which: str) -> None:
    print(f"Parley {label} listening on {address}", flush=True)
    if which in POOLED:
        print(
            f"Next, in another terminal:  parley --addr {address} user register alice\n"
            f"                            grpcurl -plaintext {address} list",
            flush=True,
        )
