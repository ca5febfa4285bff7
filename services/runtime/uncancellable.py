"""Work that must finish once started, whoever stops waiting for it."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")
log = logging.getLogger("parley")

# Strong references: the loop keeps only weak ones to tasks.
_running: set[asyncio.Future[Any]] = set()


def start(work: Awaitable[T]) -> asyncio.Future[T]:
    """Starts `work` now; it runs to its end whoever awaits it (a stopping server waits for it, see `drain`)."""
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task


async def uncancellable(work: Awaitable[T]) -> T:
    """Runs `work` to its end even if the caller is cancelled meanwhile.

    The caller still gets its CancelledError; the work goes on, and if it
    then fails, nobody is left to tell but the log.
    """
    task = start(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_log_failure)
        raise


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("work whose caller went away failed", exc_info=task.exception())


async def drain(within: float) -> None:
    """Waits up to `within` seconds for such work still under way (a server stopping), then leaves it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    # Work may start more work (an append queued behind another): wait for that too.
    while _running and (remaining := deadline - loop.time()) > 0:
        await asyncio.wait(set(_running), timeout=remaining)
    if _running:
        log.warning("stopping with work unfinished", extra={"tasks": len(_running)})
