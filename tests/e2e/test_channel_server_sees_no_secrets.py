"""The server never holds a channel message's plaintext or an epoch secret (issue 13; CRYPTO.md "Group channels").

The recorded split deployment of the direct-message version (`test_e2e_server_sees_no_secrets`): every
process reached only through a recording proxy, NATS too. Three users share a sealed channel: each sends
messages holding one marker, one is edited, an ephemeral signal carries the marker, a member is removed and
the others send more. Then no recorded byte (either way through any proxy, raw and as whole gRPC messages)
and no file the services wrote holds the marker, an epoch secret (every one the devices' key stores hold),
a key derived from one (app, signal, authenticator) or any private key the clients have.

The search proves it can see: the channel's space id, its commits and the sealed messages are found at the
room and history services and in their files, and a plain room event's marker where it should be.
"""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
from collections.abc import Iterable
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.crypto import group
from parley.room.v1 import channel_pb2, channel_pb2_grpc
from parley.spaces import ChannelSignal, Space
from tests.e2e.test_e2e_server_sees_no_secrets import (
    Secrets,
    found_in,
    new_user,
    places,
    recorded,
    recorded_cluster,
    stored,
)
from tests.support import bearer, wait_until

pytestmark = pytest.mark.timeout(60)


def gather_channel_keys(secrets_seen: Secrets, key_files: Iterable[Path]) -> None:
    """Every epoch secret in the key stores' "channels" section, and the keys each epoch derives from it."""
    for key_file in key_files:
        store = key_file.with_name(f"{key_file.stem}.e2e.json")
        channels = json.loads(store.read_text())["sections"].get("channels", {})
        for space_id, value in channels.items():
            held = json.loads(base64.b64decode(value))
            for epoch, secret in held["secrets"].items():
                state = group.ChannelState.from_bytes(base64.b64decode(held["states"][epoch]))
                owner = f"{key_file.stem}'s epoch {epoch}"
                secrets_seen.add(base64.b64decode(secret), "epoch_secret", owner)
                keys = group.epoch_keys(base64.b64decode(secret), space_id, int(epoch), state.commit_hash)
                secrets_seen.add(keys.app_key, "app_key", owner)
                secrets_seen.add(keys.signal_key, "signal_key", owner)
                secrets_seen.add(keys.authenticator, "authenticator", owner)


class Member:
    """A member's open channel and what its handlers got: message texts, edited texts, signals."""

    def __init__(self, client: Client, space: Space) -> None:
        self.client = client
        self.space = space
        self.texts: list[str] = []
        self.edited: list[str] = []
        self.signals: list[str] = []
        space.on_message(lambda m: self.texts.append(m.body["text"]))
        space.on_message_edited(lambda m: self.edited.append(m.body["text"]))
        space.on_ephemeral(self._signal)

    def _signal(self, signal: ChannelSignal) -> None:
        self.signals.append(signal.data["text"])

    async def say(self, text: str) -> str:
        return await self.space.send_message({"text": text})


def received(sent: list[str], members: list[Member]) -> bool:
    return all(set(sent) <= set(m.texts) for m in members)


