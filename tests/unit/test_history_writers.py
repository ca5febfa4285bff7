"""Several writers on one log (two history storages on one database or file): sequences stay gap-free and
unique, a retry returns the original, and an append racing a deletion is erased with it or refused."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.history.storage import (
    Appended,
    AppendRequest,
    Appends,
    HistoryStorage,
    LogClosed,
    NewEventRow,
    open_history_storage,
)
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]

WINDOW = 600.0


@pytest.fixture
async def writers(storage_url: str, tmp_path: Path) -> AsyncIterator[list[HistoryStorage]]:
    """Two storages on the same database (PostgreSQL) or the same file (SQLite), as two processes would be."""
    opened = [await open_history_storage(storage_config(tmp_path, storage_url)) for _ in range(2)]
    try:
        yield opened
    finally:
        for storage in opened:
            await storage.close()


def _event(n: int, transient: bool = False, key: str = "", sender: str = "u") -> NewEventRow:
    return NewEventRow("msg", sender, f"h{n}", f"body {n}".encode(), idempotency_key=key, transient=transient)


def _placed(result: Appends | LogClosed) -> tuple[str, list[Appended]]:
    assert not isinstance(result, LogClosed)
    return result


async def test_concurrent_appends_from_several_writers_take_every_sequence_once(writers: list[HistoryStorage]) -> None:
    rng = random.Random(7)
    handles = iter(range(1_000_000))

    async def write(storage: HistoryStorage, rounds: int) -> list[tuple[str, str, Appended, bool]]:
        placed = []
        for _ in range(rounds):
            # Batches over both rooms, in either order: two writers must never wait for each other in a circle.
            requests = [
                AppendRequest(room, [_event(next(handles), rng.random() < 0.2) for _ in range(rng.randint(1, 4))])
                for room in rng.sample(["r1", "r2"], k=2)
            ]
            results = await storage.append_batch(requests, now=1000.0, idempotency_window=WINDOW)
            for request, result in zip(requests, results, strict=True):
                epoch, appended = _placed(result)
                placed += [
                    (request.room_id, epoch, a, event.transient)
                    for a, event in zip(appended, request.events, strict=True)
                ]
        return placed

    tasks = [write(storage, 25) for storage in writers for _ in range(4)]  # 8 writers in all
    placed = [each for task in await asyncio.gather(*tasks) for each in task]

    for room in ("r1", "r2"):
        mine = [(epoch, a, transient) for r, epoch, a, transient in placed if r == room]
        seqs = sorted(a.seq for _, a, _ in mine)
        assert seqs == list(range(1, len(seqs) + 1))  # unique and gap-free
        assert len({epoch for epoch, _, _ in mine}) == 1
        for storage in writers:  # both see the same log
            state = await storage.log_state(room)
            assert state is not None
            assert state.last_seq == len(seqs)
        stored = (await writers[1].since(room, 0, 10_000)).events
        kept = sorted((a.seq, a.handle) for _, a, transient in mine if not transient)
        assert [(row.seq, row.handle) for row in stored] == kept  # transient events took numbers, not rows


async def test_a_retry_racing_from_several_writers_is_stored_once_with_the_original_seq_and_epoch(
    writers: list[HistoryStorage],
) -> None:
    # Numbers taken first, so the retried event's sequence is not simply 1.
    await writers[0].append_batch([AppendRequest("r", [_event(0), _event(1)])], 1000.0, WINDOW)
    retried = _event(9, key="k")

    async def send(storage: HistoryStorage) -> tuple[str, Appended]:
        epoch, (appended,) = _placed((await storage.append_batch([AppendRequest("r", [retried])], 1000.0, WINDOW))[0])
        return epoch, appended

    outcomes = await asyncio.gather(*(send(writers[n % 2]) for n in range(12)))
    originals = [a for _, a in outcomes if not a.duplicate]
    assert len(originals) == 1
    assert {(epoch, a.seq, a.handle) for epoch, a in outcomes} == {(outcomes[0][0], originals[0].seq, "h9")}
    assert originals[0].seq == 3
    stored = (await writers[1].since("r", 0, 100)).events
    assert [row.handle for row in stored] == ["h0", "h1", "h9"]
    # Later too, from either writer, within the window: the original, with its epoch.
    again = _placed((await writers[1].append_batch([AppendRequest("r", [retried])], 1500.0, WINDOW))[0])
    assert (again[0], again[1][0].seq, again[1][0].duplicate) == (outcomes[0][0], 3, True)


async def test_appends_racing_a_closing_drop_are_erased_with_it_or_refused(writers: list[HistoryStorage]) -> None:
    appender, dropper = writers
    await appender.append_batch([AppendRequest("r", [_event(0)])], 1000.0, WINDOW)

    under_way = asyncio.Event()

    async def keep_appending() -> list[Appends | LogClosed]:
        results: list[Appends | LogClosed] = []
        for n in range(1, 40):
            results += await appender.append_batch([AppendRequest("r", [_event(n)])], 1000.0, WINDOW)
            if n == 5:
                under_way.set()
            await asyncio.sleep(0.002)
        return results

    appending = asyncio.ensure_future(keep_appending())
    await under_way.wait()
    dropped = await dropper.drop_log("r", close=True)
    results = await appending

    landed = [r for r in results if not isinstance(r, LogClosed)]
    refused = [r for r in results if isinstance(r, LogClosed)]
    assert landed
    assert refused
    assert dropped == 1 + len(landed)  # everything before the close went with it
    assert results == landed + refused  # once closed, every later append is refused
    assert await appender.log_state("r") is None
    assert (await appender.since("r", 0, 100)).events == []
    # Reopened: a new log, from 1, under a new epoch.
    assert await dropper.reopen_log("r") == 0
    epoch, (first,) = _placed((await appender.append_batch([AppendRequest("r", [_event(99)])], 1000.0, WINDOW))[0])
    assert first.seq == 1
    assert all(epoch != earlier for earlier, _ in landed)


async def test_an_edit_racing_appends_takes_its_own_sequence(writers: list[HistoryStorage]) -> None:
    await writers[0].append_batch([AppendRequest("r", [_event(0)])], 1000.0, WINDOW)

    async def append_many() -> list[int]:
        seqs = []
        for n in range(1, 30):
            _, appended = _placed((await writers[0].append_batch([AppendRequest("r", [_event(n)])], 1000.0, WINDOW))[0])
            seqs.append(appended[0].seq)
        return seqs

    async def edit_many() -> list[int]:
        changes = []
        for _ in range(10):
            rewritten = await writers[1].rewrite_event("r", "h0", lambda row, change_seq: row.body + b"!")
            assert rewritten is not None
            changes.append(rewritten.change_seq)
        return changes

    appended, changes = await asyncio.gather(append_many(), edit_many())
    assert sorted(appended + changes) == list(range(2, 2 + len(appended) + len(changes)))
    (edited, _) = await writers[0].event_by_handle("r", "h0")
    assert edited is not None
    assert edited.body == b"body 0" + b"!" * 10  # no edit lost to another
