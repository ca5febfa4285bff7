"""Work that must finish once started, whoever stops waiting for it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

T = TypeVar("T")

# Strong references: the loop keeps only weak ones to tasks.
_running: set[asyncio.Future[Any]] = set()


async def uncancellable(work: Awaitable[T]) -> T:
    """Runs `work` to its end even if the caller is cancelled meanwhile.

    The caller still gets its CancelledError; the work goes on, and a failure
    nobody waits for any more is dropped (the work logs what matters itself).
    """
    task = asyncio.ensure_future(work)
    _running.add(task)
    task.add_done_callback(_finished)
    return await asyncio.shield(task)


def _finished(task: asyncio.Future[Any]) -> None:
    _running.discard(task)
    if not task.cancelled():
        task.exception()  # marks it retrieved
