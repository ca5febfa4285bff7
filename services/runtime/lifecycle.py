"""Runs a server until SIGTERM/SIGINT, then stops it gracefully."""

from __future__ import annotations

import asyncio
import signal

from services.runtime.server import ParleyServer


async def serve_until_signalled(server: ParleyServer) -> None:
    """Waits for a stop signal, then drains: health NOT_SERVING, stop(grace), close."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    terminated = asyncio.ensure_future(server.wait_for_termination())
    stopping = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait({terminated, stopping}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await server.stop()
        for task in (terminated, stopping):
            task.cancel()
