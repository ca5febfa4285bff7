"""Per-connection outbound queues, bounded in bytes, flushed in batches.

Publishing appends already-encoded bytes to each recipient's outbox and never
waits. One shared timer flushes every outbox that received something during
the batch window, so a burst to a connection becomes one frame rather than
one write per event; streams still writing the last flush get theirs together
once they have written (services/gateway/flush_pacing.py), so under load many
events share a frame. An outbox that exceeds its byte budget is closed as a
slow consumer; its connection ends without slowing anyone else.

All the outboxes of a gateway also share one budget (`OutboxBudget`), so
thousands of streams that never read cannot together hold more than
`gateway.max_outbound_bytes_total`: a put that would pass it first cuts the
outboxes furthest behind, as slow consumers too. Outboxes woken by the same
flush that hold the same events build one frame between them, so a room's
broadcast costs its bytes once, not once per member.
"""

from __future__ import annotations

import asyncio
import heapq
import sys
from collections import deque
from collections.abc import Callable

from services.gateway import wire
from services.gateway.flush_pacing import FlushPacing

EVENT = 0  # an EventBatch element
SUBJECT = 1  # a SubjectEventBatch element
FRAME = 2  # a whole ConnectResponse
REPLY = 3  # a ReplyBatch element: replies ready together go in one frame
UNLIMITED = sys.maxsize


class SlowConsumer(Exception):
    """The connection fell behind by more than its outbox, or all outboxes together, allow."""


_FURTHEST_BEHIND = (
    "this connection was among the furthest behind when the server's streams together held more than {} bytes"
)
# What queueing one item costs beyond its bytes (a deque slot and a tuple), so
# that many streams holding one shared event are not counted as free.
ITEM_OVERHEAD_BYTES = 64
# How long a frame built for a flush is offered to the other outboxes of that flush.
SHARED_FRAME_SECONDS = 0.05
# Lets a cut outbox's connection go (its stream ends with SLOW_CONSUMER once the client reads what was in flight).
OnCut = Callable[[], None]
Item = tuple[int, bytes]
# An outbox with nothing queued holds this instead of an empty deque (760 bytes on every idle stream).
NOTHING_QUEUED: tuple[Item, ...] = ()


