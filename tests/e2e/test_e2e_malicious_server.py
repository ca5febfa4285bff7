"""A malicious server against end-to-end encrypted direct messages (CRYPTO.md, "How we test it").

An all-in-one server whose mailbox storage and identity storage lie as each
test tells them (wrapped where the history and identity services open their
storage, for that test only): the mailbox drops, replays, reorders, injects
and restamps envelopes; the identity service swaps device and user keys,
rolls a device list back and forges a signed prekey. Every attack is
detected — a gap shows as `missed_before`, a bad envelope goes to
`on_rejected`, a key the user's key does not vouch for is not sealed for —
and no handler ever sees a message that was not sent as it arrives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any, cast

import nacl.public
import nacl.signing
import pytest

from parley import Client
from parley.crypto.errors import (
    CryptoError,
    DecryptionError,
    DuplicateMessageError,
    ForgedSenderError,
    InvalidSignatureError,
    KeyChangedError,
    MalformedInputError,
    NoSessionError,
    StaleDeviceListError,
    UnknownPrekeyError,
)
from services import allinone
from services.history.mailbox_storage import EnvelopeRow, MailboxStorage, NewEnvelope, open_mailbox_storage
from services.identity.storage import (
    DeviceListRow,
    DeviceRow,
    IdentityStorage,
    IdentityTransaction,
    SignedPrekeyRow,
    UserRow,
    open_identity_storage,
)
from services.runtime.config import Config
from tests.direct_support import DirectInbox
from tests.support import make_config, running, wait_until

pytestmark = pytest.mark.timeout(60)
TTL = 3600.0


class LyingMailbox:
    """The history service's mailbox storage, handing over what the test makes up instead of what was sent."""

    def __init__(self, inner: MailboxStorage) -> None:
        self.inner = inner
        self.deposited: dict[tuple[str, str], NewEnvelope] = {}  # (device id, message id) -> envelope
        self.dropped: set[str] = set()  # message ids never handed over
        self.swapped: tuple[str, str] | None = None  # message ids whose envelopes trade places
        self.restamped: dict[str, tuple[str, str]] = {}  # message id -> (sender user id, sender device id)
        # message id -> what to deposit just before it, made from its envelope
        self.injected: dict[str, Callable[[NewEnvelope], NewEnvelope]] = {}

    async def deposit(self, envelopes: Sequence[NewEnvelope], now: float, ttl: float) -> list[int]:
        for envelope in envelopes:
            self.deposited[(envelope.device_id, envelope.message_id)] = envelope
        forged = [self.injected[e.message_id](e) for e in envelopes if e.message_id in self.injected]
        if forged:
            await self.inner.deposit(forged, now, ttl)
        return await self.inner.deposit(envelopes, now, ttl)

    async def replay(self, device_id: str, message_id: str) -> None:
        """Deposits an envelope the device had (and acknowledged) again."""
        await self.inner.deposit([self.deposited[(device_id, message_id)]], time.time(), TTL)

    async def pending(self, device_id: str, after_seq: int, limit: int, now: float) -> list[EnvelopeRow]:
        stored = await self.inner.pending(device_id, after_seq, limit, now)
        rows = [self._restamp(r) for r in stored if r.message_id not in self.dropped]
        by_id = {r.message_id: n for n, r in enumerate(rows)}
        if self.swapped is not None and set(self.swapped) <= set(by_id):
            first, second = (by_id[m] for m in self.swapped)
            rows[first], rows[second] = (
                dataclasses.replace(rows[second], seq=rows[first].seq),
                dataclasses.replace(rows[first], seq=rows[second].seq),
            )
        return rows

    def _restamp(self, row: EnvelopeRow) -> EnvelopeRow:
        if row.message_id not in self.restamped:
            return row
        user_id, device_id = self.restamped[row.message_id]
        return dataclasses.replace(row, sender_user_id=user_id, sender_device_id=device_id)

    async def held(self, device_ids: Sequence[str]) -> dict[str, int]:
        return await self.inner.held(device_ids)

    async def ack(self, device_id: str, up_to_seq: int) -> int:
        return await self.inner.ack(device_id, up_to_seq)

    async def prune(self, now: float) -> int:
        return await self.inner.prune(now)

    async def close(self) -> None:
        await self.inner.close()


