"""The server never holds a direct message's plaintext or a private key (CRYPTO.md, "How we test it").

A split deployment (identity, room, history, file and one gateway, each its
own process, on NATS and SQLite) runs with a recording proxy in front of
every port: the gateway the clients use, each service, and NATS. Two users
with two devices each exchange direct messages both ways, offline and
online, every payload holding one marker. Then no recorded byte (either
direction of any proxy, raw and as whole gRPC messages) and no file the
services wrote holds the marker or any private key the clients had at any
point: device and user keys, private prekeys, and every key in the ratchet
states (root, chain, skipped-message and ratchet private keys).

The search proves it can find things: a subject message and a room event
with markers of their own, and the devices' public keys, are found where
they should be.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import secrets
from collections import Counter
from collections.abc import AsyncIterator, Iterable
from pathlib import Path

import nacl.public
import pytest

from parley import Client
from parley.direct_messages import DirectMessage
from tests.recording_proxy import RecordingProxy, recording_proxy
from tests.scale_out import NATS_URL, SECRET, SERVICES, ScaleOut
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)

ROOMS_TOML = """
[[rooms]]
id = "lobby"

  [[rooms.events]]
  name = "message"
  history = { enabled = true }
"""


@contextlib.asynccontextmanager
async def recorded_cluster(tmp: Path) -> AsyncIterator[tuple[str, dict[str, RecordingProxy]]]:
    """The services and one gateway, each reached only through a recording proxy (NATS too); yields the
    gateway's proxy address and the proxies by name. The processes are stopped before the proxies."""
    config = tmp / "parley.toml"
    config.write_text(ROOMS_TOML)
    proxies: dict[str, RecordingProxy] = {}
    async with contextlib.AsyncExitStack() as stack:

        async def proxy(name: str, target: str) -> str:
            proxies[name] = await stack.enter_async_context(recording_proxy(target))
            return proxies[name].address

        nats = await proxy("nats", NATS_URL.removeprefix("nats://"))
        env = {
            "PARLEY_SERVER_GRACE_SECONDS": "1",
            "PARLEY_AUTH_SERVICE_CREDENTIALS": f"parley={SECRET},backend={SECRET}",
            "PARLEY_BUS_URL": f"nats://{nats}",
            "PARLEY_BUS_SUBJECT_PREFIX": f"t{secrets.token_hex(6)}",
        }
        cluster = ScaleOut(tmp, env, config)
        try:
            for name in SERVICES:  # each later process reaches the earlier ones through their proxies
                started = await asyncio.to_thread(cluster.start, name)
                env[f"PARLEY_PEERS_{name.upper()}"] = await proxy(name, started.address)
            gateway = await asyncio.to_thread(cluster.start, "gateway-1", "gateway")
            yield await proxy("gateway", gateway.address), proxies
        finally:
            await asyncio.to_thread(cluster.stop)  # the proxies still forward while the processes drain


class Secrets:
    """Every private key the clients hold, gathered from their key files and key stores whenever asked."""

    def __init__(self) -> None:
        self.found: dict[bytes, str] = {}
        self.kinds: Counter[str] = Counter()
        self.public_dh_keys: list[bytes] = []
        self.public_prekeys: set[bytes] = set()

    def add(self, value: bytes, kind: str, owner: str) -> None:
        if value not in self.found:
            self.found[value] = f"{owner}: {kind}"
            self.kinds[kind] += 1

    def gather(self, key_files: Iterable[Path]) -> None:
        for key_file in key_files:
            keys = json.loads(key_file.read_text())
            for field in ("device_signing_seed", "device_dh_private", "user_signing_seed"):
                if keys[field] is not None:
                    self.add(base64.b64decode(keys[field]), field, key_file.stem)
            dh = nacl.public.PrivateKey(base64.b64decode(keys["device_dh_private"]))
            if dh.public_key.encode() not in self.public_dh_keys:
                self.public_dh_keys.append(dh.public_key.encode())
            store = key_file.with_name(f"{key_file.stem}.e2e.json")
            sections = json.loads(store.read_text())["sections"]
            for section, field in (
                ("signed_prekeys", "private"),
                ("one_time_prekeys", "private"),
                ("kem_prekeys", "seed"),
            ):
                for value in sections.get(section, {}).values():
                    private = base64.b64decode(json.loads(base64.b64decode(value))[field])
                    self.add(private, section, key_file.stem)
                    if section != "kem_prekeys":
                        self.public_prekeys.add(nacl.public.PrivateKey(private).public_key.encode())
            for peer, value in sections.get("sessions", {}).items():
                for session in json.loads(base64.b64decode(value)):
                    self._ratchet(
                        json.loads(base64.b64decode(session["ratchet"])), f"{key_file.stem}'s session with {peer}"
                    )

    def _ratchet(self, state: dict[str, object], owner: str) -> None:
        for field in ("root_key", "own_ratchet_private_key", "sending_chain_key", "receiving_chain_key"):
            if isinstance(value := state[field], str):
                self.add(base64.b64decode(value), field, owner)
        skipped = state["skipped"]
        assert isinstance(skipped, list)
        for _, _, message_key, _ in skipped:
            self.add(base64.b64decode(message_key), "skipped_message_key", owner)


