"""One gateway of a gateway pool (services/gateway_pool.py), started by the pool, never by hand.

Its standard input is a socket to the parent: the config comes down it, the
bound port goes back up, and its end (the parent gone, even killed) stops the
gateway as SIGTERM would.
"""

from __future__ import annotations

import asyncio
import pickle
import signal
import socket
import sys

from services.gateway import server as gateway_server
from services.runtime.collector import tune_collector
from services.runtime.config import Config, ConfigError
from services.runtime.logs import setup_logging
from services.runtime.server import ParleyServer

LENGTH_BYTES = 4


def send_config(link: asyncio.StreamWriter, config: Config) -> None:
    encoded = pickle.dumps(config)
    link.write(len(encoded).to_bytes(LENGTH_BYTES, "big") + encoded)


async def receive_config(link: asyncio.StreamReader) -> Config:
    length = int.from_bytes(await link.readexactly(LENGTH_BYTES), "big")
    config = pickle.loads(await link.readexactly(length))
    if not isinstance(config, Config):
        raise TypeError(f"the gateway pool sent {type(config).__name__}, not a Config")
    return config


async def serve_for_pool() -> int:
    """Serves one gateway until SIGTERM/SIGINT or the parent's end; the exit status."""
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=sys.stdin.fileno()))
    config = await receive_config(reader)
    setup_logging(config.logging)
    try:
        server, port = await gateway_server.create_server(config)
    except (ConfigError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 1
    tune_collector(config.server.gc_threshold)
    writer.write(f"{port}\n".encode())
    await writer.drain()
    try:
        await serve_until_told(server, reader)
    finally:
        writer.close()
    return 0


async def serve_until_told(server: ParleyServer, parent: asyncio.StreamReader) -> None:
    """Like `serve_until_signalled`, and also stops when the parent's end closes.

    The signal handlers stay in place through the drain: the parent signals once,
    and a terminal's Ctrl-C reaches only the parent (this process has a session of
    its own), so a second signal never cuts a drain short.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # The parent sends nothing after the config: read() returns at its end.
    waits = [asyncio.ensure_future(w) for w in (stop.wait(), parent.read())]
    # Cancelled only once stopped: cancelling it sooner cancels grpc's own shutdown.
    terminated = asyncio.ensure_future(server.wait_for_termination())
    try:
        await asyncio.wait([*waits, terminated], return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
        await server.stop()
        terminated.cancel()


def main() -> None:
    sys.exit(asyncio.run(serve_for_pool()))


if __name__ == "__main__":
    main()
