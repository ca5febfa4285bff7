"""A room's feed on its own: a loss reported while it is already reading the log is read again."""

from __future__ import annotations

import asyncio

from parley.history.v1 import history_pb2
from services.gateway.feeds import RoomFeed


class SlowLog:
    """Answers ListEventsSince with an empty, complete read, each after the test lets it."""

    def __init__(self) -> None:
        self.reads = 0
        self.go = asyncio.Event()

    async def since(self, room_id: str, after_seq: int, limit: int) -> history_pb2.ListEventsSinceResponse:
        self.reads += 1
        await self.go.wait()
        self.go.clear()
        return history_pb2.ListEventsSinceResponse(epoch="e1", last_seq=after_seq, read_through=after_seq)


async def test_a_loss_reported_during_a_fill_is_read_again_after_it() -> None:
    log = SlowLog()
    feed = RoomFeed("room", log, gap_wait=0.001, cap=100)
    feed.start("e1", 5)
    feed.suspect_gap()
    await asyncio.sleep(0.01)
    assert log.reads == 1
    feed.suspect_gap()  # during the read: it may have begun before this loss
    feed.suspect_gap()
    log.go.set()
    await asyncio.sleep(0.01)
    assert log.reads == 2  # once more, not once per report
    log.go.set()
    await asyncio.sleep(0.01)
    assert log.reads == 2
    feed.close()
