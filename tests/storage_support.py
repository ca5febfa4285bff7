"""Helpers for storage tests (the fixtures giving each backend are in tests/storage_backends.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.history.storage import AppendRequest, Appends, HistoryStorage, LogClosed, NewEventRow, Pruned
from services.runtime.config import Config
from tests.support import make_config


def storage_config(data_dir: Path, url: str, **overrides: Any) -> Config:
    """A test config whose services keep their state at `url` ("" for SQLite under `data_dir`)."""
    return make_config(data_dir, **{"storage.url": url, **overrides})


async def append_one(
    storage: HistoryStorage, room_id: str, events: list[NewEventRow], now: float, window: float
) -> Appends:
    """One request appended alone; its log must be open."""
    (result,) = await storage.append_batch([AppendRequest(room_id, events)], now, window)
    assert not isinstance(result, LogClosed)
    return result


async def prune_all(storage: HistoryStorage, now_ms: int) -> list[Pruned]:
    """Every room's retention applied, as the pruner applies it."""
    return [each for room_id in await storage.retention_rooms() for each in await storage.prune_room(room_id, now_ms)]
