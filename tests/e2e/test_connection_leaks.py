"""Connections that come and go leave nothing of Parley's behind: a census of the server's objects (the
garbage collector's, of Parley's own classes) is the same after more rounds of connections that join
rooms and end as after the first ones.

The principal a connection's token names is left out: asyncio keeps cancelled timers (the token's
expiry) with their context until they are many, and the context holds the principal."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import gc
from pathlib import Path

from services import allinone
from services.runtime.config import RoomDefinition
from tests.e2e.test_perf_fanout_frames import token_of
from tests.streams import stream
from tests.support import make_config, running

CONNECTIONS = 100
PER_ROOM = 10
ROOMS = [f"room-{i}" for i in range(CONNECTIONS // PER_ROOM)]
WARM_UP_ROUNDS = 2
ROUNDS = 2
OWN_MODULES = ("services.", "parley.")
HELD_BY_TIMERS = frozenset({"Principal"})


def census() -> collections.Counter[str]:
    gc.collect()
    names = (f"{type(o).__module__}.{type(o).__qualname__}" for o in gc.get_objects())
    return collections.Counter(
        name for name in names if name.startswith(OWN_MODULES) and name.rpartition(".")[2] not in HELD_BY_TIMERS
    )


async def connections_come_and_go(address: str, token: str) -> None:
    async with contextlib.AsyncExitStack() as streams:
        opened = [await streams.enter_async_context(stream(address, token)) for _ in range(CONNECTIONS)]
        for i, member in enumerate(opened):
            await member.join(ROOMS[i // PER_ROOM])
    # The server lets an ended stream go (its rooms, presence, outbox) after the client has gone.
    await asyncio.sleep(1.0)


async def test_connections_that_end_leave_no_objects_behind(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(
        data_dir,
        rooms=[RoomDefinition(id=room) for room in ROOMS],
        **{"gateway.max_connections_per_user": CONNECTIONS},
    )
    async with running(allinone.create_server, config) as (_, address):
        token = await token_of(address, "member", tmp_path)
        for _ in range(WARM_UP_ROUNDS):
            await connections_come_and_go(address, token)
        before = census()
        for _ in range(ROUNDS):
            await connections_come_and_go(address, token)
        grown = census() - before
    assert not grown, grown.most_common(10)
