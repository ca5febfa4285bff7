"""Starts Parley: all-in-one or one service per process."""

from __future__ import annotations

import logging
import sys
from collections.abc import Awaitable, Callable

from services import allinone
from services.file import server as file_server
from services.gateway import server as gateway_server
from services.history import server as history_server
from services.identity import server as identity_server
from services.room import server as room_server
from services.runtime.config import Config
from services.runtime.lifecycle import serve_until_signalled
from services.runtime.logs import setup_logging
from services.runtime.server import ParleyServer

ServerFactory = Callable[[Config], Awaitable[tuple[ParleyServer, int]]]

SERVERS: dict[str, ServerFactory] = {
    "all": allinone.create_server,
    "identity": identity_server.create_server,
    "room": room_server.create_server,
    "history": history_server.create_server,
    "file": file_server.create_server,
    "gateway": gateway_server.create_server,
}

log = logging.getLogger("parley")


async def serve(config: Config, which: str = "all") -> None:
    """Runs one server until SIGTERM/SIGINT; prints where it listens."""
    setup_logging(config.logging)
    server, port = await SERVERS[which](config)
    address = f"{config.server.host}:{port}"
    label = "all-in-one" if which == "all" else which
    print(f"Parley {label} listening on {address}", flush=True)
    if which in ("all", "gateway"):
        print(
            f"Next, in another terminal:  parley --addr {address} user register alice\n"
            f"                            grpcurl -plaintext {address} list",
            flush=True,
        )
    try:
        await serve_until_signalled(server)
    finally:
        print(f"Parley {label} stopped", file=sys.stderr, flush=True)
