"""A room's feed on its own: a loss reported while it is already reading the log is read again;
joins and leaves gathered into one Presence frame per window."""

from __future__ import annotations

import asyncio
from typing import Any

from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from services.gateway.feeds import FeedSettings, RoomFeed
from services.gateway.outbox import FRAME
from services.runtime import room_stream


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


def settings(gap_wait: float = 1, presence_window: float = 0.01, presence: bool = True) -> FeedSettings:
    return FeedSettings(gap_wait=gap_wait, cap=100, presence_window=presence_window, tells_presence=lambda _: presence)


async def test_a_loss_reported_during_a_fill_is_read_again_after_it() -> None:
    log = SlowLog()
    feed = RoomFeed("room", log, settings(gap_wait=0.001))
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


def member(session_id: str = "s1") -> Any:
    from services.gateway.connections import Connection, Interest
    from services.gateway.outbox import FlushScheduler, Outbox

    connection = Connection(
        session_id=session_id, user_id="u", device_id="d", outbox=Outbox(FlushScheduler(60), 10**7, 10**6)
    )
    connection.rooms["room"] = Interest(["*"])
    return connection


def logged(seq: int, change_seq: int = 0, deleted: bool = False) -> history_pb2.LoggedEvent:
    return history_pb2.LoggedEvent(seq=seq, event="m", handle=f"h{seq}", change_seq=change_seq, deleted=deleted)


async def test_a_fill_sends_newer_edits_of_released_events_and_leaves_deleted_ones_out() -> None:
    """Released through 12; the log (read after 10) has 11, 12 edited at 13, and 14 deleted at 15."""
    from services.gateway.recovery import LogRead

    feed = RoomFeed("room", SlowLog(), settings(gap_wait=1))
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


def presence_frames(connection: Any) -> list[gateway_pb2.Presence]:
    frames = []
    for _, data in connection.outbox._items:
        response = gateway_pb2.ConnectResponse.FromString(data)
        if response.WhichOneof("frame") == "presence":
            frames.append(response.presence)
    return frames


async def test_joins_and_leaves_in_one_window_reach_each_member_as_one_frame() -> None:
    feed = RoomFeed("room", SlowLog(), settings(presence_window=0.01))
    members = [member(f"s{i}") for i in range(3)]
    for joined in members:
        feed.add(joined)
    for i in range(700):
        feed.receive(room_stream.presence_message("room", f"user{i}", True))
    feed.receive(room_stream.presence_message("room", "user0", False))  # the latest change of user0 counts
    await asyncio.sleep(0.05)
    for joined in members:
        frames = presence_frames(joined)
        assert len(frames) == 2  # 700 users, PRESENCE_CHANGES_PER_FRAME to a frame
        changes = [(c.user_id, c.joined) for frame in frames for c in frame.changes]
        assert len(changes) == 700
        assert changes[-1] == ("user0", False)
        assert changes[0] == ("user1", True)
    # The frame is built once and shared by every member.
    assert presence_frames(members[0])[0] is not None
    assert members[0].outbox._items[0][1] is members[1].outbox._items[0][1]
    feed.receive(room_stream.presence_message("room", "late", True))
    await asyncio.sleep(0.05)
    assert [c.user_id for c in presence_frames(members[0])[-1].changes] == ["late"]
    feed.close()


async def test_a_room_without_presence_sends_no_presence_frames() -> None:
    feed = RoomFeed("room", SlowLog(), settings(presence=False))
    joined = member()
    feed.add(joined)
    feed.receive(room_stream.presence_message("room", "someone", True))
    await asyncio.sleep(0.05)
    assert presence_frames(joined) == []
    feed.close()


async def test_a_storm_of_joins_reaches_early_members_once_it_is_over_not_in_every_short_window() -> None:
    feed = RoomFeed("room", SlowLog(), settings(presence_window=0.05))
    first = member("s0")
    feed.add(first)
    feed.receive(room_stream.presence_message("room", "user0", True))  # opens a 50 ms window (one member)
    # The storm: the room grows to 300 members, each join a change, within that first window.
    for i in range(1, 300):
        feed.add(member(f"s{i}"))
        feed.receive(room_stream.presence_message("room", f"user{i}", True))
    await asyncio.sleep(0.08)
    # Past the first window: a room of 300 has a window three times as long, and the storm grew it.
    assert presence_frames(first) == []
    await asyncio.sleep(0.3)
    (frame,) = presence_frames(first)
    assert [c.user_id for c in frame.changes] == [f"user{i}" for i in range(300)]
    # A quiet change later is told in a window of its own, not held for a storm.
    feed.receive(room_stream.presence_message("room", "late", True))
    await asyncio.sleep(0.4)
    assert [c.user_id for c in presence_frames(first)[-1].changes] == ["late"]
    feed.close()
