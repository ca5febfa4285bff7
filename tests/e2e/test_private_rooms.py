"""Private rooms (issue 13 part 5): only members (and services) may join one, read its history by any RPC, list
its participants or see it; admins add and remove members; a removed member's connection leaves at once and their
token reads nothing more; members and readers survive a restart, on SQLite and on PostgreSQL across processes."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Awaitable
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.errors import NotFoundError, ParleyError, PermissionDeniedError
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.room.v1 import room_pb2, room_pb2_grpc
from services import allinone
from tests.scale_out import SECRET as SCALE_OUT_SECRET
from tests.scale_out import fresh_database, scale_out
from tests.support import SERVICE_SECRET, bearer, error_reason, make_config, running, wait_until

pytestmark = pytest.mark.timeout(120)
SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")


def kept_private_room(room_id: str) -> room_pb2.CreateRoomRequest:
    keep = room_pb2.HistoryPolicy(enabled=True)
    return room_pb2.CreateRoomRequest(
        room_id=room_id,
        visibility=room_pb2.ROOM_VISIBILITY_PRIVATE,
        events=[room_pb2.EventDefinition(name="*", history=keep)],
    )


async def refused_every_read(client: Client, room_id: str, handle: str) -> None:
    """Every way to read a private room's history or people, refused for a non-member."""
    metadata = [("authorization", f"Bearer {await client.access_token()}")]
    history = client.history_stub
    reads: list[Awaitable[object]] = [
        history.ListEvents(history_pb2.ListEventsRequest(room_id=room_id), metadata=metadata),
        history.GetEvent(history_pb2.GetEventRequest(room_id=room_id, handle=handle), metadata=metadata),
        history.ListEventsSince(history_pb2.ListEventsSinceRequest(room_id=room_id), metadata=metadata),
        history.GetLogState(history_pb2.GetLogStateRequest(room_id=room_id), metadata=metadata),
        client.room_stub.ListParticipants(room_pb2.ListParticipantsRequest(room_id=room_id), metadata=metadata),
        client.room_stub.ListRoomMembers(room_pb2.ListRoomMembersRequest(room_id=room_id), metadata=metadata),
    ]
    for read in reads:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await read
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(refused.value) == "NOT_A_MEMBER"
    with pytest.raises(NotFoundError):
        await client.get_room(room_id)
    with pytest.raises(PermissionDeniedError, match="NOT_A_MEMBER"):
        await client.join(room_id)


async def members_only(address: str, tmp_path: Path, service: tuple[tuple[str, str], ...] = SERVICE) -> None:
    tag = secrets.token_hex(3)
    async with (
        Client(address, username=f"own{tag}", key_file=tmp_path / "o.json") as owner,
        Client(address, username=f"mem{tag}", key_file=tmp_path / "m.json") as member,
        Client(address, username=f"out{tag}", key_file=tmp_path / "s.json") as stranger,
    ):
        room_id = f"secret-{tag}"
        created = await owner.room_stub.CreateRoom(
            kept_private_room(room_id), metadata=[("authorization", f"Bearer {await owner.access_token()}")]
        )
        assert created.room.visibility == room_pb2.ROOM_VISIBILITY_PRIVATE
        assert [(m.user_id, m.role) for m in await owner.room_members(room_id)] == [
            (owner.user_id, room_pb2.MEMBER_ROLE_ADMIN)
        ]
        room = await owner.join(room_id)
        published = await room.trigger("note", {"text": "for members"})
        assert room_id not in {r.room_id for r in await stranger.list_rooms()}
        await refused_every_read(stranger, room_id, published.handle)

        await owner.add_room_members(room_id, [member.user_id])
        with pytest.raises(PermissionDeniedError, match="NOT_ADMIN"):
            await member.add_room_members(room_id, [stranger.user_id])
        joined = await member.join(room_id)
        assert [e.data for e in await joined.history()] == [{"text": "for members"}]
        assert member.user_id in await member.participants(room_id)

        removed: asyncio.Queue[str] = asyncio.Queue()
        member.on_removed_from_room(removed.put_nowait)
        assert await owner.remove_room_members(room_id, [member.user_id]) == [member.user_id]
        assert await asyncio.wait_for(removed.get(), 5) == room_id

        async def member_gone() -> bool:
            return member.user_id not in await owner.participants(room_id)

        await wait_until(member_gone)
        await refused_every_read(member, room_id, published.handle)
        with pytest.raises(ParleyError, match="NOT_IN_ROOM"):
            await joined.trigger("note", {"text": "after removal"})
        with pytest.raises(ParleyError, match="creator"):
            await owner.remove_room_members(room_id, [owner.user_id])

        # services read and manage any private room
        async with grpc.aio.insecure_channel(address) as channel:
            as_service = history_pb2_grpc.HistoryServiceStub(channel)
            read = await as_service.ListEvents(history_pb2.ListEventsRequest(room_id=room_id), metadata=service)
            assert len(read.events) == 1
            rooms = room_pb2_grpc.RoomServiceStub(channel)
            await rooms.AddRoomMembers(
                room_pb2.AddRoomMembersRequest(room_id=room_id, user_ids=[stranger.user_id]), metadata=service
            )
        assert [e.data for e in await stranger.history(room_id)] == [{"text": "for members"}]
        assert await stranger.remove_room_members(room_id, [stranger.user_id]) == [stranger.user_id], "may leave"
        await refused_every_read(stranger, room_id, published.handle)

        # deleted, then created again as a public room: its (new) log is open to everyone
        await owner.delete_room(room_id)
        await owner.create_room(room_id)
        assert await stranger.history(room_id) == []


async def test_private_rooms_on_one_server(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        await members_only(address, tmp_path)


async def test_members_and_readers_survive_a_restart(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with (
            Client(address, username="rowan", key_file=tmp_path / "r.json") as owner,
            Client(address, username="sasha", key_file=tmp_path / "s.json") as other,
        ):
            await owner.create_room("vault", private=True)
            await owner.add_room_members("vault", [other.user_id], admin=True)
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with (
            Client(address, key_file=tmp_path / "r.json") as owner,
            Client(address, username="tove", key_file=tmp_path / "t.json") as stranger,
        ):
            roles = {m.user_id: m.role for m in await owner.room_members("vault")}
            assert set(roles.values()) == {room_pb2.MEMBER_ROLE_ADMIN}
            with pytest.raises(ParleyError, match="NOT_A_MEMBER"):
                await stranger.history("vault")


@pytest.mark.timeout(180)
async def test_private_rooms_across_gateways_on_postgresql(tmp_path: Path) -> None:
    with fresh_database() as url, scale_out(tmp_path, "", gateways=2, storage_url=url) as cluster:
        await members_only(cluster.gateway(1), tmp_path, bearer(f"svc:backend:{SCALE_OUT_SECRET}"))


async def test_a_private_room_needs_members_to_be_managed_by_admins_only(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with Client(address, username="uma", key_file=tmp_path / "u.json") as uma:
            await uma.create_room("open-door")
            with pytest.raises(ParleyError, match="not private"):
                await uma.add_room_members("open-door", ["u-someone"])
            await uma.create_room("closed-door", private=True)
            with pytest.raises(ParleyError, match="user_ids"):
                await uma.add_room_members("closed-door", [])
            with pytest.raises(ValueError, match="private or unlisted"):
                await uma.create_room("both", private=True, unlisted=True)