class LyingIdentity:
    """The identity service's storage, answering for users, devices, device lists and prekeys as told."""

    def __init__(self, inner: IdentityStorage) -> None:
        self.inner = inner
        self.user_keys: dict[str, bytes] = {}  # user id -> the user signing key served
        self.dh_keys: dict[str, bytes] = {}  # device id -> the X25519 key served
        self.device_lists: dict[str, DeviceListRow] = {}  # user id -> the list served
        self.signed_prekeys: dict[str, Callable[[SignedPrekeyRow], SignedPrekeyRow]] = {}  # device id -> forgery
        self.published: dict[str, list[DeviceListRow]] = defaultdict(list)  # every list each user published

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[IdentityTransaction]:
        async with self.inner.transaction() as tx:
            yield cast(IdentityTransaction, LyingTransaction(tx, self))

    async def close(self) -> None:
        await self.inner.close()


class LyingTransaction:
    def __init__(self, tx: IdentityTransaction, lies: LyingIdentity) -> None:
        self._tx = tx
        self._lies = lies

    def __getattr__(self, name: str) -> Any:
        return getattr(self._tx, name)

    async def user_by_id(self, user_id: str) -> UserRow | None:
        user = await self._tx.user_by_id(user_id)
        if user is None or user_id not in self._lies.user_keys:
            return user
        return dataclasses.replace(user, signing_key=self._lies.user_keys[user_id])

    async def devices_of(self, user_id: str, include_revoked: bool) -> list[DeviceRow]:
        devices = await self._tx.devices_of(user_id, include_revoked)
        return [dataclasses.replace(d, dh_key=self._lies.dh_keys.get(d.device_id, d.dh_key)) for d in devices]

    async def device_list(self, user_id: str) -> DeviceListRow | None:
        return self._lies.device_lists.get(user_id) or await self._tx.device_list(user_id)

    async def put_device_list(self, row: DeviceListRow) -> bool:
        stored = await self._tx.put_device_list(row)
        if stored:
            self._lies.published[row.user_id].append(row)
        return stored

    async def signed_prekey(self, device_id: str) -> SignedPrekeyRow | None:
        row = await self._tx.signed_prekey(device_id)
        forge = self._lies.signed_prekeys.get(device_id)
        return forge(row) if row is not None and forge is not None else row


@dataclasses.dataclass
class MaliciousServer:
    address: str
    mailbox: LyingMailbox
    identity: LyingIdentity
    key_dir: Path

    async def mailbox_holds(self, device_id: str) -> int:
        return (await self.mailbox.inner.held([device_id]))[device_id]

    async def mailbox_empty(self, device_id: str) -> bool:
        return await self.mailbox_holds(device_id) == 0


@pytest.fixture
async def server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[MaliciousServer]:
    """An all-in-one server whose history and identity services keep their data in lying storage."""
    made: dict[str, Any] = {}

    async def lying_mailbox(config: Config) -> MailboxStorage:
        made["mailbox"] = LyingMailbox(await open_mailbox_storage(config))
        return cast(MailboxStorage, made["mailbox"])

    async def lying_identity(config: Config) -> IdentityStorage:
        made["identity"] = LyingIdentity(await open_identity_storage(config))
        return cast(IdentityStorage, made["identity"])

    # Where the history and identity services open their storage.
    monkeypatch.setattr("services.history.server.open_mailbox_storage", lying_mailbox)
    monkeypatch.setattr("services.identity.server.open_identity_storage", lying_identity)
    async with running(allinone.create_server, make_config(tmp_path / "data")) as (_, address):
        yield MaliciousServer(address, made["mailbox"], made["identity"], tmp_path)


