"""Appends to the history service, in the order they were submitted, per room.

A room has at most one AppendEvents request of this gateway in flight;
appends submitted meanwhile wait and go together in the next one (up to the
history service's limit per request), so a publisher with many publishes
outstanding is group-committed like many publishers, and its events take
sequences in the order it sent them, over gRPC as in process.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
from collections import deque
from collections.abc import Sequence

from parley.history.v1 import history_pb2
from services.gateway.history_client import HistoryAppender
from services.history.limits import MAX_EVENTS_PER_APPEND
from services.runtime.uncancellable import start


@dataclasses.dataclass
class Placed:
    """Where one submitted append's events went: the log's epoch, then each event's place, in order."""

    epoch: str
    appended: list[history_pb2.AppendedEvent]


@dataclasses.dataclass
class _Append:
    events: Sequence[history_pb2.NewEvent]
    no_echo_session: str
    done: asyncio.Future[Placed]

    @functools.cached_property
    def size(self) -> int:
        """The events' encoded bytes (what a merged request carries): counted only for an append that waited."""
        return sum(event.ByteSize() for event in self.events)


# Appends are merged into one request up to this many bytes of events: well under the 4 MiB a
# gRPC message may carry by default (one append alone is within max_payload_bytes per event).
MAX_MERGED_BYTES = 1024 * 1024


class AppendPipeline:
    def __init__(self, history: HistoryAppender) -> None:
        self._history = history
        # Rooms with a request in flight, and what waits behind it.
        self._waiting: dict[str, deque[_Append]] = {}

    def submit(
        self, room_id: str, events: Sequence[history_pb2.NewEvent], no_echo_session: str = ""
    ) -> asyncio.Future[Placed]:
        """Queues an append behind the room's earlier ones; the future says where its events went.

        The append goes ahead even if nobody awaits the future any more.
        """
        done: asyncio.Future[Placed] = asyncio.get_running_loop().create_future()
        waiting = self._waiting.get(room_id)
        append = _Append(events, no_echo_session, done)
        if waiting is not None:
            waiting.append(append)
        else:
            self._waiting[room_id] = deque()
            self._send(room_id, [append])
        return done

    def _send(self, room_id: str, batch: list[_Append]) -> None:
        start(self._append(room_id, batch))  # a stopping server lets it finish

    async def _append(self, room_id: str, batch: list[_Append]) -> None:
        try:
            events = [event for append in batch for event in append.events]
            response = await self._history.append(room_id, events, batch[0].no_echo_session)
        except asyncio.CancelledError:
            for append in batch:
                append.done.cancel()
            raise
        except Exception as exc:
            for append in batch:
                if not append.done.done():
                    append.done.set_exception(exc)
                    append.done.exception()  # retrieved: a caller that went away leaves no warning behind
        else:
            placed = iter(response.appended)
            for append in batch:
                mine = [next(placed) for _ in append.events]
                if not append.done.done():
                    append.done.set_result(Placed(response.epoch, mine))
        finally:
            self._next(room_id)

    def _next(self, room_id: str) -> None:
        """Sends what waited for the room, as one request of appends that share a no-echo session."""
        waiting = self._waiting[room_id]
        if not waiting:
            del self._waiting[room_id]
            return
        batch = [waiting.popleft()]
        if not waiting:
            self._send(room_id, batch)
            return
        count, size = len(batch[0].events), batch[0].size
        while (
            waiting
            and waiting[0].no_echo_session == batch[0].no_echo_session
            and count + len(waiting[0].events) <= MAX_EVENTS_PER_APPEND
            and size + waiting[0].size <= MAX_MERGED_BYTES
        ):
            count += len(waiting[0].events)
            size += waiting[0].size
            batch.append(waiting.popleft())
        self._send(room_id, batch)
