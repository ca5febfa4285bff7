"""The python-socketio baseline server of the fan-out benchmark.

    python -m bench.socketio_server [--host 127.0.0.1] [--port 0]

A `socketio.AsyncServer` on aiohttp, set up the way its users would: every
client that connects is put in room "bench", and each "publish" event it sends
is re-emitted to the room as "event" (not back to the sender). Prints
"listening on HOST:PORT" once it accepts connections and stops on SIGTERM or
SIGINT. Started by `bench.fanout_bench`; not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from typing import Any

import socketio
from aiohttp import web

ROOM = "bench"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.socketio_server",
        description="A python-socketio AsyncServer on aiohttp that puts every client in room 'bench' and re-emits "
        "each 'publish' event to the room as 'event' (skipping the sender). The fan-out benchmark's baseline.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default 0)")
    return parser


def build_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        await sio.enter_room(sid, ROOM)

    async def publish(sid: str, data: Any) -> None:
        await sio.emit("event", data, room=ROOM, skip_sid=sid)

    sio.on("connect", connect)
    sio.on("publish", publish)
    return app


async def serve(host: str, port: int) -> None:
    runner = web.AppRunner(build_app(), access_log=None, handle_signals=False, shutdown_timeout=2.0)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port, backlog=4096)
        await site.start()
        bound_host, bound_port = runner.addresses[0][:2]
        print(f"listening on {bound_host}:{bound_port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
