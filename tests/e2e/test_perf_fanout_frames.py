"""A publisher that sends one event per command, many at once, to a room of many members, through a
real server: every publish is answered in order, every member gets every event once and in order,
and the members' streams carry many events per frame (services/gateway/flush_pacing.py)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from pathlib import Path

from parley.gateway.v1 import gateway_pb2
from parley.values import to_value
from services import allinone
from services.runtime.config import RoomDefinition
from tests.streams import Stream, payload_of, stream
from tests.support import make_config, running, token_of

MEMBERS = 40
EVENTS = 300
# On average at least this many events per frame a member receives (one per frame without batching).
EVENTS_PER_FRAME = 4
_ids = itertools.count()


def publish(s: Stream, n: int) -> asyncio.Future[gateway_pb2.Reply]:
    """One event in one PublishCommand, sent without waiting for the reply."""
    request_id = f"f{next(_ids)}"
    reply: asyncio.Future[gateway_pb2.Reply] = asyncio.get_running_loop().create_future()
    s.replies[request_id] = reply
    event = gateway_pb2.OutgoingEvent(event="message", payload=to_value({"n": n}))
    command = gateway_pb2.PublishCommand(room_id="lobby", events=[event], no_echo=True)
    s.send_raw(gateway_pb2.ConnectRequest(request_id=request_id, publish=command))
    return reply


async def test_one_event_publishes_reach_a_busy_room_in_order_and_in_few_frames(data_dir: Path, tmp_path: Path) -> None:
    config = make_config(data_dir, rooms=[RoomDefinition(id="lobby")], **{"gateway.events_per_window": 1_000_000})
    async with running(allinone.create_server, config) as (_, address), contextlib.AsyncExitStack() as streams:
        member_token = await token_of(address, "member", tmp_path)
        members = [await streams.enter_async_context(stream(address, member_token)) for _ in range(MEMBERS)]
        for member in members:
            await member.join("lobby")
        publisher = await streams.enter_async_context(stream(address, await token_of(address, "pub", tmp_path)))
        await publisher.join("lobby")
        replies = await asyncio.wait_for(asyncio.gather(*(publish(publisher, n) for n in range(EVENTS))), 30)
        assert [reply.status.code for reply in replies] == [0] * EVENTS
        seqs = [reply.publish.seqs[0] for reply in replies]
        assert seqs == list(range(seqs[0], seqs[0] + EVENTS))
        for member in members:
            assert [payload_of(await member.next_event(10))["n"] for _ in range(EVENTS)] == list(range(EVENTS))
        await publisher.no_event(0.1)  # no_echo
        frames = sum(member.event_frames for member in members)
        assert frames * EVENTS_PER_FRAME <= MEMBERS * EVENTS, f"{MEMBERS * EVENTS / frames:.1f} events per frame"
