"""Sealed group channels through the SDK and real servers (issue 13, first part): create, add members in new
epochs, messages sealed once and signed, history, edits and deletes by their author, ephemeral signals, removal
starting an epoch the removed member cannot read; the server stores ciphertext and enforces the roster."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest

from parley import Client
from parley.errors import ParleyError, PermissionDeniedError
from parley.spaces import ChannelMessage, ChannelNotFoundError, ChannelSignal
from tests.scale_out import fresh_database, scale_out
from tests.support import wait_until

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


async def test_a_channel_on_one_server(server_address: str, tmp_path: Path) -> None:
    await channel_life(server_address, tmp_path)


@pytest.mark.timeout(180)
async def test_a_channel_across_gateways_on_nats_and_postgresql(tmp_path: Path) -> None:
    with fresh_database() as url, scale_out(tmp_path, "", gateways=2, storage_url=url) as cluster:
        await channel_life(cluster.gateway(1), tmp_path, cluster.gateway(2))
