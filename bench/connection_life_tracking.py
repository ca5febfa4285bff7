"""What the connection-life benchmark records of an SDK client: its state changes and the events it received.

Times are `time.time_ns()`: the coordinator and the worker processes share
this machine's clock, so a client's return is compared with the moment the
coordinator began a restart or a drain.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import itertools
import time
from collections.abc import Iterable, Sequence
from typing import Any

from parley import Client, ParleyError
from parley.connection import ConnectionState
from parley.device_identity import DeviceIdentity
from parley.gateway.v1 import gateway_pb2
from parley.rooms import Room, RoomEvent
from services.runtime.session_ids import gateway_of

CONNECTED = ConnectionState.CONNECTED.value
WELCOME_TIMEOUT_SECONDS = 10.0


@dataclasses.dataclass(frozen=True)
class Absence:
    """When a client left `connected` and when it was connected again (None: not yet)."""

    left_ns: int
    back_ns: int | None


def absence(changes: Sequence[tuple[int, str]]) -> Absence | None:
    """The client's time away in these state changes (oldest first), None when it never left `connected`.

    Back is the last change to `connected` after it left, and only while it is still connected.
    """
    left = next((ns for ns, state in changes if state != CONNECTED), None)
    if left is None:
        return None
    if changes[-1][1] != CONNECTED:
        return Absence(left, None)
    return Absence(left, changes[-1][0])


def tally(numbers: Sequence[int], seqs: Sequence[int], expected: Iterable[int]) -> dict[str, int]:
    """Events one subscriber received (payload numbers and sequences, in arrival order) against those expected."""
    wanted = set(expected)
    unique = set(numbers)
    return {
        "expected": len(wanted),
        "received": len(numbers),
        "received_unique": len(unique & wanted),
        "lost": len(wanted - unique),
        "duplicated": len(numbers) - len(unique),
        "unexpected": len(unique - wanted),
        "out_of_order": sum(1 for before, after in itertools.pairwise(seqs) if after <= before),
    }


class TrackedClient:
    """An SDK client in one room, with its state changes since the last `mark`, the gateway it is connected
    to, the resumes that could not recover, and the events it received.

    Made once the client has joined: every connection it sees is a reconnection.
    """

    def __init__(self, client: Client, room: Room, event: str, gateway: str) -> None:
        self.client = client
        self.room = room
        # The id of the gateway of its latest stream (a session id names its gateway).
        self.gateway = gateway
        # Reconnections after which the room said `recovered=false` (events missed meanwhile are not replayed).
        self.unrecovered = 0
        self.changes: list[tuple[int, str]] = []
        self.numbers: list[int] = []
        self.seqs: list[int] = []
        self.errors: collections.Counter[str] = collections.Counter()
        client.on_state(self._changed)
        client.on_error(self._failed)
        client.on_connect(self._connected)
        room.on(event, self._received)

    @property
    def ready(self) -> bool:
        """Connected, with its room joined again (and resumed)."""
        return self.client.state is ConnectionState.CONNECTED and self.room.joined

    def mark(self) -> None:
        self.changes = []

    def absence(self) -> Absence | None:
        return absence(self.changes)

    def _changed(self, state: ConnectionState, error: ParleyError | None) -> None:
        self.changes.append((time.time_ns(), state.value))

    def _connected(self, welcome: gateway_pb2.Welcome) -> None:
        self.gateway = gateway_of(welcome.session_id)
        if not self.room.recovered:
            self.unrecovered += 1

    def _failed(self, error: ParleyError) -> None:
        self.errors[f"{type(error).__name__}: {error.reason or error}"[:200]] += 1

    def _received(self, event: RoomEvent) -> None:
        data: Any = event.data
        self.numbers.append(int(data["n"]))
        self.seqs.append(event.seq)


async def open_tracked(address: str, identity: DeviceIdentity, room_id: str, event: str) -> TrackedClient:
    """A client on its own channel, registered if new, logged in and joined to `room_id`, tracked from then."""
    client = Client(address, identity=identity)
    welcomed: asyncio.Future[gateway_pb2.Welcome] = asyncio.get_running_loop().create_future()

    def first(welcome: gateway_pb2.Welcome) -> None:
        if not welcomed.done():
            welcomed.set_result(welcome)

    client.on_connect(first)
    try:
        await client.connect()
        room = await client.join(room_id)
        # on_connect handlers run as tasks of their own: this one may not have run yet.
        welcome = await asyncio.wait_for(welcomed, WELCOME_TIMEOUT_SECONDS)
    except BaseException:
        await client.close()
        raise
    return TrackedClient(client, room, event, gateway_of(welcome.session_id))
