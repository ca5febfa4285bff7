"""Per-room fan-out on this gateway, in the room's sequence order.

A feed exists while the room has local members. It listens on the room's bus
subject (services/runtime/room_stream.py) and releases the room's sequenced
messages strictly in order, whoever wrote them: a missing position is waited
for `gap_wait` seconds, then read from the history service; if it cannot be
filled, every member is told (a KIND_GAP HistoryBatch, recovered=false, with
the reason) — never a silent skip. Each released event, encoded once, goes to
the outbox of every member subscribed to its name.

Joins and leaves are not sequenced: the feed gathers them for
`presence_window` seconds (longer in a big room: one window per 100 local
members, up to a second, and a window that gathers a storm of joins grows
with the room) and sends every member one Presence frame for all
of them (each user once, in the order of their latest change), so a storm of
N joins costs each member a frame per window rather than N frames. A member
going offline (their last connection ended) is a leave that names the ended
session, gathered the same way.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Callable

from parley.gateway.v1 import gateway_pb2
from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.connections import Connection, Held
from services.gateway.recovery import (
    EPOCH_CHANGED,
    UNAVAILABLE,
    LogRead,
    LogReader,
    ResumePoint,
    read_log,
    stream_recovered,
)
from services.gateway.sequencer import Sequencer
from services.runtime import room_stream
from services.runtime.bus import Bus, BusMessage, Subscription
from services.runtime.errors import unavailable
from services.runtime.room_stream import RoomMessage

log = logging.getLogger("parley.gateway")

# Events whose recipients a feed remembers at most until their publishers ask.
RECENT_RECIPIENTS = 1024
# Changes in one Presence frame (a window with more sends several).
PRESENCE_CHANGES_PER_FRAME = 500
# The presence window grows with the room: `presence_window` per this many local members, up to
# MAX_PRESENCE_WINDOW, so a storm of joins to a big room costs few frames per member.
MEMBERS_PER_PRESENCE_WINDOW = 100
MAX_PRESENCE_WINDOW = 1.0


@dataclasses.dataclass(frozen=True)
class FeedSettings:
    gap_wait: float
    cap: int
    presence_window: float
    # Whether a room's members hear of joins and leaves.
    tells_presence: Callable[[str], bool]


class RoomFeed:
    def __init__(self, room_id: str, history: LogReader, settings: FeedSettings) -> None:
        self.room_id = room_id
        self.members: dict[str, Connection] = {}
        # Recipients of events released while a local publish waits for its append, by sequence:
        # the publisher takes its events' counts. Kept only while one waits (`expecting`).
        self._recipients: dict[int, int] = {}
        self.expecting = 0
        # The room log's epoch; None until the first read of it.
        self.epoch: str | None = None
        # Per member: the position after which it got every release (its catch-up read must reach it).
        self.live_from: dict[str, int] = {}
        self._history = history
        self._settings = settings
        # Joins and leaves since the last Presence frame: user -> their latest change, latest last.
        self._presence: dict[str, gateway_pb2.PresenceChange] = {}
        self._presence_timer: asyncio.TimerHandle | None = None
        # When the window's first change came (loop time).
        self._presence_opened = 0.0
        self._sequencer: Sequencer[RoomMessage] = Sequencer()
        self._retired_epochs: set[str] = set()
        self._timer: asyncio.TimerHandle | None = None
        self._filling: asyncio.Task[None] | None = None
        # A possible loss reported while a fill ran.
        self._suspected = False
        self._subscription: Subscription | None = None
        self._closed = False
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def open(self, bus: Bus) -> None:
        """Subscribes to the room's subject; returns once messages published from now on arrive."""
        try:
            subscription = await bus.subscribe(room_stream.room_subject(self.room_id), self.receive, self.suspect_gap)
        except BaseException as exc:
            if not self.ready.done():
                # The first joiner's cancellation is its own: the others get a retryable error.
                shared = (
                    unavailable("the room's subscription could not be made")
                    if isinstance(exc, asyncio.CancelledError)
                    else exc
                )
                self.ready.set_exception(shared)
                self.ready.exception()  # marked retrieved: the first member gets the error from this call
            raise
        if self._closed:
            subscription.cancel()
        self._subscription = subscription
        if not self.ready.done():
            self.ready.set_result(None)

    def close(self) -> None:
        self._closed = True
        if self._subscription is not None:
            self._subscription.cancel()
        if self._timer is not None:
            self._timer.cancel()
        if self._filling is not None:
            self._filling.cancel()
        if self._presence_timer is not None:
            self._presence_timer.cancel()

    def add(self, connection: Connection) -> None:
        self.members[connection.session_id] = connection
        if self._sequencer.released is not None:
            self.live_from[connection.session_id] = self._sequencer.released

    def remove(self, connection: Connection) -> None:
        self.members.pop(connection.session_id, None)
        self.live_from.pop(connection.session_id, None)

    def live_position(self, connection: Connection) -> tuple[str, int] | None:
        """The epoch, and the position after which the member gets every release; None before the feed's start."""
        if self.epoch is None or connection.session_id not in self.live_from:
            return None
        return self.epoch, self.live_from[connection.session_id]

    def start(self, epoch: str, through: int) -> None:
        """A join read the log through `through`: the first such read starts the sequence there."""
        if self._sequencer.started:
            return
        self.epoch = epoch
        for session_id in self.members:
            self.live_from.setdefault(session_id, through)
        self._release(self._sequencer.cover(through))
        self._watch_gap()

    # Receiving

    def receive(self, message: BusMessage) -> None:
        received = room_stream.parse(message)
        if received.kind == room_stream.PRESENCE:
            self._gather_presence(received)
            return
        if not received.sequenced:
            self._deliver_frame(received)
            return
        if self.epoch is not None and received.epoch != self.epoch:
            if received.epoch in self._retired_epochs:
                return  # late news of a log that was reset
            if self.epoch and self._sequencer.started:
                self._new_epoch(received.epoch)
            self.epoch = received.epoch  # (an empty epoch: the log had not started when it was read)
        self._release(self._sequencer.offer(received.seq, received))
        self._watch_gap()

    def suspect_gap(self) -> None:
        """The bus may have dropped messages: read the log for anything after the last release."""
        if not self._sequencer.started or self._closed:
            return
        if self._filling is not None:
            self._suspected = True  # the read under way may have begun before the loss: read again after it
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._filling = asyncio.create_task(self._fill())

    def _new_epoch(self, epoch: str) -> None:
        """The log was reset (its room deleted and created again): a new sequence from 1."""
        assert self.epoch is not None
        self._retired_epochs.add(self.epoch)
        self._sequencer.restart(0)
        self._forget_positions()
        self._tell_gap(EPOCH_CHANGED, epoch, through=0)

    def _forget_positions(self) -> None:
        """Members' positions were in the old log: the new one's events are all news to them."""
        for member in self.members.values():
            member.caught_up.pop(self.room_id, None)

    # Gaps

    def _watch_gap(self) -> None:
        if self._sequencer.has_gap and self._timer is None and self._filling is None and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self._settings.gap_wait, self._gap_timed_out)

    def _gap_timed_out(self) -> None:
        self._timer = None
        if self._sequencer.has_gap and self._filling is None and not self._closed:
            self._filling = asyncio.create_task(self._fill())

    async def _fill(self) -> None:
        """Reads what is missing from the log and releases it in its turn, or tells members it is lost."""
        try:
            after, epoch = self._sequencer.released or 0, self.epoch or ""
            try:
                read = await read_log(self._history, self.room_id, after, self._settings.cap)
            except Exception:  # a ServiceError, or a storage error from an in-process history service
                log.warning("a gap in a room's stream could not be read", exc_info=True, extra={"room": self.room_id})
                self._give_up_to_next(UNAVAILABLE)
                return
            if epoch != self.epoch:
                return  # a new log began meanwhile; its own gaps are watched
            recovered, reason = stream_recovered(ResumePoint(epoch, after), read, self._settings.cap)
            if recovered:
                self._release_read(read)
            else:
                if read.epoch != epoch:
                    self._retired_epochs.add(epoch)
                    self.epoch = read.epoch
                    self._sequencer.restart(read.last_seq)
                    self._forget_positions()
                self._tell_gap(reason, read.epoch, through=read.last_seq)
                self._release(self._sequencer.cover(read.last_seq))
        finally:
            self._filling = None
            if self._suspected:
                self._suspected = False
                self.suspect_gap()
            else:
                self._watch_gap()

    def _release_read(self, read: LogRead) -> None:
        """What the read has after the last release, in position order, then what waited after it.

        The read has events as they are now: one members never got goes out in
        its current form (not at all if deleted); one they got whose latest edit
        or delete is newer goes out as that change.
        """
        released = self._sequencer.released or 0
        found = []
        for e in [*read.changes, *read.events]:
            if e.seq > released:
                if not e.deleted:
                    data = room_stream.room_event(self.room_id, e, read.epoch).SerializeToString()
                    found.append(RoomMessage(self.room_id, room_stream.EVENT, e.seq, read.epoch, e.event, "", data))
            elif e.change_seq > released:
                found.append(room_stream.parse(room_stream.change_message(self.room_id, read.epoch, e)))
        self._release(sorted(found, key=lambda m: m.seq))
        self._release(self._sequencer.cover(read.through))

    def _give_up_to_next(self, reason: str) -> None:
        """The positions before the next waiting message are lost: members are told, the rest goes on.

        With nothing waiting (the bus only said it may have dropped something), what
        is lost is unknown: members are told all the same, and the sequence stays.
        """
        released = self._sequencer.released or 0
        through = self._sequencer.lowest_waiting - 1 if self._sequencer.has_gap else released
        self._tell_gap(reason, self.epoch or "", through=through)
        self._release(self._sequencer.cover(through))

    def _tell_gap(self, reason: str, epoch: str, through: int) -> None:
        notice = gateway_pb2.HistoryBatch(
            room_id=self.room_id,
            kind=gateway_pb2.HistoryBatch.KIND_GAP,
            recovered=False,
            epoch=epoch,
            unrecovered_reason=reason,
        )
        frame = wire.frame(gateway_pb2.ConnectResponse(history=notice))
        for member in self.members.values():
            held = member.held.get(self.room_id)
            if held is not None:
                held.append(Held(through, frame, change=True))
            else:
                member.outbox.put(kinds.FRAME, frame)

    # Delivering

    def _release(self, messages: list[RoomMessage]) -> None:
        for message in messages:
            if message.kind == room_stream.CHANGE:
                self._deliver_change(message)
            else:
                self._deliver_event(message)

    def _gather_presence(self, message: RoomMessage) -> None:
        if not self._settings.tells_presence(self.room_id):
            return
        change = gateway_pb2.PresenceChange.FromString(message.data)
        earlier = self._presence.pop(change.user_id, None)
        if earlier is not None and not change.ended_session_id:
            # A connection that ended earlier in the window is still told, whatever came after.
            change.ended_session_id = earlier.ended_session_id
        self._presence[change.user_id] = change
        if self._presence_timer is None and not self._closed:
            loop = asyncio.get_running_loop()
            self._presence_opened = loop.time()
            self._presence_timer = loop.call_later(self._presence_window(), self._send_presence)

    def _presence_window(self) -> float:
        windows = max(1.0, len(self.members) / MEMBERS_PER_PRESENCE_WINDOW)
        return min(self._settings.presence_window * windows, max(MAX_PRESENCE_WINDOW, self._settings.presence_window))

    def _storm_goes_on(self) -> bool:
        """A storm of joins (a window's worth of changes or more) to a room that grew meanwhile: the window
        grows with the room (see `_presence_window`, counted from its first change), so members hear of the
        storm in few frames, mostly once it is over, instead of one per short early window."""
        if len(self._presence) < MEMBERS_PER_PRESENCE_WINDOW:
            return False
        loop = asyncio.get_running_loop()
        remaining = self._presence_window() - (loop.time() - self._presence_opened)
        if remaining < self._settings.presence_window / 10:
            return False
        self._presence_timer = loop.call_later(remaining, self._send_presence)
        return True

    def _send_presence(self) -> None:
        """One frame (per PRESENCE_CHANGES_PER_FRAME) of the window's joins and leaves, shared by every member."""
        self._presence_timer = None
        if self._storm_goes_on():
            return
        changes = list(self._presence.values())
        self._presence = {}
        for start in range(0, len(changes), PRESENCE_CHANGES_PER_FRAME):
            presence = gateway_pb2.Presence(
                room_id=self.room_id, changes=changes[start : start + PRESENCE_CHANGES_PER_FRAME]
            )
            frame = wire.frame(gateway_pb2.ConnectResponse(presence=presence))
            for member in self.members.values():
                member.outbox.put(kinds.FRAME, frame)

    def _deliver_frame(self, message: RoomMessage) -> None:
        skip = message.skip_session
        for session_id, member in self.members.items():
            if session_id != skip:
                member.outbox.put(kinds.FRAME, message.data)

    def _deliver_event(self, message: RoomMessage) -> None:
        event, seq, skip = message.event, message.seq, message.skip_session
        item = wire.batch_item(message.data)
        room_id = self.room_id
        delivered = 0
        for session_id, member in self.members.items():
            if session_id == skip:
                continue
            interest = member.rooms.get(room_id)
            if interest is None or not interest.wants(event):
                continue
            if member.caught_up and seq <= member.caught_up.get(room_id, 0):
                continue
            held = member.held.get(room_id)
            if held is not None:
                held.append(Held(seq, message.data))
                delivered += 1
            elif member.outbox.put(kinds.EVENT, item):
                delivered += 1
        if self.expecting:
            self._recipients[seq] = delivered
            if len(self._recipients) > RECENT_RECIPIENTS:
                del self._recipients[next(iter(self._recipients))]

    def recipients(self, seqs: list[int]) -> int:
        """The members these events were delivered to, counted once (each count is taken, not kept)."""
        return sum(self._recipients.pop(seq, 0) for seq in seqs)

    def recipients_counted(self) -> None:
        """A publish that expected recipients has its count; with none left waiting, nothing is kept."""
        self.expecting = max(0, self.expecting - 1)
        if not self.expecting:
            self._recipients.clear()

    def _deliver_change(self, message: RoomMessage) -> None:
        """An EventChanged frame, to members subscribed to the event, held or skipped like an event."""
        room_id = self.room_id
        for member in self.members.values():
            interest = member.rooms.get(room_id)
            if interest is None or not interest.wants(message.event):
                continue
            if member.caught_up and message.seq <= member.caught_up.get(room_id, 0):
                continue
            held = member.held.get(room_id)
            if held is not None:
                held.append(Held(message.seq, message.data, change=True))
            else:
                member.outbox.put(kinds.FRAME, message.data)