class Inbox(DirectInbox):
    """What one client's handlers got: decrypted messages and rejected envelopes, in order."""

    async def open(self) -> Inbox:
        await super().open()
        return self

    @property
    def received(self) -> list[tuple[str, int]]:
        """(message id, missed_before) of each message handed over."""
        return [(m.message_id, m.missed_before) for m in self.messages]

    @property
    def refused(self) -> list[tuple[str, type[CryptoError]]]:
        """(message id, error class) of each rejected envelope."""
        return [(envelope.message_id, type(error)) for envelope, error in self.rejected]

    async def wait_for(self, messages: int, rejected: int = 0) -> None:
        await wait_until(lambda: len(self.messages) >= messages and len(self.rejected) >= rejected, within=10)


@contextlib.asynccontextmanager
async def person(server: MaliciousServer, name: str) -> AsyncIterator[Client]:
    """A new user's first device, its device list and prekeys published."""
    key_file = server.key_dir / f"{name}.json"
    async with Client(server.address, username=f"{name}{os.urandom(3).hex()}", key_file=key_file) as client:
        await client.request_public_key(client.user_id)
        yield client


@contextlib.asynccontextmanager
async def second_device(server: MaliciousServer, owner: Client, name: str) -> AsyncIterator[Client]:
    device = await owner.add_device(name)
    key_file = server.key_dir / f"{owner.identity.username}-{name}.json"
    device.save(key_file)
    async with Client(server.address, key_file=key_file) as client:
        await client.request_public_key(client.user_id)
        yield client


async def send(sender: Client, recipient: Client, message_id: str) -> None:
    await sender.message.send(f"user:{recipient.user_id}", {"text": message_id}, message_id=message_id)


async def has_session(client: Client, device_id: str) -> bool:
    return (await client._direct.ready()).sessions.active(device_id) is not None


# The mailbox lies


async def test_a_dropped_envelope_shows_as_a_gap(server: MaliciousServer) -> None:
    async with person(server, "ann") as ann, person(server, "bob") as bob:
        inbox = await Inbox(bob).open()
        await send(ann, bob, "m0")
        await inbox.wait_for(1)
        server.mailbox.dropped.add("m1")
        for message_id in ("m1", "m2"):
            await send(ann, bob, message_id)
        await inbox.wait_for(2)
        assert inbox.received == [("m0", 0), ("m2", 1)]
        assert inbox.rejected == []
        await wait_until(lambda: server.mailbox_empty(bob.device_id))  # acknowledged past the gap


async def test_a_replayed_envelope_is_rejected_also_after_a_restart(server: MaliciousServer) -> None:
    async with person(server, "ann") as ann:
        async with person(server, "bob") as bob:
            inbox = await Inbox(bob).open()
            await send(ann, bob, "m1")
            await inbox.wait_for(1)
            await wait_until(lambda: server.mailbox_empty(bob.device_id))
            await server.mailbox.replay(bob.device_id, "m1")
            await send(ann, bob, "m2")  # wakes the mailbox: the replay, then m2
            await inbox.wait_for(2, rejected=1)
            assert inbox.received == [("m1", 0), ("m2", 0)]
            assert inbox.refused == [("m1", DuplicateMessageError)]
            await wait_until(lambda: server.mailbox_empty(bob.device_id))
        await server.mailbox.replay(bob.device_id, "m2")
        async with Client(server.address, key_file=server.key_dir / "bob.json") as bob_again:
            restarted = await Inbox(bob_again).open()
            await restarted.wait_for(0, rejected=1)
            assert restarted.refused == [("m2", DuplicateMessageError)]
            assert restarted.messages == []


async def test_reordered_envelopes_arrive_in_the_new_order_with_the_gap_shown(server: MaliciousServer) -> None:
    async with person(server, "ann") as ann, person(server, "bob") as bob:
        server.mailbox.swapped = ("m1", "m2")
        for message_id in ("m1", "m2"):  # bob is not connected: both wait in the mailbox
            await send(ann, bob, message_id)
        inbox = await Inbox(bob).open()
        await inbox.wait_for(2)
        assert inbox.received == [("m2", 1), ("m1", 0)]
        assert [m.data for m in inbox.messages] == [{"text": "m2"}, {"text": "m1"}]
        assert inbox.rejected == []


