"""Idempotency keys of transient events numbered in memory: looked up here, written to the store behind.

The SDKs give every publish an idempotency key, so a room that keeps no
history would still write once per publish if each key had to be stored
before the publish is answered. Instead, while this process holds every key
a room recorded within the idempotency window (those in the store when it
began numbering the room, read once, and every one since), a retry is
recognised here, and new keys are written to the store in the background,
within `write_delay` seconds of a write being free, and always before the
next write to the store (so the store's own check of a kept event sees
them). A room that records more than `max_per_room` keys within a window (a
busy room, whose appends share transactions anyway), or that would take the
process past `max_total` keys, is not held: its keyed events go to the
store, and holding it is tried again a window later.

A crash loses the keys not yet written (those of the last `write_delay`
seconds or so): a publish retried across that crash is delivered again. A
clean stop writes them all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable

from services.history.storage import IdempotencyKeyRow, KeyStore

log = logging.getLogger("parley.history")

# Keys not yet in the store are written about this long after their event.
WRITE_DELAY_SECONDS = 0.5
# After a failed write, the next waits twice as long as the last, up to this.
MAX_WRITE_RETRY_SECONDS = 10.0
# A room with more keys than this within the window is left to the store.
MAX_KEYS_PER_ROOM = 10_000
# Keys held in memory for all rooms together (about 0.5 KiB each).
MAX_KEYS_TOTAL = 100_000

_Keys = dict[tuple[str, str], IdempotencyKeyRow]


class TransientKeys:
    def __init__(
        self,
        storage: KeyStore,
        write_delay: float = WRITE_DELAY_SECONDS,
        max_per_room: int = MAX_KEYS_PER_ROOM,
        max_total: int = MAX_KEYS_TOTAL,
    ) -> None:
        self._storage = storage
        self._write_delay = write_delay
        self._max_per_room = max_per_room
        self._max_total = max_total
        # Rooms held: (sender, key) -> row, oldest first.
        self._rooms: dict[str, _Keys] = {}
        self._held = 0
        # Rooms let go (over a limit), and when holding them may be tried again.
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
        """Reads the room's keys within the window from the store, unless it is held or was let go lately.

        Never raises: a room whose keys cannot be read stays with the store.
        """
        if room_id in self._rooms or now < self._retry_at.get(room_id, 0.0):
            return
        try:
            rows = await self._storage.recent_keys(room_id, now - window, self._max_per_room + 1)
        except Exception:
            log.warning("could not read the idempotency keys of room %r; its keyed events go to the store", room_id)
            self._retry_at[room_id] = now + window
            return
        if len(rows) > self._max_per_room or self._held + len(rows) > self._max_total:
            self._retry_at[room_id] = now + window
            return
        self._retry_at.pop(room_id, None)
        self._rooms[room_id] = {(row.sender, row.key): row for row in rows}
        self._held += len(rows)

    def find(self, room_id: str, sender: str, key: str, since: float) -> IdempotencyKeyRow | None:
        """The row of a key a held room recorded since `since`."""
        keys = self._rooms.get(room_id)
        row = keys.get((sender, key)) if keys is not None else None
        return row if row is not None and row.created_at >= since else None

    def remember(self, row: IdempotencyKeyRow, *, written: bool) -> None:
        """A key the room just recorded: `written` when the store wrote it, else it is written behind.
        Limits are looked at by `trim`, once the request is numbered."""
        if not written:
            self._unwritten.append(row)
            if self._writer is None or self._writer.done():
                self._writer = asyncio.get_running_loop().create_task(self._write_behind())
        keys = self._rooms.get(row.room_id)
        if keys is None:
            return
        if keys.pop((row.sender, row.key), None) is None:
            self._held += 1
        keys[(row.sender, row.key)] = row

    def trim(self, room_id: str, now: float, window: float) -> None:
        """Lets go of the room's keys past the window; lets go of the room if it is over a limit."""
        keys = self._rooms.get(room_id)
        if keys is None:
            return
        self._held -= _drop_older(keys, now - window)
        if len(keys) > self._max_per_room or self._held > self._max_total:
            self.unhold(room_id)
            self._retry_at[room_id] = now + window

    def take_back(self, rows: Iterable[IdempotencyKeyRow]) -> None:
        """Keys of appends that failed: never delivered, so a retry must be a new event.

        One already written stays in the store until the retry's own row replaces it.
        """
        rows = list(rows)
        if not rows:
            return
        dropped = {id(row) for row in rows}
        for row in rows:
            keys = self._rooms.get(row.room_id)
            if keys is not None and keys.get((row.sender, row.key)) is row:
                del keys[(row.sender, row.key)]
                self._held -= 1
        self._unwritten = [row for row in self._unwritten if id(row) not in dropped]

    def expire(self, older_than: float) -> None:
        """Lets go of keys recorded before `older_than` in every room held (a quiet room keeps none for long)."""
        for room_id in list(self._rooms):
            self._held -= _drop_older(self._rooms[room_id], older_than)

    def unhold(self, room_id: str) -> None:
        """Stops holding the room (its keys not yet written are still written)."""
        keys = self._rooms.pop(room_id, None)
        if keys is not None:
            self._held -= len(keys)

    def forget(self, room_id: str) -> None:
        """The room's log is gone (dropped, closed, or a new epoch): its keys, written or not, with it."""
        self.unhold(room_id)
        self._retry_at.pop(room_id, None)
        self._unwritten = [row for row in self._unwritten if row.room_id != room_id]

    @contextlib.asynccontextmanager
    async def writes_paused(self) -> AsyncIterator[None]:
        """No key is being written meanwhile (a log being dropped must not get keys back);
        `write_while_paused` writes those waiting."""
        async with self._writes:
            yield

    async def write(self) -> None:
        """Writes every key not yet written, in one transaction; on failure they wait for the next write."""
        async with self._writes:
            await self.write_while_paused()

    async def write_while_paused(self) -> None:
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
        delay = self._write_delay
        while self._unwritten:
            await asyncio.sleep(delay)
            try:
                await self.write()
            except Exception as exc:
                delay = min(2 * delay, MAX_WRITE_RETRY_SECONDS)
                log.warning("could not write idempotency keys (%s); trying again in %.1f s", exc, delay)
            else:
                delay = self._write_delay

    async def close(self) -> None:
        """Writes what is left."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        await self.write()


def _drop_older(keys: _Keys, older_than: float) -> int:
    """Drops the oldest keys while they were recorded before `older_than` (a room's keys are oldest first);
    how many."""
    dropped = 0
    while keys and next(iter(keys.values())).created_at < older_than:
        del keys[next(iter(keys))]
        dropped += 1
    return dropped
