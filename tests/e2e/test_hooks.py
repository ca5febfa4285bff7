"""In-process hooks named in config, through a real server."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.identity.v1 import identity_pb2
from parley.room.v1 import room_pb2, room_pb2_grpc
from services import allinone
from services.runtime.config import ConfigError, EventDefinition, HistorySettings, HooksConfig, RoomDefinition
from tests import hooks_for_tests
from tests.streams import payload_of, stream, value
from tests.support import bearer, identity_stub, make_config, running, wait_until

HOOKS = {name: f"tests.hooks_for_tests:{name}" for name in HooksConfig.__dataclass_fields__}
ROOMS = [
    *(RoomDefinition(id=room) for room in ("lobby", "vip", "broken")),
    RoomDefinition(id="kept", events=[EventDefinition(name="*", history=HistorySettings(enabled=True))]),
]


@pytest.fixture
async def address(data_dir: Path) -> AsyncIterator[str]:
    hooks_for_tests.calls.clear()
    config = make_config(data_dir, rooms=ROOMS, hooks=HooksConfig(**HOOKS))
    async with running(allinone.create_server, config) as (_, served):
        yield served


@pytest.fixture
async def token(address: str, tmp_path: Path) -> AsyncIterator[str]:
    async with Client(address, username="hana", key_file=tmp_path / "h.json") as hana:
        yield await hana.access_token()


async def test_before_join_denies_with_its_own_reason(address: str, token: str) -> None:
    async with stream(address, token) as s:
        denied = await s.command(join=gateway_pb2.JoinCommand(room_id="vip"))
        assert denied.status.code == grpc.StatusCode.PERMISSION_DENIED.value[0]
        assert (denied.status.reason, denied.status.message) == ("VIP_ONLY", "members only")
        await s.join("lobby")


async def test_a_deny_hook_that_raises_fails_closed(address: str, token: str) -> None:
    async with stream(address, token) as s:
        failed = await s.command(join=gateway_pb2.JoinCommand(room_id="broken"))
        assert failed.status.reason == "HOOK_FAILED"
        assert (await s.command(ping=gateway_pb2.PingCommand())).status.code == 0


async def test_before_publish_transforms_and_denies(address: str, token: str) -> None:
    async with stream(address, token) as s:
        await s.join("lobby")
        await s.publish("lobby", "message", {"text": "hello"})
        event = await s.next_event()
        assert payload_of(event) == {"text": "HELLO"}
        assert dict(event.meta) == {"moderated": True}
        spam = await s.publish("lobby", "message", {"text": "buy spam"})
        assert spam.status.reason == "PUBLISH_DENIED"
        await s.publish("lobby", "other", {"text": "untouched"})
        assert payload_of(await s.next_event()) == {"text": "untouched"}


async def test_before_publish_screens_edits_too(address: str, token: str) -> None:
    async with stream(address, token) as s:
        await s.join("kept")
        published = await s.publish("kept", "message", {"text": "hello"})
        handle = published.publish.handles[0]
        spam = await s.command(
            edit=gateway_pb2.EditCommand(room_id="kept", handle=handle, payload=value({"text": "now spam"}))
        )
        assert spam.status.reason == "PUBLISH_DENIED"
        edited = await s.ok(edit=gateway_pb2.EditCommand(room_id="kept", handle=handle, payload=value({"text": "hi"})))
        assert json_format.MessageToDict(edited.changed.payload) == {"text": "HI"}
    assert any(call[0] == "before_publish_edit" and call[1] == handle for call in hooks_for_tests.calls)


async def test_notification_hooks_see_the_session_life(address: str, token: str, tmp_path: Path) -> None:
    async with stream(address, token) as s:
        user = s.welcome.user_id if s.welcome else ""
        await s.join("lobby")
        await s.publish("lobby", "other", {})
        await s.ok(leave=gateway_pb2.LeaveCommand(room_id="lobby"))
    await wait_until(lambda: ("on_disconnected", user) in hooks_for_tests.calls)
    # Only this user's calls: a previous test's server may still be finishing.
    mine = [(name, detail) for name, detail in hooks_for_tests.calls if user in str(detail)]
    assert [name for name, _ in mine] == ["on_connected", "on_joined", "after_publish", "on_left", "on_disconnected"]
    assert ("after_publish", (user, "lobby", "other", 1)) in mine


async def test_a_notification_hook_that_raises_breaks_nothing(address: str, token: str) -> None:
    async with stream(address, token) as s, grpc.aio.insecure_channel(address) as channel:
        rooms = room_pb2_grpc.RoomServiceStub(channel)
        await asyncio.sleep(0.2)
        await rooms.CreateRoom(room_pb2.CreateRoomRequest(room_id="fresh"), metadata=bearer(token))
        assert (await s.next_other("room_changed")).room_changed.change.room.room_id == "fresh"
        await rooms.DeleteRoom(room_pb2.DeleteRoomRequest(room_id="fresh"), metadata=bearer(token))
        await s.next_other("room_changed")
        assert (await s.command(ping=gateway_pb2.PingCommand())).status.code == 0
    assert ("on_room_deleted", "fresh") in hooks_for_tests.calls


async def test_authenticate_hook_admits_the_apps_tokens(address: str) -> None:
    async with stream(address, "let-me-in:zoe") as s:
        assert s.welcome is not None
        assert (s.welcome.user_id, s.welcome.device_id) == ("app:zoe", "app-device")
    async with grpc.aio.insecure_channel(address) as channel:
        me = await identity_stub(channel).WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer("let-me-in:zoe"))
        assert (me.user_id, me.issuer) == ("app:zoe", "hook")
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await identity_stub(channel).WhoAmI(identity_pb2.WhoAmIRequest(), metadata=bearer("let-me-out"))
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_a_hook_that_cannot_be_loaded_is_a_config_error(data_dir: Path) -> None:
    config = make_config(data_dir, hooks=HooksConfig(before_join="tests.hooks_for_tests:nope"))
    with pytest.raises(ConfigError, match=r"hooks\.before_join"):
        asyncio.run(allinone.create_server(config))
