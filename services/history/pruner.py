"""The history service's background pruning: retention per event definition, old idempotency keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial

from services.history.hot import HotBuffer
from services.history.storage import HistoryStorage
from services.runtime.config import HistoryConfig

log = logging.getLogger("parley.history")
# Without any gateway's SetRetention by then, pruning starts with the stored policies.
RETENTION_GRACE_SECONDS = 60.0


class Pruner:
    def __init__(
        self, storage: HistoryStorage, config: HistoryConfig, hot: HotBuffer, retention_received: asyncio.Event
    ) -> None:
        self._storage = storage
        self._hot = hot
        self._retention_received = retention_received
        self._config = config
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def prune_once(self) -> tuple[int, int]:
        """Removes what retention no longer keeps; returns (events, idempotency keys) removed."""
        now = time.time()
        window = self._config.idempotency_window_seconds
        events = 0
        for room_id in await self._storage.retention_rooms():
            # A room at a time, so appends and edits wait for one room's pruning, not all of it.
            async with self._hot.commit_order:
                pruned = await self._storage.prune_room(room_id, int(now * 1000))
                for each in pruned:
                    self._hot.apply(room_id, partial(self._hot.pruned, room_id, each.event, each.bound))
            events += sum(each.removed for each in pruned)
        keys = await self._storage.prune_idempotency_keys(now - window)
        return events, keys

    async def _run(self) -> None:
        # The policies stored are those of the definitions before a restart, until
        # a gateway sends the current ones: a limit lifted meanwhile must not prune.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._retention_received.wait(), RETENTION_GRACE_SECONDS)
        while True:
            await asyncio.sleep(self._config.prune_interval_seconds)
            try:
                events, keys = await self.prune_once()
            except Exception:
                log.exception("pruning the history failed; trying again next round")
                continue
            if events or keys:
                log.info("pruned history", extra={"events": events, "idempotency_keys": keys})

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
