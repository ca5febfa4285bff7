"""End-to-end encrypted direct messages through the SDK (issue 12): offline recipients with several devices get
each message once on every device after reconnecting, on one server and across two gateways on NATS; our own
other devices get copies; sessions survive a restart (also with a passphrase-sealed key store); exhausted
one-time prekeys still start sessions and are refilled; a changed key blocks until trusted; revoked devices are
left out and devices added later are sealed for."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley import prekeys as prekey_rules
from parley.crypto.errors import KeyChangedError
from parley.errors import UnavailableError
from parley.identity.v1 import identity_pb2
from tests.direct_support import DirectInbox
from tests.scale_out import scale_out
from tests.support import wait_until

pytestmark = pytest.mark.timeout(120)


class Inbox(DirectInbox):
    """What one client received: decrypted messages and rejected envelopes, in order."""

    async def open(self) -> Inbox:
        await super().open()
        return self

    @property
    def texts(self) -> list[object]:
        return [m.data["text"] if isinstance(m.data, dict) else m.data for m in self.messages]

    async def wait_for(self, count: int, within: float = 10.0) -> list[object]:
        await wait_until(lambda: len(self.messages) >= count, within=within)
        return self.texts


@asynccontextmanager
async def reachable(address: str, key_file: Path, **kwargs: object) -> AsyncIterator[Client]:
    """A client that has published its prekeys (any device does on first use of direct messages)."""
    async with Client(address, key_file=key_file, **kwargs) as client:  # type: ignore[arg-type]
        await client.request_public_key(client.user_id)
        yield client


async def new_user(address: str, tmp_path: Path, name: str, passphrase: str | None = None) -> Path:
    key_file = tmp_path / f"{name}.json"
    username = f"{name}{secrets.token_hex(3)}"
    async with Client(address, username=username, key_file=key_file, keystore_passphrase=passphrase) as client:
        await client.request_public_key(client.user_id)
    return key_file


async def add_device(address: str, key_file: Path, name: str) -> Path:
    async with Client(address, key_file=key_file) as owner:
        device = await owner.add_device(name)
    path = key_file.with_name(f"{key_file.stem}-{name}.json")
    device.save(path)
    async with reachable(address, path):
        pass
    return path


async def offline_recipient_gets_each_message_once_per_device(
    sender_at: str, laptop_at: str, phone_at: str, tmp_path: Path
) -> None:
    ann_key = await new_user(sender_at, tmp_path, "ann")
    ann_phone_key = await add_device(sender_at, ann_key, "phone")
    bob_key = await new_user(laptop_at, tmp_path, "bob")
    bob_phone_key = await add_device(phone_at, bob_key, "phone")
    async with Client(sender_at, key_file=ann_key) as ann, Client(laptop_at, key_file=bob_key) as bob_probe:
        bob_id = bob_probe.user_id
        for n in range(3):  # bob is offline on both devices
            sent = await ann.message.send(f"user:{bob_id}", {"text": f"while you were away {n}"})
            assert len(sent.device_ids) == 3  # bob's two, ann's phone
            assert not sent.unreachable_device_ids
    expected = [f"while you were away {n}" for n in range(3)]
    for key_file, address in ((bob_key, laptop_at), (bob_phone_key, phone_at)):
        async with Client(address, key_file=key_file) as device:
            inbox = await Inbox(device).open()
            assert await inbox.wait_for(3) == expected
            assert {m.sender_user_id for m in inbox.messages} == {ann.user_id}
            assert all(m.peer_user_id == ann.user_id and m.missed_before == 0 for m in inbox.messages)
            old_stream = await device.stream()
            old_stream.abort(UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "the link dropped"))
            await wait_until(
                lambda d=device, s=old_stream: d.state.value == "connected" and d._connection.live_stream is not s
            )
            await asyncio.sleep(0.5)
            assert inbox.texts == expected, "acknowledged: not handed over again after reconnecting"
        async with Client(address, key_file=key_file) as device:
            again = await Inbox(device).open()
            await asyncio.sleep(0.5)
            assert again.messages == []
            assert again.rejected == []
    async with Client(sender_at, key_file=ann_phone_key) as ann_phone:
        copies = await Inbox(ann_phone).open()
        assert await copies.wait_for(3) == expected
        assert {m.peer_user_id for m in copies.messages} == {bob_id}, "the copy names the conversation's other user"


async def test_offline_recipient_with_two_devices_on_one_server(server_address: str, tmp_path: Path) -> None:
    await offline_recipient_gets_each_message_once_per_device(server_address, server_address, server_address, tmp_path)


@pytest.mark.timeout(180)
async def test_offline_recipient_with_two_devices_across_gateways_on_nats(tmp_path: Path) -> None:
    with scale_out(tmp_path, "", gateways=2) as cluster:
        one, two = cluster.gateway(1), cluster.gateway(2)
        await offline_recipient_gets_each_message_once_per_device(one, two, one, tmp_path)


async def test_a_conversation_goes_both_ways_live_and_survives_a_restart(server_address: str, tmp_path: Path) -> None:
    ann_key = await new_user(server_address, tmp_path, "ann")
    bob_key = await new_user(server_address, tmp_path, "bob")
    for round_ in range(2):  # the second round runs on the sessions saved by the first
        async with Client(server_address, key_file=ann_key) as ann, Client(server_address, key_file=bob_key) as bob:
            ann_inbox, bob_inbox = await Inbox(ann).open(), await Inbox(bob).open()
            before = await bob.identity_stub.CountPrekeys(
                identity_pb2.CountPrekeysRequest(), metadata=[("authorization", f"Bearer {await bob.access_token()}")]
            )
            for n in range(3):
                await ann.message.send(f"user:{bob.user_id}", {"text": f"ann {round_}.{n}"})
                await bob.message.send(f"user:{ann.user_id}", {"text": f"bob {round_}.{n}"})
            assert await bob_inbox.wait_for(3) == [f"ann {round_}.{n}" for n in range(3)]
            assert await ann_inbox.wait_for(3) == [f"bob {round_}.{n}" for n in range(3)]
            after = await bob.identity_stub.CountPrekeys(
                identity_pb2.CountPrekeysRequest(), metadata=[("authorization", f"Bearer {await bob.access_token()}")]
            )
            if round_ == 1:
                assert after.one_time_prekeys == before.one_time_prekeys, "no new session after the restart"
    assert (tmp_path / "ann.e2e.json").stat().st_mode & 0o777 == 0o600


async def test_a_passphrase_sealed_key_store_carries_a_session_across_restarts(
    server_address: str, tmp_path: Path
) -> None:
    ann_key = await new_user(server_address, tmp_path, "ann", passphrase="correct horse")
    bob_key = await new_user(server_address, tmp_path, "bob")
    for n in range(2):
        async with (
            Client(server_address, key_file=ann_key, keystore_passphrase="correct horse") as ann,
            Client(server_address, key_file=bob_key) as bob,
        ):
            inbox = await Inbox(bob).open()
            await ann.message.send(f"user:{bob.user_id}", {"text": f"sealed store {n}"})
            assert await inbox.wait_for(1) == [f"sealed store {n}"]
    stored = (tmp_path / "ann.e2e.json").read_text()
    assert '"sealed"' in stored
    assert '"sessions"' not in stored


async def test_exhausted_one_time_prekeys_still_start_sessions_and_are_refilled(
    server_address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prekey_rules, "ONE_TIME_PREKEYS", 2)
    monkeypatch.setattr(prekey_rules, "REFILL_BELOW", 0)  # nothing refills until the end of the test
    bob_key = await new_user(server_address, tmp_path, "bob")
    senders = [await new_user(server_address, tmp_path, f"s{n}") for n in range(3)]
    async with Client(server_address, key_file=bob_key) as bob:
        for n, key_file in enumerate(senders):  # the third finds no one-time prekey left
            async with Client(server_address, key_file=key_file) as sender:
                await sender.message.send(f"user:{bob.user_id}", {"text": f"from sender {n}"})
        count = await bob.identity_stub.CountPrekeys(
            identity_pb2.CountPrekeysRequest(), metadata=[("authorization", f"Bearer {await bob.access_token()}")]
        )
        assert count.one_time_prekeys == 0
        monkeypatch.setattr(prekey_rules, "REFILL_BELOW", 1)
        inbox = await Inbox(bob).open()
        assert await inbox.wait_for(3) == [f"from sender {n}" for n in range(3)]

        async def refilled() -> bool:
            count = await bob.identity_stub.CountPrekeys(
                identity_pb2.CountPrekeysRequest(), metadata=[("authorization", f"Bearer {await bob.access_token()}")]
            )
            return count.one_time_prekeys == 2

        await wait_until(refilled)
    assert inbox.rejected == []


async def test_a_changed_key_blocks_the_conversation_until_trusted(server_address: str, tmp_path: Path) -> None:
    ann_key = await new_user(server_address, tmp_path, "ann")
    bob_key = await new_user(server_address, tmp_path, "bob")
    async with Client(server_address, key_file=ann_key) as ann, Client(server_address, key_file=bob_key) as bob:
        inbox = await Inbox(ann).open()
        await bob.message.send(f"user:{ann.user_id}", {"text": "first"})
        assert await inbox.wait_for(1) == ["first"]
        number = await ann.safety_number(bob.user_id)
        assert number == await bob.safety_number(ann.user_id)
        # As if bob's key had been replaced since ann pinned it: ann's pin no longer matches the service's key.
        parts = await ann._direct.ready()
        parts.trust.pin_user_key(bob.user_id, b"\x01" * 32)
        parts.trust.forget(bob.user_id)
        with pytest.raises(KeyChangedError):
            await ann.message.send(f"user:{bob.user_id}", {"text": "blocked"})
        with pytest.raises(KeyChangedError):
            await ann.request_public_key(bob.user_id)
        # bob starts afresh (a new session, as after reinstalling): its first message carries his key again.
        (await bob._direct.ready()).sessions.drop(ann.device_id)
        await bob.message.send(f"user:{ann.user_id}", {"text": "held until trusted"})
        await wait_until(lambda: len(inbox.rejected) == 1)
        assert isinstance(inbox.rejected[0][1], KeyChangedError)
        assert inbox.texts == ["first"]
        with pytest.raises(KeyChangedError):  # not the number compared: nothing accepted
            await ann.trust(bob.user_id, safety_number="1" * 60)
        assert inbox.texts == ["first"]
        await ann.trust(bob.user_id, safety_number=str(await bob.safety_number(ann.user_id)))
        assert await inbox.wait_for(2) == ["first", "held until trusted"]
        await ann.message.send(f"user:{bob.user_id}", {"text": "unblocked"})
        assert (await ann.request_public_key(bob.user_id)).user_signing_key == bob.identity.user_public_key


async def test_revoked_devices_are_left_out_and_added_devices_are_sealed_for(
    server_address: str, tmp_path: Path
) -> None:
    ann_key = await new_user(server_address, tmp_path, "ann")
    bob_key = await new_user(server_address, tmp_path, "bob")
    bob_phone_key = await add_device(server_address, bob_key, "phone")
    async with AsyncExitStack() as stack:
        ann = await stack.enter_async_context(Client(server_address, key_file=ann_key))
        bob = await stack.enter_async_context(Client(server_address, key_file=bob_key))
        phone = await stack.enter_async_context(Client(server_address, key_file=bob_phone_key))
        first = await ann.message.send(f"user:{bob.user_id}", {"text": "to both"})
        assert set(first.device_ids) == {bob.device_id, phone.device_id}
        await bob.revoke_device(phone.device_id)
        after_revoke = await ann.message.send(f"user:{bob.user_id}", {"text": "laptop only"})
        assert after_revoke.device_ids == (bob.device_id,)
        tablet_key = await add_device(server_address, bob_key, "tablet")
        tablet = await stack.enter_async_context(Client(server_address, key_file=tablet_key))
        with_tablet = await ann.message.send(f"user:{bob.user_id}", {"text": "and the tablet"})
        assert set(with_tablet.device_ids) == {bob.device_id, tablet.device_id}
        inbox = await Inbox(tablet).open()
        assert await inbox.wait_for(1) == ["and the tablet"]
        listed = await ann.request_public_key(bob.user_id)
        assert {d.device_id for d in listed.devices} == {bob.device_id, tablet.device_id}
        assert listed.device_list_counter is not None


async def test_subscribing_to_someone_elses_messages_or_sending_to_a_subject_is_refused(
    server_address: str, tmp_path: Path
) -> None:
    async with Client(server_address, username="cyd", key_file=tmp_path / "c.json") as cyd:
        with pytest.raises(ValueError, match="only your own"):
            await cyd.message.subscribe("user:u-someone-else", lambda message: None)
        with pytest.raises(ValueError, match="user:<user id>"):
            await cyd.message.send("news", {"text": "not a user"})


async def test_both_sides_starting_a_session_at_once_converge(server_address: str, tmp_path: Path) -> None:
    ann_key = await new_user(server_address, tmp_path, "ann")
    bob_key = await new_user(server_address, tmp_path, "bob")
    async with Client(server_address, key_file=ann_key) as ann, Client(server_address, key_file=bob_key) as bob:
        await ann.message.send(f"user:{bob.user_id}", {"text": "ann first"})  # neither has heard the other yet
        await bob.message.send(f"user:{ann.user_id}", {"text": "bob first"})
        ann_inbox, bob_inbox = await Inbox(ann).open(), await Inbox(bob).open()
        assert await bob_inbox.wait_for(1) == ["ann first"]
        assert await ann_inbox.wait_for(1) == ["bob first"]
        for n in range(3):
            await ann.message.send(f"user:{bob.user_id}", {"text": f"ann {n}"})
            await bob.message.send(f"user:{ann.user_id}", {"text": f"bob {n}"})
        assert await bob_inbox.wait_for(4) == ["ann first", "ann 0", "ann 1", "ann 2"]
        assert await ann_inbox.wait_for(4) == ["bob first", "bob 0", "bob 1", "bob 2"]
        # While messages cross, each side answers on the session it last heard on; one turn each settles it.
        await ann.message.send(f"user:{bob.user_id}", {"text": "ann's turn"})
        assert (await bob_inbox.wait_for(5))[-1] == "ann's turn"
        await bob.message.send(f"user:{ann.user_id}", {"text": "bob's turn"})
        assert (await ann_inbox.wait_for(5))[-1] == "bob's turn"
        ann_parts, bob_parts = await ann._direct.ready(), await bob._direct.ready()
        ann_session = ann_parts.sessions.active(bob.device_id)
        bob_session = bob_parts.sessions.active(ann.device_id)
        assert ann_session is not None
        assert bob_session is not None
        assert ann_session.base_key == bob_session.base_key, "both now use the same session"
        assert ann_session.initial_header == bob_session.initial_header == b"", "answered: no X3DH header any more"
        assert ann_inbox.rejected == bob_inbox.rejected == []
