"""The background pruner: retention and idempotency keys past their window, on a real database."""

from __future__ import annotations

import time
from pathlib import Path

from services.history import store
from services.history.hot import HotBuffer
from services.history.pruner import Pruner
from services.runtime.config import HistoryConfig
from services.runtime.sqlite import SqliteDatabase


async def test_prune_once_removes_old_keys_and_events_past_retention(tmp_path: Path) -> None:
    db = SqliteDatabase(tmp_path / "h.sqlite3", store.MIGRATIONS)
    await db.open()
    try:
        now = time.time()
        old = [store.NewEventRow("msg", "s", f"old{i}", b"", f"key{i}", time_ms=1, keep_last=1) for i in range(3)]
        fresh = [store.NewEventRow("msg", "s", "new", b"", "key-new", time_ms=int(now * 1000), keep_last=1)]
        await db.transaction(lambda d: store.append(d, "r", old, now - 120, 600))
        await db.transaction(lambda d: store.append(d, "r", fresh, now, 600))
        pruner = Pruner(db, HistoryConfig(idempotency_window_seconds=60), HotBuffer(100, 1 << 20))
        assert await pruner.prune_once() == (3, 3)
        assert await pruner.prune_once() == (0, 0)
        kept = await db.run(lambda d: store.since(d, "r", 0, 10))
        assert [row.handle for row in kept] == ["new"]
    finally:
        await db.close()
