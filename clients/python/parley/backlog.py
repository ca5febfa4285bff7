"""How far the application's handlers are behind the stream, and a wait for them to catch up.

Each handler call runs as a task of its own, so a handler that awaits (or is
slow) would otherwise let received events pile up in memory without bound.
A received frame counts, by its size, until every handler call it started
has returned; the stream reader waits while more than `max_bytes` count.
The server then sees a client that does not read: past its own limit it
ends the stream as a slow consumer (`SlowConsumerError`), and once the
handlers have had every event received so far the client reconnects and
resumes each room from the last of them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

DEFAULT_MAX_UNHANDLED_BYTES = 1024 * 1024


class _Frame:
    __slots__ = ("calls", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self.calls = 0


class HandlerBacklog:
    """Bytes of received frames whose handler calls have not all finished."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_UNHANDLED_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._dispatching: _Frame | None = None
        self._caught_up = asyncio.Event()
        self._caught_up.set()

    @contextlib.contextmanager
    def dispatching(self, size: int) -> Iterator[None]:
        """Handler calls started (`track`) inside this block count `size` bytes until they have all returned."""
        outer, self._dispatching = self._dispatching, _Frame(size)
        try:
            yield
        finally:
            self._dispatching = outer

    def track(self, call: asyncio.Future[Any]) -> None:
        frame = self._dispatching
        if frame is None:
            return  # not started by a received frame (e.g. on_connect, or handlers held until a join returned)
        if not frame.calls:
            self.bytes += frame.size
            if self.bytes > self.max_bytes:
                self._caught_up.clear()
        frame.calls += 1
        call.add_done_callback(lambda _: self._returned(frame))

    def _returned(self, frame: _Frame) -> None:
        frame.calls -= 1
        if not frame.calls:
            self.bytes -= frame.size
            if self.bytes <= self.max_bytes:
                self._caught_up.set()

    @property
    def holding(self) -> bool:
        """Handlers hold more than `max_bytes`: the reader should wait for them."""
        return not self._caught_up.is_set()

    async def caught_up(self) -> None:
        """Returns once no more than `max_bytes` are held by handlers."""
        await self._caught_up.wait()
