"""Group commit: appends that arrive while a transaction runs share the next one.

Each caller waits for the transaction holding its events; when it returns,
the events are durable (SQLite: WAL, synchronous=NORMAL, they survive a
process crash; PostgreSQL: committed).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from functools import partial

from services.history.hot import HotBuffer
from services.history.storage import Appended, AppendRequest, Appends, HistoryStorage, LogClosed, NewEventRow

# A transaction takes at most this many append requests.
MAX_BATCH = 1000


# Told of a request's committed result before its caller is.
Announce = Callable[[str, list[Appended]], Awaitable[None]]


@dataclasses.dataclass
class _Request:
    append: AppendRequest
    done: asyncio.Future[Appends]
    announce: Announce | None


class GroupCommitter:
    def __init__(self, storage: HistoryStorage, idempotency_window_seconds: float, hot: HotBuffer) -> None:
        self._storage = storage
        self._hot = hot
        self._window = idempotency_window_seconds
        self._queue: list[_Request] = []
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0

    async def append(self, room_id: str, events: list[NewEventRow], announce: Announce | None = None) -> Appends:
        """The events' epoch and sequences; raises LogClosed when the room's log is closed.

        `announce` runs once they are committed, in commit order, before this returns.
        """
        done: asyncio.Future[Appends] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(AppendRequest(room_id, events), done, announce))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        # The append goes ahead even if this caller is cancelled; a retry with
        # the same idempotency key gets the original back.
        return await asyncio.shield(done)

    async def _write_all(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            try:
                async with self._hot.commit_order:
                    results = await self._storage.append_batch([r.append for r in batch], time.time(), self._window)
                    for request, result in zip(batch, results, strict=True):
                        if not isinstance(result, LogClosed):
                            room_id, events = request.append.room_id, request.append.events
                            self._hot.apply(room_id, partial(self._hot.appended, room_id, events, *result))
            except Exception as exc:
                for request in batch:
                    if not request.done.done():
                        request.done.set_exception(exc)
                continue
            self.transactions += 1
            for request, result in zip(batch, results, strict=True):
                if isinstance(result, LogClosed):
                    if not request.done.done():
                        request.done.set_exception(result)
                    continue
                if request.announce is not None:
                    await request.announce(*result)
                if not request.done.done():
                    request.done.set_result(result)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
