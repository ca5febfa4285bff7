"""Regression tests for what a security review found in end-to-end encrypted direct messages.

Each runs against the lying server of test_e2e_malicious_server and fails
on the SDK as it was before the review: a revoked device listed again by the service stays
out (the device holding the user key builds its list from the one it signed
last); safety numbers come from the pinned key; a replayed first message is
refused also once its session is gone; `trust` while the receive worker is
busy loses nothing, and held messages survive a restart, acknowledged;
envelopes beyond the unsubscribed backlog are not acknowledged unhandled; a
held envelope does not hold back later acknowledgements; a payload nested
too deep is rejected and the worker goes on.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import sys
from collections.abc import Iterator

import grpc
import nacl.signing
import pytest

from parley import Client
from parley import direct_messages as direct_rules
from parley import prekeys as prekey_rules
from parley.crypto.errors import (
    CryptoError,
    DuplicateMessageError,
    InvalidSignatureError,
    KeyChangedError,
    MalformedInputError,
)
from parley.direct_messages import DirectMessage, RejectedEnvelope
from parley.errors import UnavailableError
from parley.gateway.v1 import gateway_pb2
from parley.identity.v1 import identity_pb2
from services.identity.storage import DeviceRow
from tests.e2e import test_e2e_malicious_server as malicious
from tests.e2e.test_e2e_malicious_server import (
    Inbox,
    LyingTransaction,
    MaliciousServer,
    person,
    second_device,
    send,
)
from tests.support import wait_until

pytestmark = pytest.mark.timeout(60)
server = malicious.server  # the fixture: an all-in-one server whose storage lies as each test tells it
WRONG_KEY = b"\x01" * 32


def list_again_as_active(monkeypatch: pytest.MonkeyPatch, device_id: str) -> None:
    """The identity service lists a revoked device among the active ones (ListDevices, GetUser, the gateway)."""
    lying = LyingTransaction.devices_of

    async def devices_of(self: LyingTransaction, user_id: str, include_revoked: bool) -> list[DeviceRow]:
        devices = await lying(self, user_id, include_revoked)
        if include_revoked:
            return devices
        every = await lying(self, user_id, True)
        return devices + [dataclasses.replace(d, revoked_at=None) for d in every if d.device_id == device_id]

    monkeypatch.setattr(LyingTransaction, "devices_of", devices_of)


async def pin_a_wrong_key(client: Client, user_id: str) -> None:
    """As if the user's key had been replaced since the client pinned it (kept in its key store)."""
    parts = await client._direct.ready()
    parts.trust.pin_user_key(user_id, WRONG_KEY)
    parts.trust.forget(user_id)
    await parts.state.persist()


async def drop_stream(client: Client) -> None:
    """The link drops; the client reconnects and its new stream hands over what was not acknowledged."""
    old = await client.stream()
    old.abort(UnavailableError(grpc.StatusCode.UNAVAILABLE, "", "the link dropped"))
    await wait_until(lambda: client.state.value == "connected" and client._connection.live_stream is not old)


async def one_time_prekeys(client: Client) -> int:
    metadata = [("authorization", f"Bearer {await client.access_token()}")]
    count = await client.identity_stub.CountPrekeys(identity_pb2.CountPrekeysRequest(), metadata=metadata)
    return int(count.one_time_prekeys)


@contextlib.contextmanager
def recursion_limit(limit: int) -> Iterator[None]:
    before = sys.getrecursionlimit()
    sys.setrecursionlimit(limit)
    try:
        yield
    finally:
        sys.setrecursionlimit(before)