def spellings(value: bytes) -> list[bytes]:
    """The value as raw bytes, hex and base64 (standard and URL-safe, unpadded)."""
    return [
        value,
        value.hex().encode(),
        base64.b64encode(value).rstrip(b"="),
        base64.urlsafe_b64encode(value).rstrip(b"="),
    ]


def found_in(haystacks: dict[str, bytes], needles: dict[bytes, str]) -> list[tuple[str, str]]:
    """Where any spelling of any needle occurs: (what the needle is, the haystack's name)."""
    joined = b"\x00".join(haystacks.values())
    hits = [
        (spelling, what) for needle, what in needles.items() for spelling in spellings(needle) if spelling in joined
    ]
    return sorted({(what, name) for spelling, what in hits for name, data in haystacks.items() if spelling in data})


def places(haystacks: dict[str, bytes], value: bytes) -> list[str]:
    return [name for _, name in found_in(haystacks, {value: ""})]


def recorded(proxies: dict[str, RecordingProxy]) -> dict[str, bytes]:
    """Every byte each proxy carried, per connection and direction, and each gRPC message whole."""
    haystacks: dict[str, bytes] = {}
    for name, proxy in proxies.items():
        for n, data in enumerate(proxy.recorded()):
            haystacks[f"{name} proxy, connection {n // 2} {'to server' if n % 2 == 0 else 'to client'}"] = data
        if name != "nats":
            for n, message in enumerate(proxy.grpc_messages()):
                haystacks[f"{name} proxy, gRPC message {n}"] = message.body
    return haystacks


def stored(tmp: Path) -> dict[str, bytes]:
    """Every file the processes wrote: their data directories and their logs."""
    files = [*(tmp / "data").rglob("*"), *tmp.glob("*.log")]
    return {str(path.relative_to(tmp)): path.read_bytes() for path in files if path.is_file()}


async def new_user(address: str, clients: Path, name: str) -> Path:
    key_file = clients / f"{name}.json"
    async with Client(address, username=f"{name}{secrets.token_hex(3)}", key_file=key_file) as client:
        await client.request_public_key(client.user_id)  # publishes the device list and the prekeys
    return key_file


async def add_device(address: str, key_file: Path, name: str) -> Path:
    async with Client(address, key_file=key_file) as owner:
        device = await owner.add_device(name)
    path = key_file.with_name(f"{key_file.stem}-{name}.json")
    device.save(path)
    async with Client(address, key_file=path) as client:
        await client.request_public_key(client.user_id)
    return path


def user_id_of(key_file: Path) -> str:
    return str(json.loads(key_file.read_text())["user_id"])


class Device:
    """A connected device and the texts of the direct messages it received."""

    def __init__(self, key_file: Path, client: Client) -> None:
        self.key_file = key_file
        self.client = client
        self.texts: list[str] = []

    async def listen(self) -> None:
        def keep(message: DirectMessage) -> None:
            self.texts.append(message.data["text"])

        await self.client.message.subscribe(f"user:{self.client.user_id}", keep)
        await self.client.stream()


class Conversation:
    """Who sent what to whom, and so what each device must receive: its user's messages and copies of
    what its user's other devices sent."""

    def __init__(self, marker: str) -> None:
        self.marker = marker
        self.sent: list[tuple[Path, str, str]] = []  # (sender's key file, recipient user id, text)
        self.message_ids: list[str] = []

    async def send(self, sender: Client, key_file: Path, recipient: str, what: str) -> None:
        text = f"{self.marker} {what}"
        result = await sender.message.send(f"user:{recipient}", {"text": text})
        assert len(result.device_ids) == 3  # two of theirs, one of ours
        assert not result.unreachable_device_ids
        self.sent.append((key_file, recipient, text))
        self.message_ids.append(result.message_id)

    def expected(self, key_file: Path) -> list[str]:
        user = user_id_of(key_file)
        return sorted(
            t for sender, recipient, t in self.sent if sender != key_file and user in (recipient, user_id_of(sender))
        )

    def all_arrived(self, devices: list[Device]) -> bool:
        return all(sorted(d.texts) == self.expected(d.key_file) for d in devices)


