"""Reading a stretch of a room's log, and the one rule for whether a resume recovered.

A read after a position may take several pages of ListEventsSince: each says
how far it covers (`read_through`), and the next starts there. `read_log`
joins them into one `LogRead`; `stream_recovered` decides, from that read
alone, whether a client at (epoch, seq) got every event it missed.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from parley.history.v1 import history_pb2

# Why a resume or a gap did not recover (HistoryBatch.unrecovered_reason).
EPOCH_CHANGED = "EPOCH_CHANGED"
PRUNED = "PRUNED"
OVER_CAP = "OVER_CAP"
UNAVAILABLE = "UNAVAILABLE"
# The reader claims a position the log never reached.
UNKNOWN_POSITION = "UNKNOWN_POSITION"


# A read after this returns no events, only the log's epoch and newest position.
NOTHING_AFTER = 2**62


class LogReader(Protocol):
    async def since(self, room_id: str, after_seq: int, limit: int) -> history_pb2.ListEventsSinceResponse: ...


@dataclasses.dataclass(frozen=True)
class ResumePoint:
    """Where a reader stands in a room's log: the epoch and the last position it has."""

    epoch: str
    seq: int


@dataclasses.dataclass
class LogRead:
    """What a room's log held after `after_seq`, read page by page."""

    after_seq: int
    epoch: str = ""
    # The log's newest position when last read, and how far the pages cover.
    last_seq: int = 0
    through: int = 0
    pruned_seq: int = 0
    # Kept events after `after_seq` (as they are now), oldest first.
    events: list[history_pb2.LoggedEvent] = dataclasses.field(default_factory=list)
    # Edits and deletes of events at or before `after_seq`, by change_seq.
    changes: list[history_pb2.LoggedEvent] = dataclasses.field(default_factory=list)
    # Every page had the same epoch and began where the one before ended.
    contiguous: bool = True
    pages: int = 0

    @property
    def complete(self) -> bool:
        return self.pages > 0 and self.through >= self.last_seq

    def add_page(self, page: history_pb2.ListEventsSinceResponse, after_seq: int) -> None:
        if self.pages and (page.epoch != self.epoch or after_seq != self.through):
            self.contiguous = False
        self.pages += 1
        self.epoch = page.epoch
        self.last_seq = page.last_seq
        self.pruned_seq = max(self.pruned_seq, page.pruned_seq)
        # A change to an event this read already has in its current form is old news.
        have = {e.seq: e.change_seq for e in self.events}
        have.update((c.seq, c.change_seq) for c in self.changes)
        for change in page.changed:
            if change.change_seq > have.get(change.seq, 0):
                if change.seq <= self.after_seq:
                    self.changes.append(change)
                else:
                    self._replace(change)
        self.events.extend(e for e in page.events if e.seq > self.through)
        self.through = max(self.through, page.read_through)

    def _replace(self, changed: history_pb2.LoggedEvent) -> None:
        for i, event in enumerate(self.events):
            if event.seq == changed.seq:
                self.events[i] = changed
                return


async def read_log(history: LogReader, room_id: str, after_seq: int, max_positions: int) -> LogRead:
    """The log after `after_seq`, across as many pages as it takes, up to `max_positions` positions.

    Stops early (incomplete) once the log turns out to reach further than that,
    or changes epoch between pages.
    """
    read = LogRead(after_seq=after_seq, through=after_seq)
    while True:
        start = read.through
        page = await history.since(room_id, start, max_positions + 1)
        read.add_page(page, start)
        done = read.complete or not read.contiguous or read.through <= start
        if done or read.last_seq - after_seq > max_positions:
            return read


async def read_log_end(history: LogReader, room_id: str) -> LogRead:
    """Where the log ends now: an empty read at its newest position."""
    page = await history.since(room_id, NOTHING_AFTER, 1)
    end = page.last_seq
    return LogRead(end, page.epoch, end, end, page.pruned_seq, pages=1)


async def read_on(history: LogReader, room_id: str, read: LogRead, until: int, max_positions: int) -> None:
    """Extends a read page by page until it covers `until` (a position the log has reached)."""
    while read.through < until and read.contiguous:
        start = read.through
        read.add_page(await history.since(room_id, start, max_positions + 1), start)
        if read.through <= start:
            return


def stream_recovered(resume: ResumePoint, read: LogRead, cap: int) -> tuple[bool, str]:
    """Whether a reader at `resume` gets every kept event it missed from `read` (and if not, why).

    Recovered means: the same epoch (a reader with no epoch at position 0 had
    seen nothing, so any epoch continues it), nothing pruned after its
    position, no more than `cap` positions missed, and the read complete and
    contiguous from its position to the log's newest.
    """
    if not (resume.epoch == read.epoch or (not resume.epoch and not resume.seq)):
        return False, EPOCH_CHANGED
    if read.pruned_seq > resume.seq:
        return False, PRUNED
    missed = read.last_seq - resume.seq
    if not 0 <= missed <= cap:
        return False, OVER_CAP if missed > cap else UNKNOWN_POSITION
    if read.after_seq != resume.seq or not read.complete or not read.contiguous:
        return False, OVER_CAP
    return True, ""
