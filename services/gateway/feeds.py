"""Per-room fan-out on this gateway.

A feed exists while the room has local members; it listens on the room's bus
subject and hands each event, encoded once, to the outbox of every member
subscribed to that event name.
"""

from __future__ import annotations

from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.bus import Bus, BusMessage, Subscription
from services.gateway.connections import Connection, Held

# Bus headers.
KIND = "kind"
KIND_EVENT = "event"
KIND_FRAME = "frame"  # a whole frame for every member but SKIP_SESSION (presence, ephemerals)
KIND_CHANGE = "change"  # a whole frame for members subscribed to the event (edits, deletes)
EVENT_HEADER = "event"
SEQ_HEADER = "seq"
SKIP_SESSION = "skip"  # a publisher that asked not to receive its own events


def room_subject(room_id: str) -> str:
    return f"room.{room_id}"


class RoomFeed:
    def __init__(self, room_id: str, bus: Bus) -> None:
        self.room_id = room_id
        self.members: dict[str, Connection] = {}
        # Deliveries made by this feed; publishers read the difference.
        self.delivered = 0
        self._subscription: Subscription = bus.subscribe(room_subject(room_id), self._deliver)

    def close(self) -> None:
        self._subscription.cancel()

    def _deliver(self, message: BusMessage) -> None:
        headers = message.headers
        kind = headers.get(KIND)
        if kind == KIND_FRAME:
            skip = headers.get(SKIP_SESSION)
            for session_id, member in self.members.items():
                if session_id != skip:
                    member.outbox.put(kinds.FRAME, message.data)
            return
        event = headers[EVENT_HEADER]
        seq = int(headers[SEQ_HEADER])
        if kind == KIND_CHANGE:
            self._deliver_change(event, seq, message.data)
            return
        skip = headers.get(SKIP_SESSION)
        item = wire.batch_item(message.data)
        room_id = self.room_id
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
                self.delivered += 1
            elif member.outbox.put(kinds.EVENT, item):
                self.delivered += 1

    def _deliver_change(self, event: str, seq: int, frame: bytes) -> None:
        """An EventChanged frame, to members subscribed to the event, held or skipped like an event."""
        room_id = self.room_id
        for member in self.members.values():
            interest = member.rooms.get(room_id)
            if interest is None or not interest.wants(event):
                continue
            if member.caught_up and seq <= member.caught_up.get(room_id, 0):
                continue
            held = member.held.get(room_id)
            if held is not None:
                held.append(Held(seq, frame, change=True))
            else:
                member.outbox.put(kinds.FRAME, frame)


class RoomFeeds:
    """Feeds by room; one appears with the first local member and goes with the last."""

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._feeds: dict[str, RoomFeed] = {}

    def add(self, room_id: str, connection: Connection) -> None:
        feed = self._feeds.get(room_id)
        if feed is None:
            feed = self._feeds[room_id] = RoomFeed(room_id, self._bus)
        feed.members[connection.session_id] = connection

    def remove(self, room_id: str, connection: Connection) -> None:
        feed = self._feeds.get(room_id)
        if feed is None:
            return
        feed.members.pop(connection.session_id, None)
        if not feed.members:
            feed.close()
            del self._feeds[room_id]

    def members(self, room_id: str) -> list[Connection]:
        feed = self._feeds.get(room_id)
        return list(feed.members.values()) if feed else []

    def delivered(self, room_id: str) -> int:
        feed = self._feeds.get(room_id)
        return feed.delivered if feed else 0

    def forget_room(self, room_id: str) -> list[Connection]:
        """Drops a deleted room's feed; returns the members it had."""
        feed = self._feeds.pop(room_id, None)
        if feed is None:
            return []
        feed.close()
        return list(feed.members.values())
