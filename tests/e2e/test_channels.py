"""Sealed group channels through the SDK and real servers (issue 13, first part): create, add members in new
epochs, messages sealed once and signed, history, edits and deletes by their author, ephemeral signals, removal
starting an epoch the removed member cannot read; the server stores ciphertext and enforces the roster."""

from __future__ import annotations

import asyncio
import base64
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from parley import Client
from parley.crypto import group
from parley.errors import ParleyError, PermissionDeniedError
from parley.spaces import ChannelMessage, ChannelNotFoundError, ChannelSignal
from services import allinone
from tests.scale_out import fresh_database, scale_out
from tests.support import make_config, running, wait_until

pytestmark = pytest.mark.timeout(120)


@asynccontextmanager
async def three(address: str, tmp_path: Path, other_address: str = "") -> AsyncIterator[tuple[Client, Client, Client]]:
    tag = secrets.token_hex(3)
    async with AsyncExitStack() as stack:
        people = []
        for n, name in enumerate(("ann", "ben", "cyd")):
            at = other_address if (other_address and n == 2) else address
            client = Client(at, username=f"{name}{tag}", key_file=tmp_path / f"{name}.json")
            people.append(await stack.enter_async_context(client))
            await client.publish_prekeys()
        yield people[0], people[1], people[2]


async def received(queue: asyncio.Queue[ChannelMessage]) -> ChannelMessage:
    return await asyncio.wait_for(queue.get(), 10)


async def channel_life(address: str, tmp_path: Path, other_address: str = "") -> None:
    async with three(address, tmp_path, other_address) as (ann, ben, cyd):
        name = f"crew-{secrets.token_hex(3)}"
        crew = await ann.space.create_channel(name)
        with pytest.raises(ParleyError, match="CHANNEL_EXISTS"):
            await ann.space.create_channel(name)
        with pytest.raises(ChannelNotFoundError):
            await ben.space.join_channel(f"nothing-{name}")
        with pytest.raises(PermissionDeniedError, match="NOT_A_MEMBER"):
            await ben.space.join_channel(name)

        await crew.add_member(ben.user_id)
        await crew.add_member(cyd.user_id)
        assert crew.epoch == 2
        ben_crew, cyd_crew = await ben.space.join_channel(name), await cyd.space.join_channel(name)
        assert ben_crew.epoch == cyd_crew.epoch == 2
        assert crew.authenticator == ben_crew.authenticator == cyd_crew.authenticator
        assert [c.name for c in await ben.space.list_channels()] == [name]

        inboxes = {who: asyncio.Queue[ChannelMessage]() for who in ("ann", "ben", "cyd")}
        for who, space in (("ann", crew), ("ben", ben_crew), ("cyd", cyd_crew)):
            space.on_message(inboxes[who].put_nowait)
        handle = await crew.send_message({"text": "welcome aboard"})
        for who in ("ben", "cyd"):
            message = await received(inboxes[who])
            assert (message.body, message.sender_user_id, message.handle) == (
                {"text": "welcome aboard"},
                ann.user_id,
                handle,
            )
            assert message.sender_device_id == ann.device_id

        edits: asyncio.Queue[ChannelMessage] = asyncio.Queue()
        deletions: asyncio.Queue[str] = asyncio.Queue()
        ben_crew.on_message_edited(edits.put_nowait)
        ben_crew.on_message_deleted(deletions.put_nowait)
        await crew.edit_message(handle, {"text": "welcome aboard!"})
        assert (await asyncio.wait_for(edits.get(), 10)).body == {"text": "welcome aboard!"}
        with pytest.raises(ParleyError, match="NOT_AUTHOR"):
            await ben_crew.edit_message(handle, {"text": "hijacked"})
        with pytest.raises(ParleyError, match="NOT_AUTHOR"):
            await ben_crew.delete_message(handle)

        signals: asyncio.Queue[ChannelSignal] = asyncio.Queue()
        ben_crew.on_ephemeral(signals.put_nowait)
        await cyd_crew.send_ephemeral("typing", {"on": True})
        signal = await asyncio.wait_for(signals.get(), 10)
        assert (signal.subject, signal.sender_user_id, signal.data) == ("typing", cyd.user_id, {"on": True})

        await ben_crew.send_message({"text": "from ben"})
        assert [m.body for m in await cyd_crew.history()] == [{"text": "from ben"}, {"text": "welcome aboard!"}]

        # cyd is removed: a new epoch cyd gets no secret for, and the server drops cyd from the room at once
        await crew.remove_member(cyd.user_id)
        assert crew.epoch == 3
        await wait_until(lambda: ben_crew.epoch == 3)  # told of the commit: ben seals in the new epoch at once
        ben_sealed = ben_crew._sealed("message", {"text": "nor this"})
        with pytest.raises(group.UnknownEpochError):
            cyd_crew._keys.open(base64.b64decode(ben_sealed["sealed"]))
        with pytest.raises(PermissionDeniedError, match="NOT_A_MEMBER"):
            await cyd.history(crew.space_id)
        after = await crew.send_message({"text": "cyd cannot read this"})
        message = await received(inboxes["ben"])
        while message.handle != after:  # ben's own "from ben" came back to him first
            message = await received(inboxes["ben"])
        assert message.epoch == 3
        await wait_until(lambda: ben_crew.epoch == 3)
        assert ben_crew.authenticator == crew.authenticator
        with pytest.raises(ParleyError, match="NOT_A_MEMBER"):
            await cyd_crew.sync()  # the chain is for members only: cyd cannot even fetch epoch 3's commit
        assert not cyd_crew._keys.knows_epoch(3)
        await crew.delete_message(handle)
        assert await asyncio.wait_for(deletions.get(), 10) == handle

        lobby = await ann.space.create_channel(f"{name}-lobby", keeper=True)  # the keeper admits on its own
        joined = await cyd.space.join_channel(lobby.name, wait=10)
        assert joined.epoch == 2


