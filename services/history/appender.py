"""Group commit: appends that arrive while a transaction runs share the next one.

Each caller waits for the transaction holding its events; when it returns,
the events are durable (WAL, synchronous=NORMAL: they survive a process crash).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from functools import partial

import sqlite_utils

from services.history import store
from services.history.hot import HotBuffer
from services.runtime.sqlite import SqliteDatabase

# A transaction takes at most this many append requests.
MAX_BATCH = 1000


@dataclasses.dataclass
class _Request:
    room_id: str
    events: list[store.NewEventRow]
    done: asyncio.Future[tuple[str, list[store.Appended]]]


class GroupCommitter:
    def __init__(self, db: SqliteDatabase, idempotency_window_seconds: float, hot: HotBuffer) -> None:
        self._db = db
        self._hot = hot
        self._window = idempotency_window_seconds
        self._queue: list[_Request] = []
        self._writer: asyncio.Task[None] | None = None
        self.transactions = 0

    async def append(self, room_id: str, events: list[store.NewEventRow]) -> tuple[str, list[store.Appended]]:
        done: asyncio.Future[tuple[str, list[store.Appended]]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(room_id, events, done))
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
            ) -> list[tuple[str, list[store.Appended]]]:
                return [store.append(db, r.room_id, r.events, now, self._window) for r in batch]

            try:
                results = await self._db.transaction(write)
            except Exception as exc:
                for request in batch:
                    if not request.done.done():
                        request.done.set_exception(exc)
                continue
            self.transactions += 1
            for request, result in zip(batch, results, strict=True):
                self._hot.apply(request.room_id, partial(self._hot.appended, request.room_id, request.events, *result))
                if not request.done.done():
                    request.done.set_result(result)

    async def close(self) -> None:
        if self._writer is not None:
            await asyncio.gather(self._writer, return_exceptions=True)
