"""Open Connect streams on this gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Iterable
from typing import NamedTuple

from services.gateway.outbox import Outbox
from services.runtime.errors import ServiceError

ANY_EVENT = "*"
EXCLUDED_PREFIX = "-"
NO_NAMES: frozenset[str] = frozenset()


def _frozen(names: Iterable[str]) -> frozenset[str]:
    return frozenset(names) or NO_NAMES


class Interest:
    """Which events of a room a connection receives: all but some, or some.

    The name sets are frozen and replaced on change, and most are empty: every
    empty one is NO_NAMES, where each empty set would cost 216 bytes.
    """

    __slots__ = ("all", "events", "excluded")

    def __init__(self, subscriptions: list[str]) -> None:
        self.all = ANY_EVENT in subscriptions
        self.events = _frozen(name for name in subscriptions if name != ANY_EVENT)
        self.excluded = NO_NAMES

    @classmethod
    def from_names(cls, names: list[str]) -> Interest:
        """The inverse of `names()`; ValueError for a name that is not one."""
        interest = cls(names)
        excluded = [name for name in names if name.startswith(EXCLUDED_PREFIX)]
        if excluded and not interest.all:
            raise ValueError(f"{excluded[0]!r} excludes an event, which needs {ANY_EVENT!r} too")
        interest.events = _frozen(interest.events.difference(excluded))
        interest.excluded = _frozen(name.removeprefix(EXCLUDED_PREFIX) for name in excluded)
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

    def _replace(self, events: frozenset[str], excluded: frozenset[str], limit: int) -> None:
        if len(events) + len(excluded) > limit:
            raise ValueError(f"a room subscription lists at most {limit} event names")
        self.events, self.excluded = _frozen(events), _frozen(excluded)

    def set_all(self, on: bool) -> None:
        self.all = on
        self.events = self.excluded = NO_NAMES

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


@dataclasses.dataclass(eq=False, slots=True)
class Connection:
    session_id: str
    user_id: str
    device_id: str
    outbox: Outbox
    connected_at: float = dataclasses.field(default_factory=time.time)
    # room -> what this connection receives of it.
    rooms: dict[str, Interest] = dataclasses.field(default_factory=dict)
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
    # Rooms whose join is under way (joins run side by side): they count against the rooms a connection may be in.
    joining: frozenset[str] = frozenset()
    # Made on first use: most streams subscribe to no subject (see `subjects`).
    _subjects: set[str] | None = dataclasses.field(default=None, init=False, repr=False)

    @property
    def subjects(self) -> set[str]:
        """The subject patterns this connection subscribed to."""
        if self._subjects is None:
            self._subjects = set()
        return self._subjects


class _ByKey:
    """Connections by user or by device. A key with one connection (most users, most devices) holds it
    without a set of its own (216 bytes each)."""

    __slots__ = ("_held",)

    def __init__(self) -> None:
        self._held: dict[str, Connection | set[Connection]] = {}

    def add(self, key: str, connection: Connection) -> None:
        held = self._held.get(key)
        if held is None:
            self._held[key] = connection
        elif isinstance(held, Connection):
            self._held[key] = {held, connection}
        else:
            held.add(connection)

    def remove(self, key: str, connection: Connection) -> None:
        held = self._held.get(key)
        if held is connection:
            del self._held[key]
        elif isinstance(held, set):
            held.discard(connection)
            if not held:
                del self._held[key]

    def get(self, key: str) -> list[Connection]:
        held = self._held.get(key)
        if held is None:
            return []
        return [held] if isinstance(held, Connection) else list(held)

    def keys(self) -> list[str]:
        return list(self._held)


class ConnectionRegistry:
    def __init__(self) -> None:
        self._by_session: dict[str, Connection] = {}
        self._by_user = _ByKey()
        self._by_device = _ByKey()

    def add(self, connection: Connection) -> None:
        self._by_session[connection.session_id] = connection
        self._by_user.add(connection.user_id, connection)
        self._by_device.add(connection.device_id, connection)

    def remove(self, connection: Connection) -> None:
        self._by_session.pop(connection.session_id, None)
        self._by_user.remove(connection.user_id, connection)
        self._by_device.remove(connection.device_id, connection)

    def get(self, session_id: str) -> Connection | None:
        return self._by_session.get(session_id)

    def of_user(self, user_id: str) -> list[Connection]:
        return sorted(self._by_user.get(user_id), key=lambda c: c.session_id)

    def of_device(self, device_id: str) -> list[Connection]:
        return self._by_device.get(device_id)

    def all(self) -> list[Connection]:
        return list(self._by_session.values())

    def online_users(self) -> list[str]:
        return sorted(self._by_user.keys())
