"""When queued events go out: one batch window after they came, unless their streams are busy
writing the last flush, then together once those writes are done.

A flush hands what was queued to every stream waiting for it, and each writes a frame: in a room
of a thousand, a thousand gRPC writes, each costing the event loop far more than queueing an event
does. Were every stream to take what came as soon as its write was done, the loop would spend
nearly all its time writing, and a publisher's commands, read one per pass of the loop, would
trickle in one per round of writes: one event per frame, a thousand writes per event. So the
streams a flush woke are a group until they have written:

- what comes for most of them meanwhile is held, and goes to all of them together once the last
  has written (or their writes stalled for STALL_SECONDS: a client that reads slowly, or not at
  all, holds up the others no longer). If more than one event each came (a busy room, not one
  event that came early), first a pause as long as the writes took (at most MAX_PAUSE_SECONDS),
  in which the readers and appends get the loop and what they make joins the same frame. The
  streams of that flush are the next group;
- what comes for a few of them (other rooms that were flushed along) goes to each as soon as it
  has written;
- what comes for other streams goes one batch window after it came, as on a quiet gateway
  (a flush while no group is writing makes the next group).

Pure timing and membership: the caller gives the time (the event loop's clock).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

# Held events wait after the group's writes up to as long as those took, and at most this long.
MAX_PAUSE_SECONDS = 0.1
# Writes that make no progress for this long no longer hold up the group's next flush.
STALL_SECONDS = 0.01


class FlushPacing:
    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        # The streams the group's flush woke; those of them that have not yet written what it gave them.
        self._group: set[Hashable] = set()
        self._writing: set[Hashable] = set()
        self._flushed_at = 0.0
        # When the last of the group reported.
        self._progress_at = 0.0
        # When the group's held events go (None while it writes).
        self._due: float | None = None

    @property
    def grouping(self) -> bool:
        """A group is writing, or its held events wait for their pause to end."""
        return bool(self._group)

    def holds(self, stream: Hashable) -> bool:
        """Whether what comes for `stream` now waits for its group (else: one window)."""
        return stream in self._group

    def lets_go(self, stream: Hashable, held: int) -> bool:
        """Whether `stream`, done writing, need not wait for the rest of its group: events wait
        for only `held` of it, too few to be worth keeping together."""
        return stream not in self._writing and 2 * held < len(self._group)

    def flushed(self, now: float, woken: Iterable[Hashable], *, held: bool) -> None:
        """A flush at `now` woke these streams. `held`: it sent the group's held events, or no group was writing;
        either way the woken streams are the next group."""
        if not held and self._group:
            return  # other streams, flushed beside the group: on their own
        self._group = set(woken)
        self._writing = set(self._group)
        self._flushed_at = self._progress_at = now
        self._due = None

    def written(self, now: float, stream: Hashable, held: int, held_events: int) -> bool:
        """`stream` wrote what the group's flush gave it (or is gone); True if it was the last of the group.

        `held`: how many of the group have events waiting for it; `held_events`: how many events
        wait for them, counted once per stream.
        """
        if stream not in self._writing:
            return False
        self._writing.discard(stream)
        self._progress_at = now
        if self._writing:
            return False
        self._done_writing(held, held_events)
        return True

    def held_due(self, now: float, held: int, held_events: int) -> float:
        """When the group's held events go (now or earlier: at once); see `written`."""
        if self._writing:
            if now < self._progress_at + STALL_SECONDS:
                return self._progress_at + STALL_SECONDS
            self._writing.clear()  # stalled: the rest write when they can
            self._done_writing(held, held_events)
        return self._due if self._due is not None else now

    def _done_writing(self, held: int, held_events: int) -> None:
        if 2 * held >= len(self._group) and held_events >= 2 * held:
            took = self._progress_at - self._flushed_at
            self._due = self._progress_at + min(took, MAX_PAUSE_SECONDS)
        elif held:
            self._due = self._progress_at
        else:
            self._group.clear()  # nothing came for them: they are on their own again
