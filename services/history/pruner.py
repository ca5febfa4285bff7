"""The history service's background pruning: retention per event definition, old idempotency keys."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from functools import partial

from services.history import store
from services.history.hot import HotBuffer
from services.runtime.config import HistoryConfig
from services.runtime.sqlite import SqliteDatabase

log = logging.getLogger("parley.history")
# Without any gateway's SetRetention by then, pruning starts with the stored policies.
RETENTION_GRACE_SECONDS = 60.0


class Pruner:
    def __init__(
        self, db: SqliteDatabase, config: HistoryConfig, hot: HotBuffer, retention_received: asyncio.Event
    ) -> None:
        self._db = db
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
        pruned, keys = await self._db.transaction(
            lambda db: (store.prune(db, int(now * 1000)), store.prune_idempotency_keys(db, now - window))
        )
        for each in pruned:
            self._hot.apply(each.room_id, partial(self._hot.pruned, each.room_id, each.event, each.bound))
        return sum(each.removed for each in pruned), keys

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
