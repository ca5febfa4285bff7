"""Per-connection outbound queues, bounded in bytes, flushed in batches.

Publishing appends already-encoded bytes to each recipient's outbox and never
waits. One shared timer flushes every outbox that received something during
the batch window, so a burst to a connection becomes one frame rather than
one write per event. An outbox that exceeds its byte budget is closed as a
slow consumer; its connection ends without slowing anyone else.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from services.gateway import wire

EVENT = 0  # an EventBatch element
SUBJECT = 1  # a SubjectEventBatch element
FRAME = 2  # a whole ConnectResponse


class SlowConsumer(Exception):
    """The connection fell behind by more than its outbox allows."""


class FlushScheduler:
    """Wakes dirty outboxes once per batch window with a single timer."""

    def __init__(self, window_seconds: float) -> None:
        self._window = window_seconds
        self._dirty: set[Outbox] = set()
        self._scheduled = False

    def mark(self, outbox: Outbox) -> None:
        self._dirty.add(outbox)
        if not self._scheduled:
            self._scheduled = True
            if self._window > 0:
                asyncio.get_running_loop().call_later(self._window, self._flush)
            else:
                asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        dirty, self._dirty = self._dirty, set()
        for outbox in dirty:
            outbox.wake()


class Outbox:
    def __init__(
        self,
        scheduler: FlushScheduler,
        max_bytes: int,
        max_frame_bytes: int,
        on_overflow: Callable[[], None] | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._max_bytes = max_bytes
        self._max_frame_bytes = max_frame_bytes
        self._on_overflow = on_overflow
        self._items: deque[tuple[int, bytes]] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def put(self, kind: int, data: bytes, *, urgent: bool = False) -> bool:
        """Queues bytes without waiting; False once closed. Overflow ends it as a slow consumer."""
        if self._closed:
            return False
        if self._bytes + len(data) > self._max_bytes:
            self._items.clear()
            self._bytes = 0
            self._end(SlowConsumer())
            if self._on_overflow is not None:
                self._on_overflow()
            return False
        self._items.append((kind, data))
        self._bytes += len(data)
        if urgent:
            self._ready.set()
        else:
            self._scheduler.mark(self)
        return True

    def wake(self) -> None:
        self._ready.set()

    def finish(self) -> None:
        """No more frames: what is queued is still sent, then the stream ends normally."""
        self._end(None)

    def fail(self, error: BaseException) -> None:
        """What is queued is still sent, then `error` ends the stream."""
        self._end(error)

    def _end(self, error: BaseException | None) -> None:
        if not self._closed:
            self._closed = True
            self._error = error
        self._ready.set()

    async def next_frames(self) -> list[bytes] | None:
        """The frames gathered by the next flush (adjacent events merged); None at the end.

        Raises the error the outbox was failed with (SlowConsumer on overflow).
        """
        while not self._items:
            if self._closed:
                if self._error is not None:
                    raise self._error
                return None
            self._ready.clear()
            await self._ready.wait()
        frames: list[bytes] = []
        group_kind = -1
        group: list[bytes] = []
        group_bytes = 0
        while self._items:
            kind, data = self._items.popleft()
            self._bytes -= len(data)
            if kind == FRAME or kind != group_kind or group_bytes + len(data) > self._max_frame_bytes:
                _flush_group(frames, group_kind, group)
                group, group_bytes, group_kind = [], 0, kind
            if kind == FRAME:
                frames.append(data)
                group_kind = -1
            else:
                group.append(data)
                group_bytes += len(data)
        _flush_group(frames, group_kind, group)
        return frames


def _flush_group(frames: list[bytes], kind: int, group: list[bytes]) -> None:
    if not group:
        return
    frames.append(wire.events_frame(group) if kind == EVENT else wire.subject_events_frame(group))
