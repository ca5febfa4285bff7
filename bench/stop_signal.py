"""A benchmark server's life: until SIGTERM or SIGINT."""

from __future__ import annotations

import asyncio
import signal


async def until_stopped() -> None:
    """Returns once the process is told to stop (SIGTERM or SIGINT)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()
