"""Presence that scales, through a real server: a join storm reaches each member as a few Presence frames
(one per window, many users in each), and a room with `presence = false` sends none while its participants
stay listed."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.room.v1 import room_pb2, room_pb2_grpc
from services import allinone
from services.runtime.config import HooksConfig, RoomDefinition
from tests.streams import Stream, changes_of, stream
from tests.support import make_config, running, wait_until

JOINERS = 150


@pytest.fixture
async def address(data_dir: Path) -> AsyncIterator[str]:
    config = make_config(
        data_dir,
        rooms=[RoomDefinition(id="hall"), RoomDefinition(id="quiet", presence=False)],
        # Users named by their token: a storm of joiners without a login each.
        hooks=HooksConfig(authenticate="tests.hooks_for_tests:authenticate"),
        **{"gateway.presence_window_ms": 50.0},
    )
    async with running(allinone.create_server, config) as (_, served):
        yield served


async def presence_frames(s: Stream, within: float) -> list[gateway_pb2.ConnectResponse]:
    frames = []
    with contextlib.suppress(TimeoutError):
        while True:
            frames.append(await s.next_other("presence", within))
    return frames


async def test_a_join_storm_reaches_each_member_as_a_few_frames(address: str) -> None:
    async with stream(address, "let-me-in:watcher") as watcher, contextlib.AsyncExitStack() as joiners:
        await watcher.join("hall")
        assert changes_of(await watcher.next_other("presence")) == [("app:watcher", True)]
        streams = await asyncio.gather(
            *(joiners.enter_async_context(stream(address, f"let-me-in:j{i}")) for i in range(JOINERS))
        )
        await asyncio.gather(*(s.join("hall") for s in streams))
        frames = await presence_frames(watcher, within=0.5)
        told = [change for frame in frames for change in changes_of(frame)]
        assert sorted(told) == sorted((f"app:j{i}", True) for i in range(JOINERS))
        # Far fewer frames than joins: each carries every join of its window.
        assert len(frames) <= JOINERS / 5
        await asyncio.gather(*(s.ok(leave=gateway_pb2.LeaveCommand(room_id="hall")) for s in streams))
        frames = await presence_frames(watcher, within=0.5)
        told = [change for frame in frames for change in changes_of(frame)]
        assert sorted(told) == sorted((f"app:j{i}", False) for i in range(JOINERS))
        assert len(frames) <= JOINERS / 5


async def frames_until_quiet(s: Stream, within: float) -> list[gateway_pb2.ConnectResponse]:
    """Every frame other than events and replies, until none came for `within` seconds."""
    frames = []
    with contextlib.suppress(TimeoutError):
        while True:
            frames.append(await asyncio.wait_for(s.others.get(), within))
    return frames


async def test_a_disconnect_storm_reaches_each_member_as_a_few_frames(address: str) -> None:
    async with stream(address, "let-me-in:watcher") as watcher:
        await watcher.join("hall")
        async with contextlib.AsyncExitStack() as joiners:
            streams = await asyncio.gather(
                *(joiners.enter_async_context(stream(address, f"let-me-in:d{i}")) for i in range(JOINERS))
            )
            await asyncio.gather(*(s.join("hall") for s in streams))
            sessions = {f"app:d{i}": s.welcome.session_id for i, s in enumerate(streams) if s.welcome}
            await frames_until_quiet(watcher, within=0.5)
        # Every joiner's connection ended at once: no leave command, the streams are gone.
        frames = await frames_until_quiet(watcher, within=0.5)
        assert {f.WhichOneof("frame") for f in frames} == {"presence"}, "offline notices ride in Presence frames"
        told = [change for frame in frames for change in frame.presence.changes]
        assert sorted((c.user_id, c.joined, c.ended_session_id) for c in told) == sorted(
            (user, False, session) for user, session in sessions.items()
        )
        assert len(sessions) == JOINERS
        assert len(frames) <= JOINERS / 5


async def test_a_room_without_presence_tells_nobody_and_still_lists_its_participants(address: str) -> None:
    async with stream(address, "let-me-in:one") as one, stream(address, "let-me-in:two") as two:
        joined = await one.join("quiet")
        assert joined.join.room.no_presence
        await two.join("quiet")
        async with grpc.aio.insecure_channel(address) as channel:
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            listed = await rooms.ListParticipants(
                room_pb2.ListParticipantsRequest(room_id="quiet"), metadata=(("authorization", "Bearer let-me-in:one"),)
            )
        assert sorted(p.user_id for p in listed.participants) == ["app:one", "app:two"]
        await two.ok(leave=gateway_pb2.LeaveCommand(room_id="quiet"))
        assert await presence_frames(one, within=0.3) == []


async def test_the_sdk_hears_every_user_of_a_gathered_frame_and_creates_quiet_rooms(
    address: str, tmp_path: Path
) -> None:
    heard: list[tuple[str, bool]] = []
    async with Client(address, username="sdk", key_file=tmp_path / "sdk.json") as client:
        hall = await client.join("hall")
        hall.on_presence(lambda user, joined: heard.append((user, joined)))
        async with contextlib.AsyncExitStack() as joiners:
            streams = await asyncio.gather(
                *(joiners.enter_async_context(stream(address, f"let-me-in:s{i}")) for i in range(20))
            )
            await asyncio.gather(*(s.join("hall") for s in streams))
            joined = {(f"app:s{i}", True) for i in range(20)}
            await wait_until(lambda: joined <= set(heard), within=5, interval=0.02)
        quiet = await client.create_room("made-quiet", presence=False)
        assert quiet.no_presence
