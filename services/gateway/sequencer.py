"""A room's sequenced messages, released strictly in sequence order, whoever wrote them.

Messages arrive from the bus in any order (several writers, several
gateways, a bus that may drop). Each is released once every smaller
position was released or covered by a read of the log; a duplicate or an
older position is dropped. Until the first position is known (`start`),
everything waits.
"""

from __future__ import annotations

from typing import Generic, TypeVar

T = TypeVar("T")


class Sequencer(Generic[T]):
    def __init__(self) -> None:
        # The last position released or covered; None until started.
        self.released: int | None = None
        self._waiting: dict[int, T] = {}

    @property
    def started(self) -> bool:
        return self.released is not None

    @property
    def has_gap(self) -> bool:
        """Messages wait for a position that has not arrived."""
        return self.released is not None and bool(self._waiting)

    @property
    def lowest_waiting(self) -> int:
        return min(self._waiting, default=0)

    def offer(self, seq: int, item: T) -> list[T]:
        """Takes a message; returns those that are now released, in order."""
        if self.released is not None and seq <= self.released:
            return []
        self._waiting.setdefault(seq, item)
        return self._release()

    def cover(self, through: int) -> list[T]:
        """Positions up to `through` were read from the log (or are given up): drops
        waiting messages there and releases those that follow in order. Starts the
        sequence if it was not yet."""
        if self.released is None or through > self.released:
            self.released = through
            for seq in [s for s in self._waiting if s <= through]:
                del self._waiting[seq]
        return self._release()

    def restart(self, through: int) -> None:
        """A new log (epoch): positions start over after `through`; what waited belonged to the old one."""
        self.released = through
        self._waiting.clear()

    def _release(self) -> list[T]:
        if self.released is None:
            return []
        out = []
        while self.released + 1 in self._waiting:
            self.released += 1
            out.append(self._waiting.pop(self.released))
        return out
