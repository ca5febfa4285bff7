"""Numbers for transient events without a write each: blocks reserved in the log, handed out from memory.

A room whose events keep no history needs only the next number for each. The
first such append to a room goes to the store and reserves the next `block`
numbers with it (`AppendRequest.reserve`); appends that follow and fit in
the reservation are numbered here, with no transaction at all, until it runs
out and the next one reserves again. A transient event's idempotency key is
checked and recorded in memory and written behind (services/history/
transient_keys.py). Everything else (kept events, edits, deletes) goes to
the store, told where the log stands (`after_seq`), so the numbering stays
one gap-free sequence.

What the store holds is never behind: a reservation is written before any
of its numbers is given out. After a restart the memory is gone and the
store continues after the whole reservation (`LogStateRow.handed_out`), and
reads say the log reaches that far: numbers in the lost rest of the block
are never used and read like the transient events they could have been (no
row), so nothing is numbered twice and no epoch changes. A block is far
smaller than what a resume may miss (`gateway.replay_cap`), so a restart
costs a resuming client its recovery only if it was behind by nearly that
much already. This process must be the log's only writer (one history
service per database).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

from services.history.storage import (
    Appended,
    AppendRequest,
    Appends,
    EventRow,
    IdempotencyKeyRow,
    LogClosed,
    LogStateRow,
    Page,
    Pruned,
    Rewritten,
    RoomRetention,
    Since,
    Snapshot,
    StoredHistory,
)
from services.history.transient_keys import TransientKeys

# Numbers reserved at a time: a room that keeps nothing writes once per this many events.
BLOCK = 100


@dataclasses.dataclass
class _Counter:
    epoch: str
    last: int
    reserved: int


class ReservedSequences:
    """A HistoryStorage that numbers transient-only appends in memory (see the module's text)."""

    def __init__(self, storage: StoredHistory, block: int = BLOCK, keys: TransientKeys | None = None) -> None:
        self._storage = storage
        self._block = block
        self._counters: dict[str, _Counter] = {}
        self._keys = keys if keys is not None else TransientKeys(storage)
        # Appends numbered here without a transaction.
        self.numbered_in_memory = 0
        self._append_transactions = 0

    @property
    def transactions(self) -> int:
        """Transactions written for appends: the store's, and the keys written behind."""
        return self._append_transactions + self._keys.transactions

    # Writes

    async def append_batch(
        self, requests: Sequence[AppendRequest], now: float, idempotency_window: float
    ) -> list[Appends | LogClosed]:
        results: list[Appends | LogClosed | None] = [None] * len(requests)
        stored: list[tuple[int, AppendRequest]] = []
        to_store: set[str] = set()
        # Keys numbered here by this batch: if it fails, nothing was delivered and a retry is a new event.
        remembered: list[IdempotencyKeyRow] = []
        written: list[Appends | LogClosed] = []
        try:
            for i, request in enumerate(requests):
                counter = self._counters.get(request.room_id)
                if counter is not None and request.room_id not in to_store and self._fits(request, counter):
                    results[i] = self._number(request, counter, now, idempotency_window, remembered)
                    continue
                # Once a room's request goes to the store, its later ones follow it there, in order.
                to_store.add(request.room_id)
                after = counter.last if counter is not None else None
                reserve = self._block if _transient(request) else 0
                stored.append((i, dataclasses.replace(request, after_seq=after, reserve=reserve)))
            if stored:
                # The store checks keys itself: it must have every key numbered here first.
                await self._keys.write()
                self._append_transactions += 1
                written = await self._storage.append_batch([r for _, r in stored], now, idempotency_window)
        except BaseException:
            self._keys.take_back(remembered)
            raise
        for (i, request), result in zip(stored, written, strict=True):
            results[i] = result
            self._follow(request, result)
            self._remember_stored(request, result, now)
        for room_id in to_store:
            if room_id in self._counters:
                await self._keys.hold(room_id, now, idempotency_window)
        for room_id in {request.room_id for request in requests}:
            self._keys.trim(room_id, now, idempotency_window)
        return [result for result in results if result is not None]

    def _fits(self, request: AppendRequest, counter: _Counter) -> bool:
        if not _transient(request):
            return False
        if any(event.idempotency_key for event in request.events) and not self._keys.holds(request.room_id):
            return False
        return counter.last + len(request.events) <= counter.reserved

    def _number(
        self,
        request: AppendRequest,
        counter: _Counter,
        now: float,
        window: float,
        remembered: list[IdempotencyKeyRow],
    ) -> Appends:
        appended = []
        room_id = request.room_id
        for event in request.events:
            key = event.idempotency_key
            if key:
                earlier = self._keys.find(room_id, event.sender, key, now - window)
                if earlier is not None:
                    appended.append(Appended(earlier.seq, earlier.handle, duplicate=True))
                    continue
            counter.last += 1
            appended.append(Appended(counter.last, event.handle, duplicate=False))
            if key:
                row = IdempotencyKeyRow(room_id, event.sender, key, counter.last, event.handle, now)
                self._keys.remember(row, written=False)
                remembered.append(row)
        self.numbered_in_memory += 1
        return counter.epoch, appended

    def _remember_stored(self, request: AppendRequest, result: Appends | LogClosed, now: float) -> None:
        """Keys the store recorded, so that a room held here still holds every key."""
        if isinstance(result, LogClosed) or not self._keys.holds(request.room_id):
            return
        for event, placed in zip(request.events, result[1], strict=True):
            if event.idempotency_key and not placed.duplicate:
                row = IdempotencyKeyRow(
                    request.room_id, event.sender, event.idempotency_key, placed.seq, placed.handle, now
                )
                self._keys.remember(row, written=True)

    def _follow(self, request: AppendRequest, result: Appends | LogClosed) -> None:
        """Learns where the log stands from what the store numbered."""
        if isinstance(result, LogClosed):
            self._counters.pop(request.room_id, None)
            self._keys.forget(request.room_id)
            return
        epoch, appended = result
        numbered = [placed.seq for placed in appended if not placed.duplicate]
        counter = self._counters.get(request.room_id)
        if counter is not None and counter.epoch != epoch:
            del self._counters[request.room_id]  # a counter of a log that is gone
            self._keys.forget(request.room_id)
            counter = None
        if request.reserve and numbered:
            last = numbered[-1]
            self._counters[request.room_id] = _Counter(epoch, last, last + request.reserve)
        elif counter is not None and numbered:
            counter.last = max(counter.last, numbered[-1])

    async def rewrite_event(
        self, room_id: str, handle: str, rewrite: Callable[[EventRow, int], bytes], after_seq: int | None = None
    ) -> Rewritten | None:
        counter = self._counters.get(room_id)
        rewritten = await self._storage.rewrite_event(
            room_id, handle, rewrite, counter.last if counter is not None else after_seq
        )
        if rewritten is not None and counter is not None and self._counters.get(room_id) is counter:
            if rewritten.epoch == counter.epoch:
                counter.last = max(counter.last, rewritten.change_seq)
            else:
                del self._counters[room_id]
        return rewritten

    async def drop_log(self, room_id: str, close: bool) -> int:
        async with self._keys.writes_paused():
            self._counters.pop(room_id, None)
            self._keys.forget(room_id)
            return await self._storage.drop_log(room_id, close)

    async def reopen_log(self, room_id: str) -> int:
        """An open log stays as it is, keys included: they are written first. (A closed one has none
        waiting: `drop_log` forgot them.)"""
        async with self._keys.writes_paused():
            await self._keys.write_while_paused()
            self._counters.pop(room_id, None)
            self._keys.unhold(room_id)
            return await self._storage.reopen_log(room_id)

    # Reads: the log's newest number as numbered here

    def _known(self, room_id: str) -> tuple[str, int] | None:
        """The room's epoch and newest number as this process has numbered it, taken before a read."""
        counter = self._counters.get(room_id)
        return None if counter is None else (counter.epoch, counter.last)

    @staticmethod
    def _last(known: tuple[str, int] | None, epoch: str, last_seq: int, reserved_seq: int) -> int:
        """The newest number a read may claim to cover.

        Numbered here before the read began: every kept one among them was committed
        before it, so the read's snapshot has their rows. Numbers the store handed out
        otherwise (a reservation of an earlier run) read as transient events.
        """
        if known is not None and known[0] == epoch:
            return max(known[1], last_seq)
        return max(last_seq, reserved_seq)

    def _state(self, known: tuple[str, int] | None, state: LogStateRow | None) -> LogStateRow | None:
        if state is None:
            return None
        return dataclasses.replace(state, last_seq=self._last(known, state.epoch, state.last_seq, state.reserved_seq))

    async def log_state(self, room_id: str) -> LogStateRow | None:
        known = self._known(room_id)
        return self._state(known, await self._storage.log_state(room_id))

    async def since(self, room_id: str, after_seq: int, limit: int) -> Since:
        known = self._known(room_id)
        read = await self._storage.since(room_id, after_seq, limit)
        return dataclasses.replace(read, state=self._state(known, read.state))

    async def page_before(self, room_id: str, before_seq: int, limit: int, event: str = "") -> Page:
        known = self._known(room_id)
        page = await self._storage.page_before(room_id, before_seq, limit, event)
        return dataclasses.replace(page, last_seq=self._last(known, page.epoch, page.last_seq, page.reserved_seq))

    async def page_by_offset(self, room_id: str, start: int, end: int, event: str = "") -> Page:
        known = self._known(room_id)
        page = await self._storage.page_by_offset(room_id, start, end, event)
        return dataclasses.replace(page, last_seq=self._last(known, page.epoch, page.last_seq, page.reserved_seq))

    async def read_snapshot(self, room_id: str, rows: int) -> Snapshot | None:
        known = self._known(room_id)
        snapshot = await self._storage.read_snapshot(room_id, rows)
        if snapshot is None:
            return None
        state = self._state(known, snapshot.state)
        assert state is not None
        return dataclasses.replace(snapshot, state=state)

    # The rest is the store's own

    async def set_retention(self, rooms: Sequence[RoomRetention]) -> None:
        await self._storage.set_retention(rooms)

    async def retention_of(self, room_id: str) -> dict[str, tuple[int, int]]:
        return await self._storage.retention_of(room_id)

    async def event_names(self, room_id: str) -> set[str]:
        return await self._storage.event_names(room_id)

    async def event_by_handle(self, room_id: str, handle: str) -> tuple[EventRow | None, str]:
        return await self._storage.event_by_handle(room_id, handle)

    async def retention_rooms(self) -> list[str]:
        return await self._storage.retention_rooms()

    async def prune_room(self, room_id: str, now_ms: int) -> list[Pruned]:
        return await self._storage.prune_room(room_id, now_ms)

    async def prune_idempotency_keys(self, older_than: float) -> int:
        self._keys.expire(older_than)
        return await self._storage.prune_idempotency_keys(older_than)

    async def close(self) -> None:
        try:
            await self._keys.close()
        finally:
            await self._storage.close()


def _transient(request: AppendRequest) -> bool:
    """Nothing to keep: every event only takes a number (and any idempotency key is recorded)."""
    return all(event.transient for event in request.events)
