"""The python-socketio baseline server of the fan-out benchmark.

    python -m bench.socketio_server [--host 127.0.0.1] [--port 0]

A `socketio.AsyncServer` on aiohttp, set up the way its users would: a client
names its user in its CONNECT (`auth={"user": ...}`, kept in its session); a
"join" event puts it in the room it names and is acknowledged once it is in;
a "publish" event (room, data) is re-emitted to the room as "event" (not back
to the sender) and acknowledged once emitted. Prints "listening on HOST:PORT"
once it accepts connections and stops on SIGTERM or SIGINT. Logs warnings and
errors on stderr, one line each starting with the level, for the benchmark to
count. Started by `bench.fanout_bench`; not part of the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from typing import Any

import socketio
from aiohttp import web

from bench.stop_signal import until_stopped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.socketio_server",
        description="A python-socketio AsyncServer on aiohttp: 'join' puts a client in a room, 'publish' re-emits "
        "to a room as 'event' (skipping the sender), both acknowledged. The fan-out benchmark's baseline.",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=0, help="port to listen on; 0 picks a free one (default 0)")
    return parser


def build_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", logger=False, engineio_logger=False)
    app = web.Application()
    sio.attach(app)

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        if not isinstance(auth, dict) or not isinstance(auth.get("user"), str):
            return False  # refused: every client names its user
        await sio.save_session(sid, {"user": auth["user"]})
        return True

    async def join(sid: str, room: str) -> bool:
        await sio.enter_room(sid, room)
        return True

    async def publish(sid: str, room: str, data: Any) -> bool:
        await sio.emit("event", data, room=room, skip_sid=sid)
        return True

    sio.on("connect", connect)
    sio.on("join", join)
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
        await until_stopped()
    finally:
        await runner.cleanup()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    asyncio.run(serve(args.host, args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
