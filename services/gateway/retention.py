"""Each room's retention, from its event definitions, handed to the history service.

The gateway passes an event's limits with every append, but a limit lifted
or lowered in the definitions must apply before the event is next
published: a lifted limit would otherwise keep pruning. So whenever the
gateway reads the room definitions (at start and after the room service
comes back), it sends every room's policy, retrying until the history
service takes it.
"""

from __future__ import annotations

import asyncio
import logging

from parley.history.v1 import history_pb2
from services.gateway.directory import RoomDirectory
from services.gateway.history_client import HistoryAppender
from services.room.rules import EventRules

log = logging.getLogger("parley.gateway")
ROOMS_PER_CALL = 500
RETRY_SECONDS = (1.0, 2.0, 5.0, 10.0, 30.0)


def room_retention(rules: EventRules) -> history_pb2.RoomRetention:
    named, (other_last, other_seconds) = rules.retention_policy()
    return history_pb2.RoomRetention(
        room_id=rules.room_id,
        events=[
            history_pb2.EventRetention(event=name, keep_last=keep_last, keep_seconds=keep_seconds)
            for name, (keep_last, keep_seconds) in sorted(named.items())
        ],
        other=history_pb2.EventRetention(keep_last=other_last, keep_seconds=other_seconds),
    )


class RetentionSync:
    def __init__(self, history: HistoryAppender, directory: RoomDirectory) -> None:
        self._history = history
        self._directory = directory
        self._task: asyncio.Task[None] | None = None
        self.synced = asyncio.Event()

    def schedule(self) -> None:
        """Sends the current definitions' policies, replacing a send still under way."""
        if self._task is not None:
            self._task.cancel()
        self.synced.clear()
        self._task = asyncio.get_running_loop().create_task(self._send_until_taken())

    async def _send_until_taken(self) -> None:
        attempt = 0
        while True:
            try:
                await self._send()
            except Exception as exc:
                wait = RETRY_SECONDS[min(attempt, len(RETRY_SECONDS) - 1)]
                log.warning("could not set history retention; retrying in %ss: %s", wait, exc)
                attempt += 1
                await asyncio.sleep(wait)
                continue
            self.synced.set()
            return

    async def _send(self) -> None:
        policies = [
            room_retention(rules)
            for room_id in sorted(self._directory.room_ids())
            if (rules := self._directory.rules(room_id)) is not None
        ]
        for start in range(0, len(policies), ROOMS_PER_CALL):
            rooms = policies[start : start + ROOMS_PER_CALL]
            await self._history.set_retention(history_pb2.SetRetentionRequest(rooms=rooms))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
