"""The background pruner: retention and idempotency keys past their window, on a real database."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from services.history import pruner as pruner_module
from services.history import store
from services.history.hot import HotBuffer
from services.history.pruner import Pruner
from services.runtime.config import HistoryConfig
from services.runtime.sqlite import SqliteDatabase
from tests.support import wait_until


async def test_prune_once_removes_old_keys_and_events_past_retention(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "h.sqlite3", store.MIGRATIONS)
    await db.open()
    try:
        now = time.time()
        old = [store.NewEventRow("msg", "s", f"old{i}", b"", f"key{i}", time_ms=1, keep_last=1) for i in range(3)]
        fresh = [store.NewEventRow("msg", "s", "new", b"", "key-new", time_ms=int(now * 1000), keep_last=1)]
        await db.transaction(lambda d: store.append(d, "r", old, now - 120, 600))
        await db.transaction(lambda d: store.append(d, "r", fresh, now, 600))
        pruner = Pruner(db, HistoryConfig(idempotency_window_seconds=60), HotBuffer(100, 1 << 20), asyncio.Event())
        assert await pruner.prune_once() == (3, 3)
        assert await pruner.prune_once() == (0, 0)
        kept = await db.run(lambda d: store.since(d, "r", 0, 10))
        assert [row.handle for row in kept] == ["new"]
    finally:
        await db.close()


@pytest.mark.parametrize("policies_arrive", [True, False])
async def test_background_pruning_waits_for_the_current_policies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, policies_arrive: bool
) -> None:
    # With the policies sent, only their arrival can start pruning in time; without, the grace does.
    monkeypatch.setattr(pruner_module, "RETENTION_GRACE_SECONDS", 30 if policies_arrive else 0.5)
    db = SqliteDatabase(tmp_path / "h.sqlite3", store.MIGRATIONS)
    await db.open()
    received = asyncio.Event()
    pruner = Pruner(db, HistoryConfig(prune_interval_seconds=0.01), HotBuffer(100, 1 << 20), received)
    try:
        events = [store.NewEventRow("msg", "s", f"h{i}", b"", keep_last=1) for i in range(3)]
        await db.transaction(lambda d: store.append(d, "r", events, time.time(), 600))
        pruner.start()
        await asyncio.sleep(0.2)
        # A restart: the stored limit may be one the definitions no longer have.
        assert len(await db.run(lambda d: store.since(d, "r", 0, 10))) == 3
        if policies_arrive:
            received.set()  # a gateway's SetRetention
        await wait_until(lambda: db.run(lambda d: len(store.since(d, "r", 0, 10)) == 1), within=3)
    finally:
        await pruner.close()
        await db.close()
