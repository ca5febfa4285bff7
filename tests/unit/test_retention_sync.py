"""The gateway hands every room's retention to the history service, retrying until it is taken."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from parley.history.v1 import history_pb2
from parley.room.v1 import room_pb2
from services.gateway import retention
from services.gateway.directory import RoomDirectory
from services.gateway.retention import RetentionSync


def room(room_id: str, *events: tuple[str, bool, int, int]) -> room_pb2.Room:
    return room_pb2.Room(
        room_id=room_id,
        events=[
            room_pb2.EventDefinition(
                name=name, history=room_pb2.HistoryPolicy(enabled=kept, limit=limit, max_age_seconds=age)
            )
            for name, kept, limit, age in events
        ],
    )


class FlakyHistory:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls: list[history_pb2.SetRetentionRequest] = []

    async def set_retention(self, request: history_pb2.SetRetentionRequest) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("history is restarting")
        self.calls.append(request)


async def test_every_rooms_policy_is_sent_in_chunks_after_failures(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retention, "ROOMS_PER_CALL", 2)
    monkeypatch.setattr(retention, "RETRY_SECONDS", (0.01,))
    directory = RoomDirectory()
    directory.remember(room("chat", ("message", True, 100, 0), ("typing", False, 5, 0), ("*", True, 0, 60)))
    directory.remember(room("feed", ("note", True, 0, 0)))
    directory.remember(room("quiet"))
    history = FlakyHistory(failures=2)
    sync = RetentionSync(history, directory)  # type: ignore[arg-type]
    sync.schedule()
    await asyncio.wait_for(sync.synced.wait(), 5)
    await sync.close()
    sent: list[Any] = [r for call in history.calls for r in call.rooms]
    assert [len(call.rooms) for call in history.calls] == [2, 1]
    chat, feed, quiet = sent
    # Kept names only ("typing" keeps no history); "*" is the policy of every other name.
    assert [(e.event, e.keep_last, e.keep_seconds) for e in chat.events] == [("message", 100, 0)]
    assert (chat.other.keep_last, chat.other.keep_seconds) == (0, 60)
    assert [(e.event, e.keep_last) for e in feed.events] == [("note", 0)]
    assert (quiet.room_id, list(quiet.events)) == ("quiet", [])
