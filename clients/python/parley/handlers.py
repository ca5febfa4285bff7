"""Running the application's handlers: each call a task of its own, counted by the backlog."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from parley.backlog import HandlerBacklog

log = logging.getLogger("parley.client")


async def call_handler(handler: Callable[..., Awaitable[None] | None], *args: Any) -> None:
    """Calls a plain or async handler; its failure is logged, never raised into the client."""
    try:
        result = handler(*args)
        if result is not None:
            await result
    except Exception:
        log.exception("an event handler failed")


class HandlerRunner:
    """Starts handler calls as tasks, keeps them referenced until done, and names the client-wide callbacks."""

    def __init__(self, backlog: HandlerBacklog) -> None:
        self.backlog = backlog
        self._tasks: set[asyncio.Task[None]] = set()
        self._callbacks: dict[str, list[Callable[..., Any]]] = defaultdict(list)

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        self.backlog.track(task)

    def call(self, handlers: Sequence[Callable[..., Any]], *args: Any) -> None:
        for handler in handlers:
            self.spawn(call_handler(handler, *args))

    def add(self, name: str, handler: Callable[..., Any]) -> None:
        """Registers a client-wide callback (`connect`, `disconnect`, `error`, `state`, ...)."""
        self._callbacks[name].append(handler)

    def fire(self, name: str, *args: Any) -> None:
        self.call(tuple(self._callbacks.get(name, ())), *args)