async def converse(address: str, key_files: list[Path], marker: str) -> tuple[str, str]:
    """ann makes a channel with ben and cyd; they talk, ann edits, cyd signals, ann removes cyd and ann and ben
    talk on. Returns the space id and the marker of a plain room event (the control)."""
    async with contextlib.AsyncExitStack() as stack:
        ann, ben, cyd = [await stack.enter_async_context(Client(address, key_file=k)) for k in key_files]
        crew = await ann.space.create_channel(f"crew-{secrets.token_hex(4)}")
        for client in (ben, cyd):
            await crew.add_member(client.user_id)
        members = [Member(ann, crew), *[Member(c, await c.space.join_channel(crew.space_id)) for c in (ben, cyd)]]
        sent = [f"{marker} from {m.client.identity.username}" for m in members]
        handles = [await m.say(text) for m, text in zip(members, sent, strict=True)]
        await wait_until(lambda: received(sent, members), within=15)

        await crew.edit_message(handles[0], {"text": f"{marker} edited"})
        await members[2].space.send_ephemeral("typing", {"text": f"{marker} typing"})
        await wait_until(lambda: members[1].edited and members[1].signals, within=15)
        assert (members[1].edited, members[1].signals) == ([f"{marker} edited"], [f"{marker} typing"])

        await crew.remove_member(cyd.user_id)
        later = [f"{marker} after the removal from {m.client.identity.username}" for m in members[:2]]
        for member, text in zip(members[:2], later, strict=True):
            await member.say(text)
        await wait_until(lambda: received(later, members[:2]), within=15)
        assert crew.epoch == members[1].space.epoch == 3

        room_marker = f"room-control-{secrets.token_hex(8)}"
        await (await ann.join("lobby")).trigger("message", {"text": room_marker})
        return crew.space_id, room_marker


async def commits_and_sealed(address: str, key_file: Path, space_id: str) -> tuple[list[bytes], list[bytes]]:
    """The channel's commits (as ann's device reads them) and its kept sealed messages."""
    async with Client(address, key_file=key_file) as ann:
        async with grpc.aio.insecure_channel(address) as channel:
            listed = await channel_pb2_grpc.ChannelServiceStub(channel).ListCommits(
                channel_pb2.ListCommitsRequest(space_id=space_id), metadata=bearer(await ann.access_token())
            )
        events = await ann.history(space_id, event="message")
    return [c.commit for c in listed.commits], [base64.b64decode(e.data["sealed"]) for e in events]


async def test_no_channel_plaintext_or_epoch_secret_reaches_the_server(tmp_path: Path) -> None:
    marker = f"channel-plaintext-{secrets.token_hex(8)}"
    clients = tmp_path / "clients"
    clients.mkdir()
    secrets_seen = Secrets()
    async with recorded_cluster(tmp_path) as (address, proxies):
        key_files = [await new_user(address, clients, name) for name in ("ann", "ben", "cyd")]
        secrets_seen.gather(key_files)
        space_id, room_marker = await converse(address, key_files, marker)
        commits, sealed = await commits_and_sealed(address, key_files[0], space_id)
    secrets_seen.gather(key_files)
    gather_channel_keys(secrets_seen, key_files)
    on_the_wire, on_disk = recorded(proxies), stored(tmp_path)

    # The search can see: what the server must have is found on the wire and on disk.
    for name in ("gateway", "room", "history"):
        assert not any(m.compressed for m in proxies[name].grpc_messages()), name
    assert any(p.startswith("room proxy") for p in places(on_the_wire, space_id.encode()))
    assert any(p.startswith("history proxy") for p in places(on_the_wire, room_marker.encode()))
    assert any(p.startswith("data/history") for p in places(on_disk, room_marker.encode()))
    assert len(commits) == 4
    for commit in commits:  # each went to the room service in a Commit (or CreateChannel) request, and is kept
        assert any(
            p.startswith("room proxy, connection") and p.endswith("to server") for p in places(on_the_wire, commit)
        )
        assert any(p.startswith("data/room") for p in places(on_disk, commit))
    assert len(sealed) == 5
    for message in sealed:
        assert any(p.startswith("history proxy") for p in places(on_the_wire, message))
        assert any(p.startswith("data/history") for p in places(on_disk, message))
    kinds = secrets_seen.kinds
    assert kinds["epoch_secret"] == kinds["app_key"] == kinds["signal_key"] == kinds["authenticator"] == 4
    assert kinds["device_signing_seed"] == kinds["device_dh_private"] == kinds["user_signing_seed"] == 3

    assert places(on_the_wire, marker.encode()) == []
    assert places(on_disk, marker.encode()) == []
    assert found_in(on_the_wire, secrets_seen.found) == []
    assert found_in(on_disk, secrets_seen.found) == []
