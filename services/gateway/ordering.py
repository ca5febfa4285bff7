"""Each room's log writes reach the bus in sequence order.

A publish or a change learns its sequence only when the history service
answers, and answers can come back in another order than the sequences
were given (group commit wakes its callers one by one; in split mode every
append is its own RPC). Members would then get seq 11 before seq 10, and a
client that stopped in between would resume after 11 and never see 10.

So a finished write is released to the bus only when no write still in
flight from this gateway could hold a smaller sequence. A write begun after
this gateway knew sequence S commits after S, so its sequence is above S:
that lower bound is all a waiting write needs to know. Nothing waits for
sequences other processes took (backend appends, other gateways).
"""

from __future__ import annotations

import asyncio
import dataclasses
import heapq
import itertools
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")

# (sequence, tie-breaker, release, future)
_Pending = tuple[int, int, Callable[[], Any], "asyncio.Future[Any]"]


@dataclasses.dataclass(eq=False)
class Write:
    room_id: str
    # Its sequence will be at least this.
    lowest_seq: int


@dataclasses.dataclass
class _Room:
    known: int = 0
    in_flight: list[Write] = dataclasses.field(default_factory=list)
    pending: list[_Pending] = dataclasses.field(default_factory=list)


class RoomOrder:
    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._ties = itertools.count()

    def begin(self, room_id: str) -> Write:
        """Call before asking the history service for a sequence."""
        room = self._rooms.setdefault(room_id, _Room())
        write = Write(room_id, room.known + 1)
        room.in_flight.append(write)
        return write

    def abandon(self, write: Write) -> None:
        """The write failed or has nothing to announce."""
        room = self._rooms[write.room_id]
        room.in_flight.remove(write)
        self._drain(write.room_id, room)

    async def release(self, write: Write, first_seq: int, last_seq: int, announce: Callable[[], T]) -> T:
        """Runs `announce` once every earlier sequence this gateway wrote was announced; returns its result.

        `announce` runs even if the caller stops waiting: what was written is announced.
        """
        room = self._rooms[write.room_id]
        room.in_flight.remove(write)
        room.known = max(room.known, last_seq)
        done: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        heapq.heappush(room.pending, (first_seq, next(self._ties), announce, done))
        self._drain(write.room_id, room)
        return await done

    def _drain(self, room_id: str, room: _Room) -> None:
        bound = min((write.lowest_seq for write in room.in_flight), default=None)
        while room.pending and (bound is None or room.pending[0][0] < bound):
            _, _, announce, done = heapq.heappop(room.pending)
            try:
                result = announce()
            except Exception as exc:  # the waiting writer gets it
                if not done.done():
                    done.set_exception(exc)
                continue
            if not done.done():
                done.set_result(result)
        if not room.in_flight and not room.pending:
            del self._rooms[room_id]

    def waiting(self, room_id: str) -> int:
        """Finished writes held back for the room (for tests and diagnostics)."""
        room = self._rooms.get(room_id)
        return len(room.pending) if room else 0
