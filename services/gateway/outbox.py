"""Per-connection outbound queues, bounded in bytes, flushed in batches.

Publishing appends already-encoded bytes to each recipient's outbox and never
waits. One shared timer flushes every outbox that received something during
the batch window, so a burst to a connection becomes one frame rather than
one write per event. An outbox that exceeds its byte budget is closed as a
slow consumer; its connection ends without slowing anyone else.

All the outboxes of a gateway also share one budget (`OutboxBudget`), so
thousands of streams that never read cannot together hold more than
`gateway.max_outbound_bytes_total`: a put that would pass it first cuts the
outboxes furthest behind, as slow consumers too.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
import weakref
from collections import deque
from collections.abc import Callable

from services.gateway import wire

EVENT = 0  # an EventBatch element
SUBJECT = 1  # a SubjectEventBatch element
FRAME = 2  # a whole ConnectResponse
UNLIMITED = sys.maxsize


class SlowConsumer(Exception):
    """The connection fell behind by more than its outbox, or all outboxes together, allow."""


_FURTHEST_BEHIND = "this connection was furthest behind when the server's streams together held more than {} bytes"


class OutboxBudget:
    """The bytes held in all the outboxes of a gateway, kept under `max_bytes`.

    The total is kept up to date on every put and flush; who is furthest
    behind is only looked for when a put would pass the cap.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total_bytes = 0
        # Weak: a stream that ends with frames still queued drops its outbox,
        # and those bytes stop counting once it is collected (see held_bytes).
        self._outboxes: weakref.WeakSet[Outbox] = weakref.WeakSet()

    def track(self, outbox: Outbox) -> None:
        self._outboxes.add(outbox)

    def held_bytes(self) -> int:
        """Recounts the total from the outboxes that still exist."""
        self.total_bytes = sum(outbox.pending_bytes for outbox in self._outboxes)
        return self.total_bytes

    def make_room(self, outbox: Outbox, size: int) -> bool:
        """Cuts the outboxes furthest behind until `size` more bytes fit; False if `outbox` itself was cut."""
        if self.total_bytes + size <= self.max_bytes:
            return True
        if size > self.max_bytes:
            outbox.cut(SlowConsumer(f"a single frame is larger than the {self.max_bytes} bytes all streams may hold"))
            return False
        if self.held_bytes() + size <= self.max_bytes:
            return True
        behind = [(-o.pending_bytes, n, o) for n, o in enumerate(self._outboxes) if o.pending_bytes]
        heapq.heapify(behind)
        while behind and self.total_bytes + size > self.max_bytes:
            _, _, victim = heapq.heappop(behind)
            victim.cut(SlowConsumer(_FURTHEST_BEHIND.format(self.max_bytes)))
            if victim is outbox:
                return False
        return True


class FlushScheduler:
    """Wakes dirty outboxes once per batch window with a single timer.

    Every outbox of a gateway shares it, and with it the gateway's `budget`.
    """

    def __init__(self, window_seconds: float, max_total_bytes: int = UNLIMITED) -> None:
        self._window = window_seconds
        self.budget = OutboxBudget(max_total_bytes)
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
        self._budget = scheduler.budget
        self._max_bytes = max_bytes
        self._max_frame_bytes = max_frame_bytes
        self._on_overflow = on_overflow
        self._items: deque[tuple[int, bytes]] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self._closed = False
        self._error: BaseException | None = None
        self._budget.track(self)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    def put(self, kind: int, data: bytes, *, urgent: bool = False) -> bool:
        """Queues bytes without waiting; False once closed. Overflow ends it as a slow consumer."""
        if self._closed:
            return False
        if self._bytes + len(data) > self._max_bytes:
            self.cut(SlowConsumer(f"this connection fell more than {self._max_bytes} bytes behind"))
            return False
        if not self._budget.make_room(self, len(data)):
            return False
        self._items.append((kind, data))
        self._bytes += len(data)
        self._budget.total_bytes += len(data)
        if urgent:
            self._ready.set()
        else:
            self._scheduler.mark(self)
        return True

    def cut(self, error: SlowConsumer) -> None:
        """Drops what is queued and ends the stream with `error` (even one already ending)."""
        if isinstance(self._error, SlowConsumer):
            return
        self._items.clear()
        self._budget.total_bytes -= self._bytes
        self._bytes = 0
        self._closed = True
        self._error = error
        self._ready.set()
        if self._on_overflow is not None:
            self._on_overflow()

    def release(self) -> None:
        """The stream is gone: what is still queued will never be sent and stops counting at once."""
        self._items.clear()
        self._budget.total_bytes -= self._bytes
        self._bytes = 0
        self._closed = True
        self._ready.set()

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
        self._budget.total_bytes -= self._bytes
        self._bytes = 0
        while self._items:
            kind, data = self._items.popleft()
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