async def exchange(address: str, clients: Path, marker: str, secrets_seen: Secrets) -> tuple[list[str], str, str]:
    """Direct messages both ways between ann and bob (two devices each), first to devices that are not
    connected, then to connected ones; returns their message ids and the markers of the plaintext controls
    (a subject message and a room event)."""
    ann_key, bob_key = await new_user(address, clients, "ann"), await new_user(address, clients, "bob")
    ann_phone_key, bob_phone_key = (
        await add_device(address, ann_key, "phone"),
        await add_device(address, bob_key, "phone"),
    )
    key_files = [ann_key, ann_phone_key, bob_key, bob_phone_key]
    secrets_seen.gather(key_files)  # every one-time prekey, before any is used and deleted
    conversation = Conversation(marker)
    for sender, recipient in ((ann_key, bob_key), (bob_key, ann_key)):  # the recipient's devices are offline
        async with Client(address, key_file=sender) as client:
            for n in range(2):
                await conversation.send(client, sender, user_id_of(recipient), f"offline {sender.stem} {n}")
    secrets_seen.gather(key_files)
    async with contextlib.AsyncExitStack() as stack:
        devices = [Device(k, await stack.enter_async_context(Client(address, key_file=k))) for k in key_files]
        for device in devices:
            await device.listen()
        await wait_until(lambda: conversation.all_arrived(devices), within=15)
        secrets_seen.gather(key_files)
        ann_phone, bob_phone = devices[1].client, devices[3].client
        for n in range(2):  # every device is connected: handed over at once
            await conversation.send(ann_phone, ann_phone_key, bob_phone.user_id, f"online ann-phone {n}")
            await conversation.send(bob_phone, bob_phone_key, ann_phone.user_id, f"online bob-phone {n}")
        await wait_until(lambda: conversation.all_arrived(devices), within=15)
        subject_marker, room_marker = f"subject-control-{secrets.token_hex(8)}", f"room-control-{secrets.token_hex(8)}"
        ann = devices[0].client
        await ann.message.publish("news", {"text": subject_marker})
        await (await ann.join("lobby")).trigger("message", {"text": room_marker})
    secrets_seen.gather(key_files)
    return conversation.message_ids, subject_marker, room_marker


async def test_no_plaintext_or_private_key_reaches_the_server(tmp_path: Path) -> None:
    marker = f"dm-plaintext-{secrets.token_hex(8)}"
    clients = tmp_path / "clients"
    clients.mkdir()
    secrets_seen = Secrets()
    async with recorded_cluster(tmp_path) as (address, proxies):
        message_ids, subject_marker, room_marker = await exchange(address, clients, marker, secrets_seen)
    on_the_wire, on_disk = recorded(proxies), stored(tmp_path)

    # The search can see: the proxies read whole, uncompressed gRPC messages, and what the server must
    # have is found on the wire and on disk.
    for name in ("gateway", "identity", "history"):
        messages = proxies[name].grpc_messages()
        assert messages, name
        assert not any(m.compressed for m in messages), name
    assert any(proxies["nats"].recorded())
    assert any(p.startswith("gateway proxy") for p in places(on_the_wire, subject_marker.encode()))
    assert any(p.startswith("history proxy") for p in places(on_the_wire, room_marker.encode()))
    assert any(p.startswith("data/history") for p in places(on_disk, room_marker.encode()))
    for message_id in message_ids:  # the envelopes went to the mailboxes through the history proxy
        assert any(p.startswith("history proxy") for p in places(on_the_wire, message_id.encode()))
    assert len(secrets_seen.public_dh_keys) == 4
    for public_key in secrets_seen.public_dh_keys:
        assert any(p.startswith("identity proxy") for p in places(on_the_wire, public_key))
        assert any(p.startswith("data/identity") for p in places(on_disk, public_key))
    kinds = secrets_seen.kinds
    assert kinds["device_signing_seed"] == kinds["device_dh_private"] == 4
    assert kinds["user_signing_seed"] == 2
    assert kinds["one_time_prekeys"] >= 4 * 100
    assert kinds["signed_prekeys"] >= 4
    for kind in ("root_key", "own_ratchet_private_key", "sending_chain_key"):
        assert kinds[kind] >= 12, kind  # each device has sessions with each of the other three, and they move on
    assert kinds["receiving_chain_key"] >= 4

    # The key stores were read right: the public half of each private prekey found went to the identity service.
    public_prekeys = {key: key.hex() for key in secrets_seen.public_prekeys}
    uploaded = {what for what, name in found_in(on_the_wire, public_prekeys) if name.startswith("identity proxy")}
    assert len(public_prekeys) >= 4 * 101
    assert len(uploaded) == len(public_prekeys)

    assert places(on_the_wire, marker.encode()) == []
    assert places(on_disk, marker.encode()) == []
    assert found_in(on_the_wire, secrets_seen.found) == []
    assert found_in(on_disk, secrets_seen.found) == []
