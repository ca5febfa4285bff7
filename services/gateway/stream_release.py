"""Letting go of what a server stream holds, once, without ending the stream.

A stream cut as a slow consumer (or ended from outside: a revoked device, an
expired token) is let go at once: it leaves its rooms and frees its queue.
Its handler is not cancelled. A handler waits in the write of a frame its
client has not read, and a cancelled grpc.aio handler ends with no status at
all: the client would read what was in flight and then wait on a silent
stream forever. Left running, the handler finishes that write as soon as the
client reads again, then sends the GoAway and ends the RPC with its status.
(The status cannot overtake that frame: HTTP/2 sends trailers after the data,
and grpc.aio offers no reset.) A client that never reads again holds only its
stream and that one frame, until it or its connection goes away.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from services.runtime.uncancellable import uncancellable


class StreamRelease:
    """Runs `let_go` exactly once: at `now()`, or when the stream's handler ends (`finished`)."""

    __slots__ = ("_let_go", "_task")

    def __init__(self, let_go: Callable[[], Awaitable[None]]) -> None:
        self._let_go = let_go
        self._task: asyncio.Task[None] | None = None

    def now(self) -> None:
        """Starts letting go in a task of its own (this may run inside another stream's publish)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def finished(self) -> None:
        """The handler ends: lets go if nothing did yet, and waits until that is done, even if cancelled."""
        self.now()
        assert self._task is not None
        await uncancellable(self._task)

    async def _run(self) -> None:
        await self._let_go()
