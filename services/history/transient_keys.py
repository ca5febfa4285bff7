"""Idempotency keys of transient events numbered in memory: looked up here, written to the store behind.

The SDKs give every publish an idempotency key, so a room that keeps no
history would still write once per publish if each key had to be stored
before the publish is answered. Instead, while this process holds every key
a room recorded within the idempotency window (those in the store when it
began numbering the room, read once, and every one since), a retry is
recognised here, and new keys are written to the store in the background,
within `write_delay` seconds, and always before the room's next write to the
store (so the store's own check of a kept event sees them). A room that
records more than `max_per_room` keys within a window (a busy room, whose
appends share transactions anyway) is not held: its keyed events go to the
store, and holding it is tried again a window later.

A crash loses the keys not yet written (at most `write_delay` seconds of
them): a publish retried across that crash is delivered again. A clean stop
writes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from services.history.storage import HistoryStorage, IdempotencyKeyRow

log = logging.getLogger("parley.history")

# Keys not yet in the store are written at most this long after their event.
WRITE_DELAY_SECONDS = 0.5
# A room with more keys than this within the window is left to the store.
MAX_KEYS_PER_ROOM = 10_000


class TransientKeys:
    def __init__(
        self,
        storage: HistoryStorage,
        write_delay: float = WRITE_DELAY_SECONDS,
        max_per_room: int = MAX_KEYS_PER_ROOM,
    ) -> None:
        self._storage = storage
        self._write_delay = write_delay
        self._max_per_room = max_per_room
        # Rooms held: (sender, key) -> row, oldest first.
        self._rooms: dict[str, dict[tuple[str, str], IdempotencyKeyRow]] = {}
        # Rooms that were over the limit, and when holding them may be tried again.
        self._retry_at: dict[str, float] = {}
        self._unwritten: list[IdempotencyKeyRow] = []
        self._writes = asyncio.Lock()
        self._writer: asyncio.Task[None] | None = None
        # Transactions that wrote keys.
        self.transactions = 0

    def holds(self, room_id: str) -> bool:
        """Whether every key the room recorded within the window is here (a miss is then a new key)."""
        return room_id in self._rooms

    async def hold(self, room_id: str, now: float, window: float) -> None:
        """Reads the room's keys within the window from the store, unless it is held or was lately over the limit."""
        if room_id in self._rooms or now < self._retry_at.get(room_id, 0.0):
            return
        rows = await self._storage.recent_keys(room_id, now - window, self._max_per_room + 1)
        if len(rows) > self._max_per_room:
            self._retry_at[room_id] = now + window
            return
        self._retry_at.pop(room_id, None)
        self._rooms[room_id] = {(row.sender, row.key): row for row in rows}

    def find(self, room_id: str, sender: str, key: str, since: float) -> IdempotencyKeyRow | None:
        """The row of a key the room recorded since `since`, in a room held."""
        row = self._rooms[room_id].get((sender, key))
        return row if row is not None and row.created_at >= since else None

    def remember(self, row: IdempotencyKeyRow, *, written: bool, window: float) -> None:
        """A key the room just recorded: `written` when the store wrote it, else it is written behind."""
        if not written:
            self._unwritten.append(row)
            if self._writer is None or self._writer.done():
                self._writer = asyncio.get_running_loop().create_task(self._write_behind())
        keys = self._rooms.get(row.room_id)
        if keys is None:
            return
        keys.pop((row.sender, row.key), None)
        keys[(row.sender, row.key)] = row
        _drop_older(keys, row.created_at - window)
        if len(keys) > self._max_per_room:
            del self._rooms[row.room_id]
            self._retry_at[row.room_id] = row.created_at + window

    def expire(self, older_than: float) -> None:
        """Lets go of keys recorded before `older_than` in every room held (a quiet room keeps none for long)."""
        for keys in self._rooms.values():
            _drop_older(keys, older_than)

    def forget(self, room_id: str) -> None:
        """The room's log is gone (dropped, closed, or a new epoch): its keys, written or not, with it."""
        self._rooms.pop(room_id, None)
        self._retry_at.pop(room_id, None)
        self._unwritten = [row for row in self._unwritten if row.room_id != room_id]

    @contextlib.asynccontextmanager
    async def writes_paused(self) -> AsyncIterator[None]:
        """No key is being written meanwhile (a log being dropped must not get keys back)."""
        async with self._writes:
            yield

    async def write(self) -> None:
        """Writes every key not yet written, in one transaction; on failure they wait for the next write."""
        async with self._writes:
            rows, self._unwritten = self._unwritten, []
            if not rows:
                return
            try:
                await self._storage.record_keys(rows)
            except BaseException:
                self._unwritten = rows + self._unwritten
                raise
            self.transactions += 1

    async def _write_behind(self) -> None:
        while self._unwritten:
            await asyncio.sleep(self._write_delay)
            try:
                await self.write()
            except Exception:
                log.warning("could not write idempotency keys; trying again", exc_info=True)

    async def close(self) -> None:
        """Writes what is left."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.write()


def _drop_older(keys: dict[tuple[str, str], IdempotencyKeyRow], older_than: float) -> None:
    """Drops the oldest keys while they were recorded before `older_than` (a room's keys are oldest first)."""
    while keys and next(iter(keys.values())).created_at < older_than:
        del keys[next(iter(keys))]
