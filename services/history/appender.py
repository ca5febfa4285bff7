"""Group commit: appends that arrive while a transaction runs share the next one.

Each caller waits for the transaction holding its events; when it returns,
the events are durable (WAL, synchronous=NORMAL: they survive a process crash).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from functools import partial

import sqlite_utils

from services.history import store
from services.history.hot import HotBuffer
from services.runtime.sqlite import SqliteDatabase

# A transaction takes at most this many append requests.
MAX_BATCH = 1000


Result = tuple[str, list[store.Appended]]
# Told of a request's committed result before its caller is.
Announce = Callable[[str, list[store.Appended]], Awaitable[None]]


@dataclasses.dataclass
class _Request:
    room_id: str
    events: list[store.NewEventRow]
    done: asyncio.Future[Result]
    announce: Announce | None


class GroupCommitter:
    def __init__(self, db: SqliteDatabase, idempotency_window_seconds: float, hot: HotBuffer) -> None:
        self._db = db
        self._hot = hot
        self._window = idempotency_window_seconds
        self._queue: list[_Request] = []
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0

    async def append(self, room_id: str, events: list[store.NewEventRow], announce: Announce | None = None) -> Result:
        """The events' epoch and sequences; raises store.LogClosed when the room's log is closed.

        `announce` runs once they are committed, in commit order, before this returns.
        """
        done: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(room_id, events, done, announce))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_all())
        # The append goes ahead even if this caller is cancelled; a retry with
        # the same idempotency key gets the original back.
        return await asyncio.shield(done)

    async def _write_all(self) -> None:
        while self._queue:
            batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
            now = time.time()

            def write(
                db: sqlite_utils.Database, batch: list[_Request] = batch, now: float = now
            ) -> list[Result | store.LogClosed]:
                return [_append_one(db, r, now, self._window) for r in batch]

            try:
                results = await self._db.transaction(write)
            except Exception as exc:
                for request in batch:
                    if not request.done.done():
                        request.done.set_exception(exc)
                continue
            self.transactions += 1
            for request, result in zip(batch, results, strict=True):
                if isinstance(result, store.LogClosed):
                    if not request.done.done():
                        request.done.set_exception(result)
                    continue
                self._hot.apply(request.room_id, partial(self._hot.appended, request.room_id, request.events, *result))
                if request.announce is not None:
                    await request.announce(*result)
                if not request.done.done():
                    request.done.set_result(result)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)


def _append_one(db: sqlite_utils.Database, request: _Request, now: float, window: float) -> Result | store.LogClosed:
    """One request's part of the transaction; a closed log refuses it (writing nothing) and the others go on."""
    try:
        return store.append(db, request.room_id, request.events, now, window)
    except store.LogClosed as closed:
        return closed
