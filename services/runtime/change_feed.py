"""One change feed, many watchers: each gets a snapshot, then every change after it, or is dropped if it lags."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Generic, TypeVar

import grpc

from parley.api.v1 import errors_pb2
from services.runtime.errors import ServiceError

T = TypeVar("T")
# A watcher this far behind is dropped; it watches again and starts from a fresh snapshot.
WATCH_QUEUE_LIMIT = 10_000


class _Lagged:
    """Put in a dropped watcher's queue in place of the changes it will not get."""


_LAGGED = _Lagged()


def watcher_lagged(what: str) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, errors_pb2.ERROR_REASON_SLOW_CONSUMER, f"{what} fell behind; watch again"
    )


class ChangeFeed(Generic[T]):
    def __init__(self, what: str, limit: int = WATCH_QUEUE_LIMIT) -> None:
        self._what = what
        self._limit = limit
        self._watchers: set[asyncio.Queue[T | _Lagged]] = set()

    def announce(self, change: T) -> None:
        for queue in list(self._watchers):
            if queue.qsize() >= self._limit - 1:
                self._watchers.discard(queue)
                queue.put_nowait(_LAGGED)
            else:
                queue.put_nowait(change)

    @contextlib.asynccontextmanager
    async def watching(self) -> AsyncIterator[AsyncIterator[list[T]]]:
        """Registers a watcher; take the snapshot inside, then iterate the batches of changes made since.

        A change made while the snapshot is taken is in it, in the batches, or
        both: watchers apply changes idempotently.
        """
        queue: asyncio.Queue[T | _Lagged] = asyncio.Queue(self._limit)
        self._watchers.add(queue)
        try:
            yield self._batches(queue)
        finally:
            self._watchers.discard(queue)

    async def _batches(self, queue: asyncio.Queue[T | _Lagged]) -> AsyncIterator[list[T]]:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            changes = [change for change in batch if not isinstance(change, _Lagged)]
            if len(changes) != len(batch):
                raise watcher_lagged(self._what)
            yield changes