def flip_last_bit(data: bytes) -> bytes:
    return data[:-1] + bytes([data[-1] ^ 1])


@pytest.mark.parametrize(
    ("forgery", "error"),
    [
        ("random bytes", MalformedInputError),
        ("a bit flipped", DecryptionError),
        ("another conversation's envelope", UnknownPrekeyError),
    ],
)
async def test_an_injected_envelope_is_rejected_and_changes_nothing(
    server: MaliciousServer, forgery: str, error: type[CryptoError]
) -> None:
    async with person(server, "ann") as ann, person(server, "bob") as bob, person(server, "cyd") as cyd:
        await send(ann, cyd, "to cyd")
        to_cyd = server.mailbox.deposited[(cyd.device_id, "to cyd")]
        make: dict[str, Callable[[NewEnvelope], NewEnvelope]] = {
            "random bytes": lambda e: dataclasses.replace(
                e, message_id="forged", ciphertext=os.urandom(len(e.ciphertext))
            ),
            "a bit flipped": lambda e: dataclasses.replace(
                e, message_id="forged", ciphertext=flip_last_bit(e.ciphertext)
            ),
            "another conversation's envelope": lambda e: dataclasses.replace(to_cyd, device_id=e.device_id),
        }
        server.mailbox.injected["m1"] = make[forgery]
        inbox = await Inbox(bob).open()
        await send(ann, bob, "m1")  # the forgery waits just before it
        await inbox.wait_for(1, rejected=1)
        forged_id = "to cyd" if forgery == "another conversation's envelope" else "forged"
        assert inbox.refused == [(forged_id, error)]
        assert inbox.received == [("m1", 0)], "the forgery left the session as it was"
        assert inbox.messages[0].data == {"text": "m1"}


@pytest.mark.parametrize(("restamp", "error"), [("user", ForgedSenderError), ("user and device", NoSessionError)])
async def test_a_forged_sender_stamp_is_rejected(
    server: MaliciousServer, restamp: str, error: type[CryptoError]
) -> None:
    async with person(server, "ann") as ann, person(server, "bob") as bob, person(server, "cyd") as cyd:
        ann_inbox, bob_inbox = await Inbox(ann).open(), await Inbox(bob).open()
        await send(ann, bob, "m0")
        await bob_inbox.wait_for(1)
        await send(bob, ann, "r0")  # ann hears back: her envelopes stop carrying the session's start
        await ann_inbox.wait_for(1)
        server.mailbox.restamped["m1"] = (cyd.user_id, cyd.device_id if restamp == "user and device" else ann.device_id)
        for message_id in ("m1", "m2"):
            await send(ann, bob, message_id)
        await bob_inbox.wait_for(2, rejected=1)
        ((envelope, _),) = bob_inbox.rejected
        assert (envelope.sender_user_id, bob_inbox.refused) == (cyd.user_id, [("m1", error)])
        assert bob_inbox.received == [("m0", 0), ("m2", 1)]
        assert {m.sender_user_id for m in bob_inbox.messages} == {ann.user_id}


# The identity service lies


async def test_a_swapped_device_key_is_not_sealed_for(server: MaliciousServer) -> None:
    async with person(server, "ann") as ann, person(server, "bob") as bob:
        async with second_device(server, bob, "phone") as phone:
            server.identity.dh_keys[phone.device_id] = nacl.public.PrivateKey.generate().public_key.encode()
            peer = await ann.request_public_key(bob.user_id)
            assert [d.device_id for d in peer.devices] == [bob.device_id]
            assert peer.rejected_device_ids == (phone.device_id,)
            sent = await ann.message.send(f"user:{bob.user_id}", {"text": "hi"})
            assert (sent.device_ids, sent.unreachable_device_ids) == ((bob.device_id,), (phone.device_id,))
            assert not await has_session(ann, phone.device_id)
            assert await server.mailbox_holds(phone.device_id) == 0