class RoomFeeds:
    """Feeds by room; one appears with the first local member and goes with the last."""

    def __init__(self, bus: Bus, history: LogReader, settings: FeedSettings) -> None:
        self._bus = bus
        self._history = history
        self._settings = settings
        self._feeds: dict[str, RoomFeed] = {}

    async def add(self, room_id: str, connection: Connection) -> RoomFeed:
        """Adds a member; returns once the feed's subscription is in place (the member's reads start after)."""
        feed = self._feeds.get(room_id)
        if feed is None:
            feed = self._feeds[room_id] = RoomFeed(room_id, self._history, self._settings)
            feed.add(connection)
            try:
                await feed.open(self._bus)
            except BaseException:
                self.remove(room_id, connection)
                raise
            return feed
        feed.add(connection)
        try:
            await asyncio.shield(feed.ready)
        except BaseException:
            self.remove(room_id, connection)
            raise
        return feed

    def get(self, room_id: str) -> RoomFeed | None:
        return self._feeds.get(room_id)

    def remove(self, room_id: str, connection: Connection) -> None:
        feed = self._feeds.get(room_id)
        if feed is None:
            return
        feed.remove(connection)
        if not feed.members:
            feed.close()
            del self._feeds[room_id]

    def members(self, room_id: str) -> list[Connection]:
        feed = self._feeds.get(room_id)
        return list(feed.members.values()) if feed else []

    def recipients(self, room_id: str, seqs: list[int]) -> int:
        """The deliveries this gateway made of these events of the room (so far)."""
        feed = self._feeds.get(room_id)
        return feed.recipients(seqs) if feed else 0

    def expect_recipients(self, room_id: str) -> None:
        """A publish to the room waits for its append: its feed counts deliveries until `recipients_counted`."""
        feed = self._feeds.get(room_id)
        if feed is not None:
            feed.expecting += 1

    def recipients_counted(self, room_id: str) -> None:
        feed = self._feeds.get(room_id)
        if feed is not None:
            feed.recipients_counted()

    def suspect_gaps(self) -> None:
        """Messages for any room may have been lost (a relay reconnected): every feed reads on from its last."""
        for feed in self._feeds.values():
            feed.suspect_gap()

    def forget_room(self, room_id: str) -> list[Connection]:
        """Drops a deleted room's feed; returns the members it had."""
        feed = self._feeds.pop(room_id, None)
        if feed is None:
            return []
        feed.close()
        return list(feed.members.values())