class OutboxBudget:
    """The memory held for all the streams of a gateway, kept under `max_bytes`.

    An event is encoded once and queued for every recipient, and recipients of
    the same events share the frames built from them: bytes are counted once,
    however many outboxes hold them (plus a small cost per queued item), for
    as long as any holds them — queued, or handed to the stream and not yet
    written. The total is exact at all times (the metric reads it); who is
    furthest behind is only looked for when the cap would be passed, and then
    enough is cut to get back under three quarters of it, so a burst past the
    cap does not search again and again.
    """

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.total_bytes = 0
        # id(data) -> [holders, size]; a holder keeps `data` alive, so its id stays its own.
        self._held: dict[int, list[int]] = {}
        self._outboxes: set[Outbox] = set()

    def track(self, outbox: Outbox) -> None:
        self._outboxes.add(outbox)

    def forget(self, outbox: Outbox) -> None:
        self._outboxes.discard(outbox)

    def charge(self, data: bytes) -> None:
        entry = self._held.get(id(data))
        if entry is None:
            self._held[id(data)] = [1, len(data)]
            self.total_bytes += len(data) + ITEM_OVERHEAD_BYTES
        else:
            entry[0] += 1
            self.total_bytes += ITEM_OVERHEAD_BYTES

    def discharge(self, data: bytes) -> None:
        entry = self._held[id(data)]
        entry[0] -= 1
        self.total_bytes -= ITEM_OVERHEAD_BYTES
        if not entry[0]:
            del self._held[id(data)]
            self.total_bytes -= entry[1]

    def admit(self, outbox: Outbox, data: bytes) -> bool:
        """Charges `data` to the budget, cutting the outboxes furthest behind until it fits;
        False (nothing charged) if `outbox` itself was cut.

        Frames already handed to streams cannot be taken back: when they alone
        hold the memory, `data` is let through and the cap is passed by them
        (at most one frame's worth per stream, see `Outbox.next_frames`).
        """
        entry = self._held.get(id(data))
        size = ITEM_OVERHEAD_BYTES + (0 if entry is not None else len(data))
        if self.total_bytes + size > self.max_bytes:
            if size > self.max_bytes:
                outbox.cut(
                    SlowConsumer(f"a single frame is larger than the {self.max_bytes} bytes all streams may hold")
                )
                return False
            if not self._cut_down(min(self.max_bytes - size, self.max_bytes * 3 // 4), outbox):
                return False
            entry = self._held.get(id(data))  # a cut may have let the last other holder go
        if entry is None:
            self._held[id(data)] = [1, len(data)]
        else:
            entry[0] += 1
        self.total_bytes += ITEM_OVERHEAD_BYTES + (len(data) if entry is None else 0)
        return True

    def settle(self, outbox: Outbox) -> bool:
        """After `outbox` built its frames: back under the cap, cutting the furthest behind;
        False if `outbox` itself was cut."""
        return self.total_bytes <= self.max_bytes or self._cut_down(self.max_bytes * 3 // 4, outbox)

    def _cut_down(self, target: int, outbox: Outbox) -> bool:
        """Cuts the streams with the most queued until what stays is within `target` (or nothing queued is left).

        Ranked by what a cut frees at once: the queue (frames a stream holds
        unwritten go only when its stream ends).
        """
        behind = [(-o.queue_cost, n, o) for n, o in enumerate(self._outboxes) if o.queue_cost and not o.is_cut]
        heapq.heapify(behind)
        while behind and self.total_bytes > target:
            _, _, victim = heapq.heappop(behind)
            victim.cut(SlowConsumer(_FURTHEST_BEHIND.format(self.max_bytes)))
            if victim is outbox:
                return False
        return True


class FlushScheduler:
    """Hands what was queued to the outboxes it was queued for, with a single timer.

    An outbox's writer takes events only from a flush (or with something
    urgent), never as they come: a flush goes one batch window after its
    events came, or, for streams still writing the last flush, once they have
    written (see FlushPacing), so that under load many events share one frame.
    Every outbox of a gateway shares it, and with it the gateway's `budget`
    and the frames built during a flush (see `shared_frame`).
    """

    def __init__(self, window_seconds: float, max_total_bytes: int = UNLIMITED) -> None:
        self.budget = OutboxBudget(max_total_bytes)
        self._pacing = FlushPacing(window_seconds)
        # Outboxes with something queued for the next flush: on their own, or waiting for their group.
        self._free: set[Outbox] = set()
        self._held: set[Outbox] = set()
        # Events held since the group's last flush (those let go since included), one per outbox an event
        # went to; when the first of those held now came.
        self._held_events = 0
        self._held_since = 0.0
        # When the first of what is free was queued.
        self._free_since = 0.0
        self._timer: asyncio.Handle | None = None
        # A look at the held ones is due once the fan-out under way has been queued (see `mark`).
        self._let_go_soon = False
        # (kind, ids of the items) -> (the items, kept alive so the ids stay theirs; the frame built from them)
        self._frames: dict[tuple[int, tuple[int, ...]], tuple[tuple[bytes, ...], bytes]] = {}

    def mark(self, outbox: Outbox) -> None:
        if self._pacing.holds(outbox):
            first = not self._held
            if first:
                self._held_since = asyncio.get_running_loop().time()
            self._held.add(outbox)
            self._held_events += 1
            if not self._let_go_soon and self._pacing.lets_go(outbox, 0):
                # Done writing: once the whole fan-out has been queued, see whether it waits for few of the group.
                self._let_go_soon = True
                asyncio.get_running_loop().call_soon(self._let_go)
            if first:
                # The timer may be set for the end of the group's pause (see `_arm`): looked at sooner now.
                self._rearm()
                return
        elif not self._free:
            # The first free stream: its window may end before a group's pause, so the timer is set again.
            self._free_since = asyncio.get_running_loop().time()
            self._free.add(outbox)
            self._rearm()
            return
        else:
            self._free.add(outbox)
        if self._timer is None:
            self._arm()

    def written(self, outbox: Outbox) -> None:
        """`outbox` wrote what a flush gave it, or is gone."""
        if not self._pacing.grouping:
            return
        now = asyncio.get_running_loop().time()
        if self._pacing.written(now, outbox):
            self._rearm()
        elif self._held and self._pacing.lets_go(outbox, len(self._held)):
            self._let_go()

    def _let_go(self) -> None:
        """Held events for few of the group: those of its streams that are done writing go on their own."""
        self._let_go_soon = False
        going = [outbox for outbox in self._held if self._pacing.lets_go(outbox, len(self._held))]
        if not going:
            return
        if not self._free:
            self._free_since = asyncio.get_running_loop().time()
        self._held.difference_update(going)
        self._free.update(going)
        self._rearm()

    def _rearm(self) -> None:
        """What is due changed: the timer is set again."""
        if self._timer is not None:
            self._timer.cancel()
        self._arm()

    def _arm(self) -> None:
        """Sets the timer for the next flush that is due, if anything waits for one."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        due = [self._free_since + self._pacing.window] if self._free else []
        if self._held:
            due.append(self._pacing.held_due(now))
        elif (update := self._pacing.next_update()) is not None:
            due.append(update)
        if not due:
            self._timer = None
        elif min(due) <= now:
            self._timer = loop.call_soon(self._look)
        else:
            self._timer = loop.call_at(min(due), self._look)

    def _look(self) -> None:
        """Flushes what is due, then sets the timer for the rest."""
        now = asyncio.get_running_loop().time()
        self._pacing.update(now, holding=bool(self._held))
        if (
            self._held
            and self._pacing.held_due(now) <= now
            and not self._pacing.still_coming(now, self._held_events, self._held_since)
        ):
            held, self._held, self._held_events = self._held, set(), 0
            # The group's next round: those that got more while they wrote. What is free goes along, on its own.
            self._pacing.flushed(now, [outbox for outbox in held if outbox.release_queue()], held=True)
            self._flush_free()
        elif self._free and self._free_since + self._pacing.window <= now:
            self._flush_free()
        self._arm()

    def _flush_free(self) -> None:
        free, self._free = self._free, set()
        woken = [outbox for outbox in free if outbox.release_queue()]
        self._pacing.flushed(asyncio.get_running_loop().time(), woken, held=False)

    def shared_frame(self, kind: int, group: list[bytes]) -> bytes:
        """The frame of these items: built once for every outbox that gathered the very same items lately."""
        key = (kind, tuple(map(id, group)))
        cached = self._frames.get(key)
        if cached is not None:
            return cached[1]
        frame = wire.events_frame(group) if kind == EVENT else wire.subject_events_frame(group)
        if not self._frames:
            asyncio.get_running_loop().call_later(SHARED_FRAME_SECONDS, self._frames.clear)
        self._frames[key] = (tuple(group), frame)
        return frame


class Outbox:
    """One stream's queue. Frames taken by `next_frames` count until `sent` says they were written.

    Thousands of them sit idle on a gateway, so an idle one holds little: no
    deque while nothing is queued, and a future only while someone waits.
    """

    __slots__ = (
        "_budget",
        "_closed",
        "_error",
        "_in_flight",
        "_items",
        "_max_bytes",
        "_max_frame_bytes",
        "_on_cut",
        "_queued",
        "_released",
        "_scheduler",
        "_taken",
        "_wakeup",
        "in_flight_bytes",
    )

    def __init__(
        self,
        scheduler: FlushScheduler,
        max_bytes: int,
        max_frame_bytes: int,
        on_cut: OnCut | None = None,
    ) -> None:
        self._scheduler = scheduler
        self._budget = scheduler.budget
        self._max_bytes = max_bytes
        self._max_frame_bytes = max_frame_bytes
        self._on_cut = on_cut
        self._items: deque[Item] | tuple[Item, ...] = NOTHING_QUEUED
        self._queued = 0
        # True once a flush (or an urgent put) lets the writer take what is queued.
        self._released = False
        # Frames handed to the stream and not yet written (a reader that stopped holds them): a frame's worth or so.
        self._in_flight: list[bytes] = []
        self.in_flight_bytes = 0
        # What `next_frames` waits on, while it waits.
        self._wakeup: asyncio.Future[None] | None = None
        # Set whenever queued bytes are taken for sending; made for the first producer that waits (see `room_for`).
        self._taken: asyncio.Event | None = None
        self._closed = False
        self._error: BaseException | None = None
        self._budget.track(self)

    @property
    def pending_bytes(self) -> int:
        """Bytes queued or in flight for this stream (shared ones counted in full: how far behind it is)."""
        return self._queued + self.in_flight_bytes

    @property
    def queued_bytes(self) -> int:
        return self._queued

    @property
    def queue_cost(self) -> int:
        """What cutting this outbox frees at most: its queue, bytes and items."""
        return self._queued + ITEM_OVERHEAD_BYTES * len(self._items)

    @property
    def is_cut(self) -> bool:
        return isinstance(self._error, SlowConsumer)

    def put(self, kind: int, data: bytes, *, urgent: bool = False) -> bool:
        """Queues bytes without waiting; False once closed. Overflow ends it as a slow consumer."""
        if self._closed:
            return False
        if self._queued + len(data) > self._max_bytes:
            self.cut(SlowConsumer(f"this connection fell more than {self._max_bytes} bytes behind"))
            return False
        if not self._budget.admit(self, data):
            return False
        items = self._items
        if not isinstance(items, deque):
            items = self._items = deque()
        items.append((kind, data))
        self._queued += len(data)
        if urgent:
            self._released = True
            self.wake()
        else:
            self._scheduler.mark(self)
        return True

    async def room_for(self, size: int) -> None:
        """Waits until `size` more bytes fit in the queue (or it is empty, or closed).

        For a producer that can wait (a long replay): it goes at the reader's pace
        instead of overflowing the queue and cutting the stream.
        """
        while not self._closed and self._queued and self._queued + size > self._max_bytes:
            if self._taken is None:
                self._taken = asyncio.Event()
            self._taken.clear()
            await self._taken.wait()

    def sent(self, frame: bytes) -> None:
        """A frame from `next_frames` was written to the stream."""
        if self._in_flight and self._in_flight[0] is frame:
            del self._in_flight[0]
            self.in_flight_bytes -= len(frame)
            self._budget.discharge(frame)
            if not self._in_flight:
                self._scheduler.written(self)

    def cut(self, error: SlowConsumer) -> None:
        """Drops what is queued and ends the stream with `error` (even one already ending).

        Frames in flight count until `release` (`on_cut` lets the connection go at once).
        """
        if self.is_cut:
            return
        self._drop_queued()
        self._closed = True
        self._error = error
        self._wake_all()
        self._scheduler.written(self)
        if self._on_cut is not None:
            self._on_cut()

    def release(self) -> None:
        """The stream is gone: nothing more is sent, and nothing it held counts any more."""
        self._drop_queued()
        for frame in self._in_flight:
            self._budget.discharge(frame)
        self._in_flight.clear()
        self.in_flight_bytes = 0
        self._closed = True
        self._wake_all()
        self._budget.forget(self)
        self._scheduler.written(self)

    def release_queue(self) -> bool:
        """A flush came: the writer may take what is queued (now, or once it has written what it holds).
        False if nothing is queued (taken already, with something urgent)."""
        if not self._items:
            return False
        self._released = True
        self.wake()
        return True

    def wake(self) -> None:
        """`next_frames` looks again (there is something queued, or the outbox ended)."""
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if not wakeup.done():
                wakeup.set_result(None)

    def _wake_all(self) -> None:
        self.wake()
        if self._taken is not None:
            self._taken.set()

    def finish(self) -> None:
        """No more frames: what is queued is still sent, then the stream ends normally."""
        self._end(None)

    def fail(self, error: BaseException, *, drop_queued: bool = False) -> None:
        """What is queued is still sent (unless `drop_queued`: nothing more is), then `error` ends the stream."""
        if drop_queued and not self._closed:
            self._drop_queued()
        self._end(error)

    def _drop_queued(self) -> None:
        for _, data in self._items:
            self._budget.discharge(data)
        self._items = NOTHING_QUEUED
        self._queued = 0

    def _end(self, error: BaseException | None) -> None:
        if not self._closed:
            self._closed = True
            self._error = error
        self._wake_all()

    async def next_frames(self) -> list[bytes] | None:
        """The frames gathered by the next flush (adjacent events merged); None at the end.

        Raises the error the outbox was failed with (SlowConsumer on overflow).
        The caller reports each frame with `sent` once it is written.
        """
        while not (self._items and (self._released or self._closed)):
            if self._closed and not self._items:
                if self._error is not None:
                    raise self._error
                return None
            self._wakeup = asyncio.get_running_loop().create_future()
            await self._wakeup
        frames: list[bytes] = []
        group_kind = -1
        group: list[bytes] = []
        group_bytes = 0
        # About one frame's worth at a time: a stream that stops reading holds at most that
        # unwritten (it cannot be taken back), the rest stays queued, where a cut frees it.
        queue = self._items
        assert isinstance(queue, deque)
        items: list[Item] = []
        taken = 0
        while queue and (not items or taken + len(queue[0][1]) <= self._max_frame_bytes):
            kind, data = queue.popleft()
            items.append((kind, data))
            taken += len(data)
        if not queue:
            self._items = NOTHING_QUEUED
            self._released = False
        self._queued -= taken
        if self._taken is not None:
            self._taken.set()
        for kind, data in items:
            if kind == FRAME or kind != group_kind or group_bytes + len(data) > self._max_frame_bytes:
                self._flush_group(frames, group_kind, group)
                group, group_bytes, group_kind = [], 0, kind
            if kind == FRAME:
                frames.append(data)
                group_kind = -1
            else:
                group.append(data)
                group_bytes += len(data)
        self._flush_group(frames, group_kind, group)
        # The frames replace the items: charged before the items are let go, so shared bytes never look free.
        for frame in frames:
            self._budget.charge(frame)
        for _, data in items:
            self._budget.discharge(data)
        self._in_flight.extend(frames)
        self.in_flight_bytes += sum(len(frame) for frame in frames)
        if not self._budget.settle(self):
            assert self._error is not None
            raise self._error
        return frames

    def _flush_group(self, frames: list[bytes], kind: int, group: list[bytes]) -> None:
        if not group:
            return
        if kind == REPLY:
            frames.append(wire.replies_frame(group))  # a connection's own: nothing to share
        else:
            frames.append(self._scheduler.shared_frame(kind, group))
