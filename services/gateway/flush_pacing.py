"""When queued events go out: one batch window after they came, unless their streams have just written
the last flush, then together once the commands that make them have had the event loop for a while.

A flush hands what was queued to every stream waiting for it, and each writes a frame: in a room
of a thousand, a thousand gRPC writes, each costing the event loop far more than queueing an event
does. While those writes run, a connection's commands hardly get in (measured in a room of a
thousand: a publisher's next command, sent long before, was handed over only once the round of
writes was done). Were every stream to take what came as soon as its write was done, the loop
would spend nearly all its time writing, a publisher's commands would trickle in one per round of
writes, and every event would cost a write to every member. So the streams a flush woke are a
group, until they have written and for a pause after:

- what comes for most of them is held. Once the last has written (or their writes stalled for
  STALL_SECONDS: a client that reads slowly, or not at all, holds up the others no longer), it goes
  to all of them together as soon as no more has come for a while (QUIET_SHARE of the time the
  writes took, at least QUIET_SECONDS), or when the pause ends: PAUSE_PER_WRITE times as long as
  the writes took, at most MAX_PAUSE_SECONDS. Writes given up on as stalled are mostly ones a busy
  loop has not yet seen done; while it sees them done, commands still wait behind them, so that is
  no quiet time. Under load the readers and appends get the loop in between (at most a quarter of
  it goes to writing), and what they make joins the same frame; a lone event waits only the quiet
  time, and not at all once the group has been quiet that long.
  The streams of that flush are the next group;
- what comes for a few of them (other rooms that were flushed along) goes to each as soon as it
  has written;
- what comes for other streams goes one batch window after it came, as on a quiet gateway; a
  flush while no group is writing or pausing makes the next group, one while it is joins its next
  round, so that the streams of a busy room are not split into groups that write by turns, each
  while the others' commands wait.

Pure timing and membership: the caller gives the time (the event loop's clock).
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

# Held events wait after the group's writes while more keep coming: up to this many times as long as the
# writes took, and at most MAX_PAUSE_SECONDS.
PAUSE_PER_WRITE = 3.0
MAX_PAUSE_SECONDS = 0.1
# Held events go once no more came for this share of the time the writes took (at least QUIET_SECONDS):
# after a long round of writes a connection's next commands take a while to be read.
QUIET_SHARE = 0.125
QUIET_SECONDS = 0.002
# Writes that make no progress for this long no longer hold up the group's next flush.
STALL_SECONDS = 0.01


class FlushPacing:
    def __init__(self, window_seconds: float) -> None:
        self.window = window_seconds
        # The streams the group's flush woke; those of them that have not yet written what it gave them.
        self._group: set[Hashable] = set()
        self._writing: set[Hashable] = set()
        # Writers of the group given up on at a stall, not yet seen done.
        self._finishing: set[Hashable] = set()
        self._flushed_at = 0.0
        # When the last of the group reported.
        self._progress_at = 0.0
        # Once the group has written: when its pause ends, when its held events were looked at last and
        # are looked at next, how many were held at the last look, and how long no more may come before they go.
        self._pause_ends = 0.0
        self._looked_at = 0.0
        self._next_look = 0.0
        self._seen = 0
        self._quiet = QUIET_SECONDS

    @property
    def grouping(self) -> bool:
        """A group is writing, or has written and holds what comes for it (or did, until its next `update`)."""
        return bool(self._group)

    def holds(self, stream: Hashable) -> bool:
        """Whether what comes for `stream` now waits for its group (else: one window)."""
        return stream in self._group

    def lets_go(self, stream: Hashable, held: int) -> bool:
        """Whether `stream`, done writing, need not wait for the rest of its group: events wait
        for only `held` of it, too few to be worth keeping together."""
        return stream not in self._writing and 2 * held < len(self._group)

    def flushed(self, now: float, woken: Iterable[Hashable], *, held: bool) -> None:
        """A flush at `now` woke these streams. `held`: it sent the group's held events, or no group was
        writing or pausing; either way the woken streams are the next group."""
        if not held and self._group and (self._writing or now < self._pause_ends):
            # Other streams, flushed beside the group, join it for its next round: what comes next for most
            # of the group waits for it (for a few of them: see `lets_go`). This round does not wait for them.
            self._group.update(woken)
            return
        self._group = set(woken)
        self._writing = set(self._group)
        self._finishing = set()
        self._flushed_at = self._progress_at = now

    def written(self, now: float, stream: Hashable) -> bool:
        """`stream` wrote what the group's flush gave it (or is gone); True if it was the last of the group."""
        if stream in self._finishing:
            # Given up on at a stall: the loop is still seeing the round's writes done (see `still_coming`).
            self._finishing.discard(stream)
            self._progress_at = now
            return False
        if stream not in self._writing:
            return False
        self._writing.discard(stream)
        self._progress_at = now
        if self._writing:
            return False
        self._done_writing()
        return True

    def update(self, now: float, *, holding: bool) -> None:
        """At a look (see `next_update`): writes that stalled are given up on; a group whose pause is over
        with nothing `holding` for it is no group any more."""
        if self._writing:
            if now >= self._progress_at + STALL_SECONDS:
                # The rest write when they can. Counted as writing until now: a loop busy with the writes
                # may not have seen them done yet, and the pause after is as long as the wait was.
                self._finishing, self._writing = self._writing, set()
                self._progress_at = now
                self._done_writing()
        elif self._group and not holding and now >= self._pause_ends:
            self._group = set()
            self._finishing = set()

    def next_update(self) -> float | None:
        """When `update` has something to do (a stall to give up on, a group to end); None: nothing."""
        if self._writing:
            return self._progress_at + STALL_SECONDS
        return self._pause_ends if self._group else None

    def held_due(self, now: float) -> float:
        """When the group's held events are looked at next (now or earlier: they go, unless `still_coming`)."""
        if self._writing:
            return self._progress_at + STALL_SECONDS
        return min(self._next_look, self._pause_ends)

    def still_coming(self, now: float, held_events: int, first_came: float) -> bool:
        """At a look, `held_events` waiting for the group (counted once per stream), the first of them
        since `first_came`: True if more came, or writes given up on were seen done, since the last look
        and its pause goes on (they wait a quiet time more); False if they go now, as they do when the
        first came once the group had been quiet a while (the readers had the loop: nothing more is on
        its way)."""
        seeing_writes_done = self._progress_at > self._looked_at
        if now >= self._pause_ends or (held_events <= self._seen and not seeing_writes_done):
            return False
        if not self._seen and first_came >= self._progress_at + self._quiet:
            return False
        self._seen = held_events
        self._looked_at = now
        self._next_look = min(now + self._quiet, self._pause_ends)
        return True

    def _done_writing(self) -> None:
        took = self._progress_at - self._flushed_at
        self._pause_ends = self._progress_at + min(took * PAUSE_PER_WRITE, MAX_PAUSE_SECONDS)
        self._quiet = max(QUIET_SECONDS, took * QUIET_SHARE)
        self._looked_at = self._next_look = self._progress_at
        self._seen = 0
