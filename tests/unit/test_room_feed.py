"""A room's feed on its own: a loss reported while it is already reading the log is read again."""

from __future__ import annotations

import asyncio
from typing import Any

from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from services.gateway.feeds import RoomFeed
from services.gateway.outbox import FRAME


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


def member() -> Any:
    from services.gateway.connections import Connection, Interest
    from services.gateway.outbox import FlushScheduler, Outbox

    connection = Connection(
        session_id="s1", user_id="u", device_id="d", outbox=Outbox(FlushScheduler(60), 10**7, 10**6)
    )
    connection.rooms["room"] = Interest(["*"])
    return connection


def logged(seq: int, change_seq: int = 0, deleted: bool = False) -> history_pb2.LoggedEvent:
    return history_pb2.LoggedEvent(seq=seq, event="m", handle=f"h{seq}", change_seq=change_seq, deleted=deleted)


async def test_a_fill_sends_newer_edits_of_released_events_and_leaves_deleted_ones_out() -> None:
    """Released through 12; the log (read after 10) has 11, 12 edited at 13, and 14 deleted at 15."""
    from services.gateway.recovery import LogRead

    feed = RoomFeed("room", SlowLog(), gap_wait=1, cap=100)
    joined = member()
    feed.add(joined)
    feed.epoch = "e1"
    feed._sequencer.cover(12)
    read = LogRead(
        after_seq=10,
        epoch="e1",
        last_seq=15,
        through=15,
        events=[logged(11), logged(12, change_seq=13), logged(14, change_seq=15, deleted=True)],
        pages=1,
    )
    feed._release_read(read)
    kinds = [kind for kind, _ in joined.outbox._items]
    changed = [gateway_pb2.ConnectResponse.FromString(data).event_changed for _, data in joined.outbox._items]
    assert kinds == [FRAME]  # no event re-sent: 11 and 12 were released; 14 was deleted before anyone saw it
    assert (changed[0].seq, changed[0].change_seq) == (12, 13)
    assert feed._sequencer.released == 15
