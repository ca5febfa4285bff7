"""The background pruner: retention and idempotency keys past their window, on each storage backend."""

from __future__ import annotations

import asyncio
import time

import pytest

from services.history import pruner as pruner_module
from services.history.hot import HotBuffer
from services.history.pruner import Pruner
from services.history.storage import HistoryStorage, NewEventRow
from services.runtime.config import HistoryConfig
from tests.storage_support import append_one
from tests.support import wait_until

pytest_plugins = ["tests.storage_backends"]


async def test_prune_once_removes_old_keys_and_events_past_retention(history_storage: HistoryStorage) -> None:
    now = time.time()
    old = [NewEventRow("msg", "s", f"old{i}", b"", f"key{i}", time_ms=1, keep_last=1) for i in range(3)]
    fresh = [NewEventRow("msg", "s", "new", b"", "key-new", time_ms=int(now * 1000), keep_last=1)]
    await append_one(history_storage, "r", old, now - 120, 600)
    await append_one(history_storage, "r", fresh, now, 600)
    config = HistoryConfig(idempotency_window_seconds=60)
    pruner = Pruner(history_storage, config, HotBuffer(100, 1 << 20), asyncio.Event())
    assert await pruner.prune_once() == (3, 3)
    assert await pruner.prune_once() == (0, 0)
    kept = (await history_storage.since("r", 0, 10)).events
    assert [row.handle for row in kept] == ["new"]


@pytest.mark.parametrize("policies_arrive", [True, False])
async def test_background_pruning_waits_for_the_current_policies(
    history_storage: HistoryStorage, monkeypatch: pytest.MonkeyPatch, policies_arrive: bool
) -> None:
    # With the policies sent, only their arrival can start pruning in time; without, the grace does.
    monkeypatch.setattr(pruner_module, "RETENTION_GRACE_SECONDS", 30 if policies_arrive else 0.5)
    received = asyncio.Event()
    pruner = Pruner(history_storage, HistoryConfig(prune_interval_seconds=0.01), HotBuffer(100, 1 << 20), received)

    async def kept() -> int:
        return len((await history_storage.since("r", 0, 10)).events)

    async def pruned_to_one() -> bool:
        return await kept() == 1

    try:
        events = [NewEventRow("msg", "s", f"h{i}", b"", keep_last=1) for i in range(3)]
        await append_one(history_storage, "r", events, time.time(), 600)
        pruner.start()
        await asyncio.sleep(0.2)
        # A restart: the stored limit may be one the definitions no longer have.
        assert await kept() == 3
        if policies_arrive:
            received.set()  # a gateway's SetRetention
        await wait_until(pruned_to_one, within=3)
    finally:
        await pruner.close()