async def test_a_channel_on_one_server(server_address: str, tmp_path: Path) -> None:
    await channel_life(server_address, tmp_path)


@pytest.mark.timeout(180)
async def test_a_channel_across_gateways_on_nats_and_postgresql(tmp_path: Path) -> None:
    with fresh_database() as url, scale_out(tmp_path, "", gateways=2, storage_url=url) as cluster:
        await channel_life(cluster.gateway(1), tmp_path, cluster.gateway(2))


async def invited(address: str, tmp_path: Path, name: str) -> Client:
    client = Client(address, username=f"{name}{secrets.token_hex(3)}", key_file=tmp_path / f"{name}.json")
    await client.connect()
    await client.publish_prekeys()
    return client


async def test_an_invitation_admits_a_guest_with_the_right_auth_code(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, cyd):
        crew = await ann.space.create_channel(f"open-{secrets.token_hex(3)}")
        invitation = await crew.create_invitation()
        wrong = "0" * 8 if invitation.auth_code != "0" * 8 else "1" * 8
        with pytest.raises(PermissionDeniedError, match=r"INVITATION_INVALID.*wrong auth code; 2 more tries"):
            await ben.space.accept_invitation(invitation.code, wrong)
        space = await ben.space.accept_invitation(invitation.code, invitation.auth_code)
        assert space.space_id == crew.space_id
        assert space.epoch == 1
        await crew.sync()
        assert [m.user_id for m in await crew.members()] == sorted([ann.user_id, ben.user_id])
        assert crew.authenticator == space.authenticator
        inbox: asyncio.Queue[ChannelMessage] = asyncio.Queue()
        crew.on_message(inbox.put_nowait)
        await space.send_message({"text": "thanks for the invite"})
        assert (await received(inbox)).body == {"text": "thanks for the invite"}
        with pytest.raises(PermissionDeniedError, match=r"INVITATION_INVALID.*expired or admitted"):
            await cyd.space.accept_invitation(invitation.code, invitation.auth_code)  # single use: taken
        with pytest.raises(PermissionDeniedError, match="NOT_ADMIN"):
            await space.create_invitation()  # ben is a plain member


async def test_three_wrong_auth_codes_burn_an_invitation(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, _):
        crew = await ann.space.create_channel(f"burn-{secrets.token_hex(3)}")
        invitation = await crew.create_invitation(uses=5)
        wrong = "0" * 8 if invitation.auth_code != "0" * 8 else "1" * 8
        for _ in range(3):
            with pytest.raises(PermissionDeniedError, match="wrong auth code"):
                await ben.space.accept_invitation(invitation.code, wrong)
        with pytest.raises(PermissionDeniedError, match="burned"):
            await ben.space.accept_invitation(invitation.code, invitation.auth_code)


async def test_an_expired_invitation_admits_nobody(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, _):
        crew = await ann.space.create_channel(f"late-{secrets.token_hex(3)}")
        invitation = await crew.create_invitation(expires_in=0.5)
        await asyncio.sleep(0.7)
        with pytest.raises(PermissionDeniedError, match="expired"):
            await ben.space.accept_invitation(invitation.code, invitation.auth_code)