async def test_a_swapped_user_key_blocks_the_conversation_until_trusted(server: MaliciousServer) -> None:
    async with person(server, "bob") as bob:
        async with person(server, "ann") as ann:
            await ann.request_public_key(bob.user_id)  # pinned
        fake = nacl.signing.SigningKey.generate().verify_key.encode()
        server.identity.user_keys[bob.user_id] = fake
        async with Client(server.address, key_file=server.key_dir / "ann.json") as ann:  # ann starts afresh
            with pytest.raises(KeyChangedError):
                await ann.message.send(f"user:{bob.user_id}", {"text": "blocked"})
            with pytest.raises(KeyChangedError) as changed:
                await ann.request_public_key(bob.user_id)
            assert (changed.value.pinned_key, changed.value.presented_key) == (bob.identity.user_public_key, fake)
            assert await ann.safety_number(bob.user_id) == await bob.safety_number(ann.user_id), "the pinned key's"
            assert await ann.safety_number(bob.user_id, presented=True) != await bob.safety_number(ann.user_id)

            await ann.trust(bob.user_id)  # ann accepts the server's key without comparing numbers
            with pytest.raises(InvalidSignatureError):  # bob's signed device list does not verify under it
                await ann.request_public_key(bob.user_id)
            with pytest.raises(InvalidSignatureError):
                await ann.message.send(f"user:{bob.user_id}", {"text": "to the server's key"})
            assert await server.mailbox_holds(bob.device_id) == 0

            del server.identity.user_keys[bob.user_id]  # bob's real key again: now it is not the one pinned
            with pytest.raises(KeyChangedError):
                await ann.request_public_key(bob.user_id)
            await ann.trust(bob.user_id)
            assert await ann.safety_number(bob.user_id) == await bob.safety_number(ann.user_id)
            inbox = await Inbox(bob).open()
            await send(ann, bob, "after trust")
            await inbox.wait_for(1)
            assert inbox.received == [("after trust", 0)]


async def test_a_rolled_back_device_list_is_refused(server: MaliciousServer) -> None:
    async with person(server, "ann") as ann, person(server, "bob") as bob:
        first = await ann.request_public_key(bob.user_id)
        async with second_device(server, bob, "phone"):
            second = await ann.request_public_key(bob.user_id)
            assert first.device_list_counter is not None
            assert second.device_list_counter is not None
            assert second.device_list_counter > first.device_list_counter
            server.identity.device_lists[bob.user_id] = server.identity.published[bob.user_id][0]
            with pytest.raises(StaleDeviceListError):
                await ann.request_public_key(bob.user_id)
            async with Client(server.address, key_file=server.key_dir / "ann.json") as ann_again:  # a restart
                with pytest.raises(StaleDeviceListError):
                    await ann_again.message.send(f"user:{bob.user_id}", {"text": "to the old list"})
            assert await server.mailbox_holds(bob.device_id) == 0


@pytest.mark.parametrize("forgery", ["signature", "public key"])
async def test_a_forged_signed_prekey_leaves_the_device_unreachable(server: MaliciousServer, forgery: str) -> None:
    attacker = nacl.public.PrivateKey.generate().public_key.encode()
    forge: Callable[[SignedPrekeyRow], SignedPrekeyRow] = (
        (lambda row: dataclasses.replace(row, signature=flip_last_bit(row.signature)))
        if forgery == "signature"
        else (lambda row: dataclasses.replace(row, public_key=attacker))
    )
    async with person(server, "ann") as ann, person(server, "bob") as bob:
        async with second_device(server, bob, "phone") as phone:
            server.identity.signed_prekeys[phone.device_id] = forge
            sent = await ann.message.send(f"user:{bob.user_id}", {"text": "hi"})
            assert (sent.device_ids, sent.unreachable_device_ids) == ((bob.device_id,), (phone.device_id,))
            assert not await has_session(ann, phone.device_id)
            assert await has_session(ann, bob.device_id)
            assert await server.mailbox_holds(phone.device_id) == 0