async def test_a_revoked_device_stays_out_when_the_service_lists_it_again(
    server: MaliciousServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with person(server, "bob") as bob:
        async with person(server, "ann") as ann:
            async with second_device(server, ann, "phone") as phone:
                phone_id = phone.device_id
            await ann.revoke_device(phone_id)
            ann_id = ann.user_id
        list_again_as_active(monkeypatch, phone_id)
        # ann restarts: her first use of direct messages publishes her device list again
        async with Client(server.address, key_file=server.key_dir / "ann.json") as ann_again:
            await ann_again.request_public_key(ann_id)
        peer = await bob.request_public_key(ann_id)
        assert [d.device_id for d in peer.devices] == [ann_again.device_id]
        assert peer.rejected_device_ids == (phone_id,), "the service does list the phone; ann's key does not"
        sent = await bob.message.send(f"user:{ann_id}", {"text": "not for the phone"})
        assert sent.device_ids == (ann_again.device_id,)
        assert phone_id in sent.unreachable_device_ids
        assert await server.mailbox_holds(phone_id) == 0


async def test_safety_numbers_come_from_the_pinned_key(server: MaliciousServer) -> None:
    async with person(server, "bob") as bob, person(server, "ann") as ann:
        server.identity.user_keys[bob.user_id] = nacl.signing.SigningKey.generate().verify_key.encode()
        with pytest.raises(InvalidSignatureError):  # first contact: ann pins the fake key
            await ann.request_public_key(bob.user_id)
        del server.identity.user_keys[bob.user_id]  # bob's real key again
        bobs_number = await bob.safety_number(ann.user_id)
        pinned_number = await ann.safety_number(bob.user_id)
        assert pinned_number != bobs_number, "ann's number is for the fake key she pinned"
        assert await ann.safety_number(bob.user_id, presented=True) == bobs_number
        with pytest.raises(KeyChangedError):  # the number of the pinned key does not vouch for the presented one
            await ann.trust(bob.user_id, safety_number=str(pinned_number))
        await ann.trust(bob.user_id, safety_number=str(bobs_number))
        assert await ann.safety_number(bob.user_id) == bobs_number
        assert (await ann.request_public_key(bob.user_id)).user_signing_key == bob.identity.user_public_key


async def test_a_replayed_first_message_is_refused_after_its_session_is_gone(
    server: MaliciousServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prekey_rules, "ONE_TIME_PREKEYS", 0)  # every session starts on the signed prekey alone
    async with person(server, "ann") as ann, person(server, "bob") as bob, person(server, "cyd") as cyd:
        assert await one_time_prekeys(bob) == 0
        inbox = await Inbox(bob).open()
        await send(ann, bob, "m1")
        await inbox.wait_for(1)
        await wait_until(lambda: server.mailbox_empty(bob.device_id))
        (await bob._direct.ready()).sessions.drop(ann.device_id)
        await server.mailbox.replay(bob.device_id, "m1")
        await send(cyd, bob, "c1")  # wakes the mailbox: the replay, then c1
        await inbox.wait_for(2, rejected=1)
        assert inbox.received == [("m1", 0), ("c1", 0)]
        assert inbox.refused == [("m1", DuplicateMessageError)]


class SlowHandler:
    """Hands messages over like a handler that awaits something while it takes `slow_id`."""

    def __init__(self, slow_id: str) -> None:
        self.slow_id = slow_id
        self.taking = asyncio.Event()
        self.go_on = asyncio.Event()
        self.message_ids: list[str] = []
        self.rejected: list[tuple[RejectedEnvelope, CryptoError]] = []

    async def __call__(self, message: DirectMessage) -> None:
        if message.message_id == self.slow_id:
            self.taking.set()
            await self.go_on.wait()
        self.message_ids.append(message.message_id)

    def reject(self, envelope: RejectedEnvelope, error: CryptoError) -> None:
        self.rejected.append((envelope, error))


async def test_held_messages_survive_a_restart_and_trust_while_the_worker_is_busy_loses_none(
    server: MaliciousServer,
) -> None:
    async with person(server, "ann") as ann, person(server, "cyd") as cyd:
        async with person(server, "bob") as bob:
            await pin_a_wrong_key(bob, ann.user_id)
            inbox = await Inbox(bob).open()
            for message_id in ("h1", "h2"):
                await send(ann, bob, message_id)
            await inbox.wait_for(0, rejected=2)
            assert inbox.refused == [("h1", KeyChangedError), ("h2", KeyChangedError)]
            await wait_until(lambda: server.mailbox_empty(bob.device_id))  # kept aside by bob, not by the mailbox
        async with Client(server.address, key_file=server.key_dir / "bob.json") as bob_again:
            assert await bob_again.message.held() == {ann.user_id: 2}
            handler = SlowHandler("c1")
            bob_again.message.on_rejected(handler.reject)
            await bob_again.message.subscribe(f"user:{bob_again.user_id}", handler)
            await bob_again.stream()
            for message_id in ("c1", "c2"):
                await send(cyd, bob_again, message_id)
            await asyncio.wait_for(handler.taking.wait(), 10)
            await bob_again.trust(ann.user_id, safety_number=str(await ann.safety_number(bob_again.user_id)))
            handler.go_on.set()
            await wait_until(lambda: len(handler.message_ids) >= 4)
            await wait_until(lambda: server.mailbox_empty(bob_again.device_id))
            await asyncio.sleep(0.3)  # anything handed over twice would be here by now
            assert handler.message_ids == ["c1", "h1", "h2", "c2"]
            assert not [error for _, error in handler.rejected if not isinstance(error, KeyChangedError)]
            assert await bob_again.message.held() == {}


async def test_envelopes_beyond_the_unsubscribed_backlog_are_not_acknowledged_unhandled(
    server: MaliciousServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(direct_rules, "UNSUBSCRIBED_BACKLOG", 2)
    async with person(server, "ann") as ann, person(server, "bob") as bob:
        handed_over: list[str] = []
        direct = bob._direct
        take = direct.received

        def received(frame: gateway_pb2.SealedEnvelopes) -> None:
            handed_over.extend(e.message_id for e in frame.envelopes)
            take(frame)

        monkeypatch.setattr(direct, "received", received)
        await bob.stream()  # open, but no direct message handler yet
        for n in range(4):
            await send(ann, bob, f"m{n}")
        await wait_until(lambda: len(handed_over) >= 4)
        inbox = await Inbox(bob).open()
        await inbox.wait_for(2)
        await send(ann, bob, "m4")  # handled after the two kept: acknowledging it must not take the two left out
        await inbox.wait_for(3)
        await drop_stream(bob)
        await inbox.wait_for(5)
        await asyncio.sleep(0.3)
        assert collections.Counter(m.message_id for m in inbox.messages) == {f"m{n}": 1 for n in range(5)}
        assert inbox.rejected == []
        await wait_until(lambda: server.mailbox_empty(bob.device_id))


async def test_a_held_envelope_does_not_hold_back_later_acknowledgements(server: MaliciousServer) -> None:
    async with person(server, "ann") as ann, person(server, "cyd") as cyd:
        async with person(server, "bob") as bob:
            await pin_a_wrong_key(bob, ann.user_id)
            inbox = await Inbox(bob).open()
            await send(ann, bob, "held")
            await inbox.wait_for(0, rejected=1)
            for message_id in ("c1", "c2"):
                await send(cyd, bob, message_id)
            await inbox.wait_for(2)
            await wait_until(lambda: server.mailbox_empty(bob.device_id))
            await drop_stream(bob)
            await asyncio.sleep(0.3)
            assert inbox.received == [("c1", 0), ("c2", 0)]
            assert inbox.refused == [("held", KeyChangedError)]
        async with Client(server.address, key_file=server.key_dir / "bob.json") as bob_again:
            again = await Inbox(bob_again).open()
            await asyncio.sleep(0.5)
            assert again.messages == []
            # the held one may be announced again; nothing handled before is reported as a replay
            assert [r for r in again.refused if r != ("held", KeyChangedError)] == []
            assert await bob_again.message.held() == {ann.user_id: 1}


async def test_a_payload_nested_too_deep_is_rejected_and_the_next_message_arrives(server: MaliciousServer) -> None:
    deep: list[object] = []
    for _ in range(5000):
        deep = [deep]
    async with person(server, "ann") as ann, person(server, "bob") as bob:
        with recursion_limit(20_000):  # enough for ann to encode it; bob, offline, decodes later at the usual limit
            await ann.message.send(f"user:{bob.user_id}", deep, message_id="deep")
        await send(ann, bob, "next")
        inbox = await Inbox(bob).open()
        await inbox.wait_for(1, rejected=1)
        assert inbox.refused == [("deep", MalformedInputError)]
        assert [m.message_id for m in inbox.messages] == ["next"]
        assert inbox.messages[0].data == {"text": "next"}
