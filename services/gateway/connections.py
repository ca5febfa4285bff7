"""Open Connect streams on this gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections import defaultdict
from collections.abc import Callable
from typing import NamedTuple

from services.gateway.outbox import Outbox
from services.runtime.errors import ServiceError

ANY_EVENT = "*"
EXCLUDED_PREFIX = "-"


class Interest:
    """Which events of a room a connection receives: all but some, or some."""

    __slots__ = ("all", "events", "excluded")

    def __init__(self, subscriptions: list[str]) -> None:
        self.all = ANY_EVENT in subscriptions
        self.events = {name for name in subscriptions if name != ANY_EVENT}
        self.excluded: set[str] = set()

    @classmethod
    def from_names(cls, names: list[str]) -> Interest:
        """The inverse of `names()`; ValueError for a name that is not one."""
        interest = cls(names)
        for name in names:
            if name.startswith(EXCLUDED_PREFIX):
                if not interest.all:
                    raise ValueError(f"{name!r} excludes an event, which needs {ANY_EVENT!r} too")
                interest.events.discard(name)
                interest.excluded.add(name.removeprefix(EXCLUDED_PREFIX))
        return interest

    def wants(self, event: str) -> bool:
        return (self.all and event not in self.excluded) or event in self.events

    def add(self, events: set[str], limit: int) -> None:
        """Receives these events too; ValueError (nothing changed) past `limit` names."""
        added = self.events if self.all else self.events | events
        self._replace(added, self.excluded - events, limit)

    def remove(self, events: set[str], limit: int) -> None:
        """Stops receiving these events; ValueError (nothing changed) past `limit` names."""
        excluded = self.excluded | events if self.all else self.excluded
        self._replace(self.events - events, excluded, limit)

    def _replace(self, events: set[str], excluded: set[str], limit: int) -> None:
        if len(events) + len(excluded) > limit:
            raise ValueError(f"a room subscription lists at most {limit} event names")
        self.events, self.excluded = events, excluded

    def set_all(self, on: bool) -> None:
        self.all = on
        self.events.clear()
        self.excluded.clear()

    def names(self) -> list[str]:
        """["*", "-typing"] for all but typing; ["message"] for just message."""
        if self.all:
            return [ANY_EVENT, *sorted(EXCLUDED_PREFIX + e for e in self.excluded)]
        return sorted(self.events)


class Held(NamedTuple):
    """A live delivery held during a catch-up: an encoded Event, or an EventChanged frame."""

    seq: int
    data: bytes
    change: bool = False


@dataclasses.dataclass(eq=False)
class Connection:
    session_id: str
    user_id: str
    device_id: str
    outbox: Outbox
    connected_at: float = dataclasses.field(default_factory=time.time)
    # room -> what this connection receives of it.
    rooms: dict[str, Interest] = dataclasses.field(default_factory=dict)
    subjects: set[str] = dataclasses.field(default_factory=set)
    # Rooms whose history is being read for this connection: live events are
    # held here and merged with the history by sequence.
    held: dict[str, list[Held]] = dataclasses.field(default_factory=dict)
    # Per room, the sequence a catch-up (replay or sync) covered: an event the
    # log already had then but whose fan-out comes later is not sent twice.
    caught_up: dict[str, int] = dataclasses.field(default_factory=dict)
    # When the access token the stream runs on expires (0: never), and the timer that ends it then.
    token_expires_at: float = 0.0
    token_timer: asyncio.TimerHandle | None = None
    # Set once the server ends the stream (revoked device, expired token): no command runs after it.
    ended: ServiceError | None = None
    # Ends the stream with an error: what is queued is sent, then a GoAway; a reader that never reads is cut off.
    end_with: Callable[[ServiceError], None] = lambda error: None


class ConnectionRegistry:
    def __init__(self) -> None:
        self._by_session: dict[str, Connection] = {}
        self._by_user: dict[str, set[Connection]] = defaultdict(set)
        self._by_device: dict[str, set[Connection]] = defaultdict(set)

    def add(self, connection: Connection) -> None:
        self._by_session[connection.session_id] = connection
        self._by_user[connection.user_id].add(connection)
        self._by_device[connection.device_id].add(connection)

    def remove(self, connection: Connection) -> None:
        self._by_session.pop(connection.session_id, None)
        for index, key in ((self._by_user, connection.user_id), (self._by_device, connection.device_id)):
            mine = index.get(key)
            if mine is not None:
                mine.discard(connection)
                if not mine:
                    del index[key]

    def get(self, session_id: str) -> Connection | None:
        return self._by_session.get(session_id)

    def of_user(self, user_id: str) -> list[Connection]:
        return sorted(self._by_user.get(user_id, ()), key=lambda c: c.session_id)

    def of_device(self, device_id: str) -> list[Connection]:
        return list(self._by_device.get(device_id, ()))

    def all(self) -> list[Connection]:
        return list(self._by_session.values())

    def online_users(self) -> list[str]:
        return sorted(self._by_user)