async def test_a_single_use_invitation_admits_exactly_one_of_five_racing_guests(
    server_address: str, tmp_path: Path
) -> None:
    async with AsyncExitStack() as stack:
        ann = await stack.enter_async_context(await invited(server_address, tmp_path, "ann"))
        guests = [await stack.enter_async_context(await invited(server_address, tmp_path, f"g{n}")) for n in range(5)]
        crew = await ann.space.create_channel(f"race-{secrets.token_hex(3)}")
        invitation = await crew.create_invitation(uses=1)
        outcomes = await asyncio.gather(
            *(g.space.accept_invitation(invitation.code, invitation.auth_code) for g in guests), return_exceptions=True
        )
        admitted = [o for o in outcomes if not isinstance(o, BaseException)]
        refused = [o for o in outcomes if isinstance(o, PermissionDeniedError)]
        assert (len(admitted), len(refused)) == (1, 4), outcomes
        await crew.sync()
        assert len(await crew.members()) == 2


async def test_a_members_new_device_commits_itself_in(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, _):
        name = f"devices-{secrets.token_hex(3)}"
        crew = await ann.space.create_channel(name)
        await crew.add_member(ben.user_id)
        ben_tablet = await ben.add_device("tablet")
        ben_tablet.save(tmp_path / "ben-tablet.json")
        async with Client(server_address, key_file=tmp_path / "ben-tablet.json") as tablet:
            space = await tablet.space.join_channel(name)  # nobody needs to be online for this
            assert space.epoch == 2
            roster = {m.user_id: {d.device_id for d in m.devices} for m in await space.members()}
            assert roster[ben.user_id] == {ben.device_id, tablet.device_id}
            inbox: asyncio.Queue[ChannelMessage] = asyncio.Queue()
            space.on_message(inbox.put_nowait)
            await crew.sync()
            assert crew.authenticator == space.authenticator
            await crew.send_message({"text": "hello tablet"})
            assert (await received(inbox)).body == {"text": "hello tablet"}


async def test_a_join_request_waits_for_an_admin(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, _):
        name = f"ask-{secrets.token_hex(3)}"
        crew = await ann.space.create_channel(name)
        asked: asyncio.Queue[str] = asyncio.Queue()
        crew.on_join_request(asked.put_nowait)
        with pytest.raises(PermissionDeniedError, match=r"NOT_A_MEMBER.*asked to add you"):
            await ben.space.join_channel(name)  # asks, and does not wait
        assert await asyncio.wait_for(asked.get(), 10) == ben.user_id
        assert await crew.join_requests() == [ben.user_id]

        async def approve() -> None:
            await crew.add_member(await asyncio.wait_for(asked.get(), 10))

        approval = asyncio.create_task(approve())
        space = await ben.space.join_channel(name, wait=10)  # asks again and waits for the admin
        await approval
        assert space.epoch == 1
        assert await crew.join_requests() == []


async def test_a_keeper_channel_lets_users_in_with_nobody_online(server_address: str, tmp_path: Path) -> None:
    name = f"lobby-{secrets.token_hex(3)}"
    async with three(server_address, tmp_path) as (ann, ben, cyd):
        lobby = await ann.space.create_channel(name, keeper=True)
        assert not lobby.end_to_end
        assert [c.end_to_end for c in await ann.space.list_channels() if c.name == name] == [False]
        await ann.close()  # the only human member is gone
        space = await ben.space.join_channel(name, wait=10)
        assert space.epoch == 2
        roster = {m.user_id: m.role for m in await space.members()}
        assert roster[ben.user_id] == group.MEMBER
        inbox: asyncio.Queue[ChannelMessage] = asyncio.Queue()
        space.on_message(inbox.put_nowait)
        late = await cyd.space.join_channel(name, wait=10)
        await late.send_message({"text": "anyone here?"})
        assert (await received(inbox)).body == {"text": "anyone here?"}
    async with Client(server_address, key_file=tmp_path / "ann.json") as ann_again:
        lobby = await ann_again.space.join_channel(name)
        assert [m.body for m in await lobby.history()] == [{"text": "anyone here?"}]


async def test_two_admins_committing_at_once_both_get_their_change(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, cyd):
        dan = await invited(server_address, tmp_path, "dan")
        try:
            name = f"both-{secrets.token_hex(3)}"
            crew = await ann.space.create_channel(name)
            await crew.add_member(ben.user_id, admin=True)
            await crew.add_member(cyd.user_id)
            ben_crew = await ben.space.join_channel(name)
            await asyncio.gather(crew.remove_member(cyd.user_id), ben_crew.add_member(dan.user_id))
            await crew.sync()
            assert sorted(m.user_id for m in await crew.members()) == sorted([ann.user_id, ben.user_id, dan.user_id])
            assert crew.epoch == 4
        finally:
            await dan.close()


