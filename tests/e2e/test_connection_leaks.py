"""Connections that come and go leave nothing of Parley's behind: a census of the server's objects (the
garbage collector's, of Parley's own classes) is the same after more rounds of connections that join
rooms and end as after the first ones.

The principal a connection's token names is left out: asyncio keeps cancelled timers (the token's
expiry) with their context until they are many, and the context holds the principal."""

from __future__ import annotations

import collections
import contextlib
import gc
from pathlib import Path

from services import allinone
from services.runtime.config import RoomDefinition
from tests.streams import stream
from tests.support import make_config, running, token_of, wait_until

USERS = 10
PER_USER = 10
PER_ROOM = 10
CONNECTIONS = USERS * PER_USER
ROOMS = [f"room-{i}" for i in range(CONNECTIONS // PER_ROOM)]
WARM_UP_ROUNDS = 2
ROUNDS = 2
OWN_MODULES = ("services.", "parley.")
HELD_BY_TIMERS = frozenset({"Principal"})
CONNECTION = "services.gateway.connections.Connection"
# How long the server may take to let ended streams go, on a loaded machine.
LET_GO_WITHIN_SECONDS = 30.0


def census() -> collections.Counter[str]:
    gc.collect()
    names = (f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
    return collections.Counter(
        name for name in names if name.startswith(OWN_MODULES) and name.rpartition(".")[2] not in HELD_BY_TIMERS
    )


async def connections_come_and_go(address: str, tokens: list[str]) -> None:
    async with contextlib.AsyncExitStack() as streams:
        opened = [
            await streams.enter_async_context(stream(address, token)) for token in tokens for _ in range(PER_USER)
        ]
        for i, member in enumerate(opened):
            await member.join(ROOMS[i // PER_ROOM])
        assert census()[CONNECTION] >= CONNECTIONS  # the census sees the server's connections


async def test_connections_that_end_leave_no_objects_behind(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, rooms=[RoomDefinition(id=room) for room in ROOMS])
    async with running(allinone.create_server, config) as (_, address):
        tokens = [await token_of(address, f"member{i}", tmp_path) for i in range(USERS)]
        for _ in range(WARM_UP_ROUNDS):
            await connections_come_and_go(address, tokens)
        with contextlib.suppress(TimeoutError):  # a gateway that keeps them fails the assertion below
            await wait_until(lambda: not census()[CONNECTION], LET_GO_WITHIN_SECONDS, interval=0.2)
        before = census()
        for _ in range(ROUNDS):
            await connections_come_and_go(address, tokens)
        with contextlib.suppress(TimeoutError):  # what is still held then is asserted on below
            await wait_until(lambda: not census() - before, LET_GO_WITHIN_SECONDS, interval=0.2)
        grown = census() - before
    assert not grown, grown.most_common(10)