async def test_a_channel_is_deleted_by_a_current_admin_not_a_removed_creator(
    server_address: str, tmp_path: Path
) -> None:
    async with three(server_address, tmp_path) as (ann, ben, _):
        name = f"owned-{secrets.token_hex(3)}"
        crew = await ann.space.create_channel(name)
        await crew.add_member(ben.user_id, admin=True)
        ben_crew = await ben.space.join_channel(name)
        await ben_crew.remove_member(ann.user_id)
        with pytest.raises(PermissionDeniedError, match="NOT_A_MEMBER"):
            await ann.delete_room(crew.space_id)
        with pytest.raises(ParleyError, match="channels"):
            await ann.create_room("sp-" + "0" * 32)
        await ben.delete_room(crew.space_id)
        with pytest.raises(ChannelNotFoundError):
            await ben.space.join_channel(name)


async def test_a_revoked_device_leaves_the_roster_at_the_next_commit(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, cyd):
        name = f"revoked-{secrets.token_hex(3)}"
        crew = await ann.space.create_channel(name)
        tablet = await ben.add_device("tablet")
        tablet.save(tmp_path / "ben-tablet.json")
        async with Client(server_address, key_file=tmp_path / "ben-tablet.json") as on_tablet:
            await on_tablet.publish_prekeys()
            await crew.add_member(ben.user_id)
            await on_tablet.space.join_channel(name)
        ben_member = next(m for m in await crew.members() if m.user_id == ben.user_id)
        assert {d.device_id for d in ben_member.devices} == {ben.device_id, tablet.device_id}
        await ben.revoke_device(tablet.device_id)
        await crew.add_member(cyd.user_id)  # any commit: the revoked tablet gets no secret of the new epoch
        ben_member = next(m for m in await crew.members() if m.user_id == ben.user_id)
        assert {d.device_id for d in ben_member.devices} == {ben.device_id}


async def test_room_members_follow_the_roster_again_after_a_restart(data_dir: Path, tmp_path: Path) -> None:
    name = f"mend-{secrets.token_hex(3)}"
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with three(address, tmp_path) as (ann, ben, _):
            crew = await ann.space.create_channel(name)
            await crew.add_member(ben.user_id)
            ben_id = ben.user_id
    with sqlite3.connect(data_dir / "room.sqlite3") as db:  # as if the commit was kept and the member row not
        db.execute("DELETE FROM members WHERE user_id = ?", [ben_id])
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with Client(address, key_file=tmp_path / "ben.json") as ben:
            await wait_until(lambda: _is_member(ben, name))
            assert (await ben.space.join_channel(name)).epoch == 1


async def _is_member(client: Client, name: str) -> bool:
    return name in [c.name for c in await client.space.list_channels()]


async def test_history_decrypts_across_epochs_for_members_who_held_them(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, cyd):
        dan = await invited(server_address, tmp_path, "dan")
        try:
            name = f"epochs-{secrets.token_hex(3)}"
            crew = await ann.space.create_channel(name)
            await crew.add_member(ben.user_id)  # epoch 1
            await crew.send_message({"text": "one"})
            await crew.add_member(cyd.user_id)  # epoch 2
            await crew.send_message({"text": "two"})
            await crew.remove_member(cyd.user_id)  # epoch 3
            await crew.send_message({"text": "three"})
            ben_crew = await ben.space.join_channel(name)
            history = await ben_crew.history()
            assert [(m.body["text"], m.epoch) for m in history] == [("three", 3), ("two", 2), ("one", 1)]
            await crew.add_member(dan.user_id)  # epoch 4: dan reads from here on
            dan_crew = await dan.space.join_channel(name)
            assert await dan_crew.history() == []
            assert len(dan_crew.rejected) == 3
        finally:
            await dan.close()


async def test_an_edit_is_bound_to_its_message_and_author(server_address: str, tmp_path: Path) -> None:
    async with three(server_address, tmp_path) as (ann, ben, _):
        name = f"edits-{secrets.token_hex(3)}"
        crew = await ann.space.create_channel(name)
        await crew.add_member(ben.user_id)
        ben_crew = await ben.space.join_channel(name)
        ann_said = await crew.send_message({"text": "ann's"})
        ben_said = await ben_crew.send_message({"text": "ben's"})
        await crew.edit_message(ann_said, {"text": "ann's, edited"})
        # a server moving ann's sealed edit onto ben's message: the edit names the message it edits
        sealed_edit = next(e.data for e in await crew._room.history(limit=5) if e.handle == ann_said)
        await crew.sync()
        assert crew._open(ben_said, 99, sealed_edit, 0, replay_check=False) is None
        assert isinstance(crew.rejected[-1][1], group.ForgedGroupMessageError)
        history = {m.handle: (m.body, m.edited) for m in await ben_crew.history()}
        assert history[ann_said] == ({"text": "ann's, edited"}, True)
        assert history[ben_said] == ({"text": "ben's"}, False)
