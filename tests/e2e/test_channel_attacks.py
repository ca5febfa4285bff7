"""A malicious server and malicious members against sealed group channels (issue 13; CRYPTO.md "Group channels").

The all-in-one server of the direct-message harness (`test_e2e_malicious_server`), with its room service's
storage wrapped too, so a test can make the channel service hand over a commit chain or wraps of its own
making. Every attack is detected: a forged, misplaced or unauthorised commit is refused by the service and,
served anyway, by the member's `sync`; a wrap no member signed is refused at both ends; a removed member gets
nothing of the next epoch and cannot open it; members agree on the epoch authenticator; a replayed or forged
message lands in `space.rejected`, never in a handler; a non-member reads nothing of the channel by any RPC.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any, cast

import grpc
import pytest

from parley import Client
from parley.channel_keys import member_device
from parley.crypto import group
from parley.crypto.errors import CryptoError
from parley.errors import PermissionDeniedError
from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from parley.room.v1 import channel_pb2, channel_pb2_grpc
from parley.spaces import ChannelMessage, Space
from parley.values import to_value
from services.room.storage import CommitRow, RoomStorage, WrapRow, open_room_storage
from services.runtime.config import Config
from tests.e2e import test_e2e_malicious_server as malicious
from tests.e2e.test_e2e_malicious_server import MaliciousServer, flip_last_bit, person
from tests.e2e.test_private_rooms import SERVICE, refused_every_read
from tests.support import bearer, error_reason, wait_until

pytestmark = pytest.mark.timeout(60)
server = malicious.server  # the fixture: an all-in-one server whose storage lies as each test tells it

ServedCommits = Callable[[list[CommitRow], int], list[CommitRow]]
"""(the stored chain, the epoch asked from) -> the commits the service hands over."""
ServedWraps = Callable[[list[WrapRow]], list[WrapRow]]
"""The stored wraps asked for -> the wraps the service hands over."""


class LyingRoomStorage:
    """The room service's storage, handing over the commits and wraps the test makes up (None: the stored ones)."""

    def __init__(self, inner: RoomStorage) -> None:
        self.inner = inner
        self.served_commits: ServedCommits | None = None
        self.served_wraps: ServedWraps | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def commits(self, space_id: str, from_epoch: int) -> list[CommitRow]:
        if self.served_commits is None:
            return await self.inner.commits(space_id, from_epoch)
        return self.served_commits(await self.inner.commits(space_id, 0), from_epoch)

    async def wraps(self, space_id: str, from_epoch: int, device_id: str = "") -> list[WrapRow]:
        stored = await self.inner.wraps(space_id, from_epoch, device_id)
        return stored if self.served_wraps is None else self.served_wraps(stored)

    @contextlib.contextmanager
    def lying(self, *, commits: ServedCommits | None = None, wraps: ServedWraps | None = None) -> Iterator[None]:
        self.served_commits, self.served_wraps = commits, wraps
        try:
            yield
        finally:
            self.served_commits = self.served_wraps = None


@dataclasses.dataclass
class RoomLies:
    storage: LyingRoomStorage | None = None


@pytest.fixture(autouse=True)
def room_lies(monkeypatch: pytest.MonkeyPatch) -> RoomLies:
    """Where the room service opens its storage (autouse: in place before the `server` fixture starts)."""
    lies = RoomLies()

    async def lying_rooms(config: Config) -> RoomStorage:
        lies.storage = LyingRoomStorage(await open_room_storage(config))
        return cast(RoomStorage, lies.storage)

    monkeypatch.setattr("services.room.server.open_room_storage", lying_rooms)
    return lies


@pytest.fixture
def rooms(server: MaliciousServer, room_lies: RoomLies) -> LyingRoomStorage:
    assert room_lies.storage is not None
    return room_lies.storage


@dataclasses.dataclass
class People:
    ann: Client
    ben: Client
    cyd: Client
    dan: Client
    """Never a member of anything ann makes."""


@contextlib.asynccontextmanager
async def people(server: MaliciousServer) -> AsyncIterator[People]:
    async with person(server, "ann") as ann, person(server, "ben") as ben:
        async with person(server, "cyd") as cyd, person(server, "dan") as dan:
            yield People(ann, ben, cyd, dan)


async def channel_of(admin: Client, *members: Client) -> Space:
    """A new channel `admin` made, then added `members` to, one commit each."""
    space = await admin.space.create_channel(f"crew-{secrets.token_hex(4)}")
    for member in members:
        await space.add_member(member.user_id)
    return space


@contextlib.asynccontextmanager
async def channel_service(server: MaliciousServer) -> AsyncIterator[channel_pb2_grpc.ChannelServiceAsyncStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield channel_pb2_grpc.ChannelServiceStub(channel)


@contextlib.asynccontextmanager
async def backend(server: MaliciousServer) -> AsyncIterator[gateway_pb2_grpc.GatewayServiceAsyncStub]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield gateway_pb2_grpc.GatewayServiceStub(channel)


async def publish(server: MaliciousServer, space_id: str, data: Any) -> None:
    """`data` published to the channel's room as a new "message" event, on the backend's authority."""
    async with backend(server) as gateway:
        request = gateway_pb2.PublishToRoomRequest(
            room_id=space_id, events=[gateway_pb2.OutgoingEvent(event="message", payload=to_value(data))]
        )
        await gateway.PublishToRoom(request, metadata=SERVICE)


async def as_user(client: Client) -> tuple[tuple[str, str], ...]:
    return bearer(await client.access_token())


async def refused(call: Awaitable[object], code: grpc.StatusCode, reason: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as error:
        await call
    assert (error.value.code(), error_reason(error.value)) == (code, reason)


async def own_device(client: Client) -> tuple[group.MemberDevice, bytes]:
    """The client's device as a roster lists it, and its X25519 private key."""
    own = (await client._direct.ready()).own
    return member_device(own.keys), own.dh_private_key


async def as_member(client: Client) -> group.Member:
    own = (await client._direct.ready()).own
    return group.Member(client.user_id, own.keys.user_signing_key, group.MEMBER, (member_device(own.keys),))


def held_state(space: Space) -> group.ChannelState:
    latest = space._keys.latest
    assert latest is not None
    return latest


def commit_request(
    previous: group.ChannelState, roster: group.Roster, committer: Client, *, previous_hash: bytes | None = None
) -> channel_pb2.CommitRequest:
    """An admin commit of `roster` after `previous` with a wrap per device, signed by `committer`'s device and
    not checked first (`commit_epoch` refuses to make what the rules forbid)."""
    unsigned = group.Commit(
        channel_id=previous.channel_id,
        epoch=previous.epoch + 1,
        previous_hash=previous.commit_hash if previous_hash is None else previous_hash,
        roster=roster,
        history_policy=previous.history_policy,
        committer_device_id=committer.device_id,
        admission="admin",
        proof=b"",
        wraps_hash=b"",
    )
    secret = group.new_epoch_secret()
    wraps = {
        device.device_id: group.wrap_epoch_secret(
            secret, device, unsigned.channel_id, unsigned.epoch, unsigned.content_hash()
        )
        for device in roster.devices()
    }
    signed = group.sign_commit(
        dataclasses.replace(unsigned, wraps_hash=group.wraps_hash(wraps)), committer.identity.device_signing_key
    )
    return channel_pb2.CommitRequest(
        space_id=previous.channel_id,
        commit=channel_pb2.SignedCommit(commit=signed.commit_bytes, signature=signed.signature),
        wraps=[channel_pb2.DeviceWrap(device_id=d, wrap=w) for d, w in sorted(wraps.items())],
    )


def sealed_of(event_data: Any) -> bytes:
    return base64.b64decode(event_data["sealed"])


class Inbox:
    """What one member's channel handle handed over: decrypted messages, in order."""

    def __init__(self, space: Space) -> None:
        self.space = space
        self.messages: list[ChannelMessage] = []
        space.on_message(self.messages.append)

    @property
    def texts(self) -> list[str]:
        return [m.body["text"] for m in self.messages]

    @property
    def refused(self) -> list[type[CryptoError]]:
        return [type(error) for _, error in self.space.rejected]

    async def wait_for(self, text: str) -> None:
        """Until the message `text` is handed over (so everything the room carried before it was handled)."""
        await wait_until(lambda: text in self.texts)

    async def handled(self, events: int) -> None:
        """Until `events` message events were handed over or rejected."""
        await wait_until(lambda: len(self.messages) + len(self.space.rejected) >= events)


# Commits


@pytest.mark.parametrize(
    "forgery", ["a bad signature", "a wrong previous hash", "a plain member as committer", "another device's commit"]
)
async def test_a_forged_commit_is_refused_and_changes_nothing(
    server: MaliciousServer, rooms: LyingRoomStorage, forgery: str
) -> None:
    async with people(server) as p, channel_service(server) as channels:
        crew = await channel_of(p.ann, p.ben)
        previous = held_state(crew)
        with_cyd = group.Roster((*previous.roster.members, await as_member(p.cyd)))
        signer = p.ben if forgery == "a plain member as committer" else p.ann
        wrong_hash = os.urandom(32) if forgery == "a wrong previous hash" else None
        forged = commit_request(previous, with_cyd, signer, previous_hash=wrong_hash)
        if forgery == "a bad signature":
            forged.commit.signature = flip_last_bit(forged.commit.signature)
        caller = p.ben if forgery in ("a plain member as committer", "another device's commit") else p.ann

        await refused(
            channels.Commit(forged, metadata=await as_user(caller)),
            grpc.StatusCode.INVALID_ARGUMENT,
            "VALIDATION_FAILED",
        )
        ann = await as_user(p.ann)
        found = await channels.GetChannel(channel_pb2.GetChannelRequest(space_id=crew.space_id), metadata=ann)
        assert found.channel.epoch == 1
        chain = await channels.ListCommits(channel_pb2.ListCommitsRequest(space_id=crew.space_id), metadata=ann)
        assert len(chain.commits) == 2
        assert await rooms.inner.wraps(crew.space_id, 2) == []
        assert {m.user_id for m in await p.ann.room_members(crew.space_id)} == {p.ann.user_id, p.ben.user_id}
        with pytest.raises(PermissionDeniedError, match="NOT_A_MEMBER"):
            await p.cyd.space.join_channel(crew.space_id)

        await channels.Commit(commit_request(previous, with_cyd, p.ann), metadata=ann)  # made right, it is taken
        assert (await p.cyd.space.join_channel(crew.space_id)).epoch == 2


def commit_with_previous_hash(row: CommitRow, previous_hash: bytes) -> CommitRow:
    commit = dataclasses.replace(group.Commit.from_bytes(row.commit), previous_hash=previous_hash)
    return dataclasses.replace(row, commit=commit.to_bytes())


def signature_flipped(row: CommitRow) -> CommitRow:
    return dataclasses.replace(row, signature=flip_last_bit(row.signature))


FORGED_CHAINS: dict[str, tuple[ServedCommits, type[group.RejectedCommitError]]] = {
    "a signature flipped": (
        lambda chain, start: [signature_flipped(r) if r.epoch == start else r for r in chain if r.epoch >= start],
        group.ForgedCommitError,
    ),
    "the previous hash changed": (
        lambda chain, start: [
            commit_with_previous_hash(r, os.urandom(32)) if r.epoch == start else r for r in chain if r.epoch >= start
        ],
        group.BrokenChainError,
    ),
    "a held commit rewritten": (
        lambda chain, start: [
            signature_flipped(r) if r.epoch == start - 1 else r for r in chain if r.epoch >= start - 1
        ],
        group.BrokenChainError,
    ),
    "a commit left out": (lambda chain, start: [r for r in chain if r.epoch > start], group.BrokenChainError),
}


@pytest.mark.parametrize("forgery", list(FORGED_CHAINS))
async def test_a_forged_chain_served_is_refused_and_the_epoch_held_stays(
    server: MaliciousServer, rooms: LyingRoomStorage, forgery: str
) -> None:
    served, error = FORGED_CHAINS[forgery]
    async with people(server) as p:
        crew = await channel_of(p.ann, p.ben)
        ben_crew = await p.ben.space.join_channel(crew.space_id)
        p.ben.space._open.clear()  # ben's handle is not told of commits: it reads them only on sync()
        await crew.add_member(p.cyd.user_id)
        await crew.remove_member(p.cyd.user_id)
        assert (crew.epoch, ben_crew.epoch) == (3, 1)

        with rooms.lying(commits=served), pytest.raises(error):
            await ben_crew.sync()
        assert ben_crew.epoch == 1
        assert not ben_crew._keys.knows_epoch(2)
        assert not ben_crew._keys.knows_epoch(3)

        await ben_crew.sync()  # the true chain again
        assert (ben_crew.epoch, ben_crew.authenticator) == (3, crew.authenticator)


async def test_the_chain_of_another_channel_is_refused_for_this_one(
    server: MaliciousServer, rooms: LyingRoomStorage
) -> None:
    """The server serves, for ann's channel, a chain its own account dan made (ben added, dan the admin):
    every commit and wrap in it is genuine, but for another channel id."""
    async with people(server) as p:
        crew = await channel_of(p.ann, p.ben)
        decoy = await p.dan.space.create_space()
        await decoy.add_member(p.ben.user_id)
        decoy_commits = await rooms.inner.commits(decoy.space_id, 0)
        decoy_wraps = await rooms.inner.wraps(decoy.space_id, 0)

        with (
            rooms.lying(
                commits=lambda _, start: [r for r in decoy_commits if r.epoch >= start], wraps=lambda _: decoy_wraps
            ),
            pytest.raises(group.RejectedCommitError),
        ):
            await p.ben.space.join_channel(crew.space_id)  # accepted, ben would share dan's epoch secret

        ben_crew = await p.ben.space.join_channel(crew.space_id)
        assert [m.user_id for m in await ben_crew.members()] == sorted([p.ann.user_id, p.ben.user_id])
        assert ben_crew.authenticator == crew.authenticator


# Wraps


def signed_by(signer: Client, state: group.ChannelState, recipient: str, wrap: bytes) -> bytes:
    return group.signed_wrap(state, recipient, wrap, signer.device_id, signer.identity.device_signing_key).to_bytes()


async def test_a_wrap_a_non_member_signed_is_refused_by_the_service(
    server: MaliciousServer, rooms: LyingRoomStorage
) -> None:
    async with people(server) as p, channel_service(server) as channels:
        crew = await channel_of(p.ann, p.ben)
        state = held_state(crew)
        ben_device, _ = await own_device(p.ben)
        dan_device, _ = await own_device(p.dan)
        secret = group.new_epoch_secret()

        def wrap_for(device: group.MemberDevice) -> bytes:
            return group.wrap_epoch_secret(secret, device, state.channel_id, state.epoch, state.content_hash)

        attempts = [
            (p.dan, signed_by(p.dan, state, p.ben.device_id, wrap_for(ben_device)), "NOT_A_MEMBER"),
            (p.ben, signed_by(p.dan, state, p.ben.device_id, wrap_for(ben_device)), "VALIDATION_FAILED"),
            (p.ben, signed_by(p.ben, state, p.dan.device_id, wrap_for(dan_device)), "VALIDATION_FAILED"),
        ]
        for caller, wrap, reason in attempts:
            request = channel_pb2.AddWrapsRequest(space_id=crew.space_id, signed_wraps=[wrap])
            code = grpc.StatusCode.PERMISSION_DENIED if reason == "NOT_A_MEMBER" else grpc.StatusCode.INVALID_ARGUMENT
            await refused(channels.AddWraps(request, metadata=await as_user(caller)), code, reason)
        assert not any(row.signed for row in await rooms.inner.wraps(crew.space_id, 0))


async def test_a_wrap_a_non_member_signed_is_not_taken_by_the_client(
    server: MaliciousServer, rooms: LyingRoomStorage
) -> None:
    """The server hands ben, instead of his wrap of epoch 1, one of a secret it chose, sealed rightly to ben's
    device and signed by its own account's device (dan, in no roster)."""
    async with people(server) as p:
        crew = await channel_of(p.ann, p.ben)
        state = held_state(crew)
        ben_device, ben_dh_private = await own_device(p.ben)
        chosen = group.new_epoch_secret()
        wrap = group.wrap_epoch_secret(chosen, ben_device, state.channel_id, 1, state.content_hash)
        opened = group.unwrap_epoch_secret(
            wrap, p.ben.device_id, ben_dh_private, state.channel_id, 1, state.content_hash
        )
        assert opened == chosen, "only the signature can tell this wrap from a genuine one"
        forged = WrapRow(crew.space_id, 1, p.ben.device_id, signed_by(p.dan, state, p.ben.device_id, wrap), True)

        def swapped(stored: list[WrapRow]) -> list[WrapRow]:
            return [forged if (r.epoch, r.device_id) == (1, p.ben.device_id) else r for r in stored]

        with rooms.lying(wraps=swapped), pytest.raises(group.ForgedWrapError):
            await p.ben.space.join_channel(crew.space_id)
        held = (await p.ben._direct.ready()).state.get_json("channels", crew.space_id)
        assert base64.b64encode(chosen).decode() not in json.dumps(held)

        ben_crew = await p.ben.space.join_channel(crew.space_id)
        assert ben_crew.authenticator == crew.authenticator


# Removal


async def test_a_removed_member_cannot_read_the_next_epoch(server: MaliciousServer, rooms: LyingRoomStorage) -> None:
    async with people(server) as p, channel_service(server) as channels:
        crew = await channel_of(p.ann, p.ben, p.cyd)
        cyd_crew = await p.cyd.space.join_channel(crew.space_id)
        await crew.send_message({"text": "before"})
        await crew.remove_member(p.cyd.user_id)
        assert crew.epoch == 3
        await crew.send_message({"text": "after"})

        wraps = await rooms.inner.wraps(crew.space_id, 3)
        assert {w.device_id for w in wraps} == {p.ann.device_id, p.ben.device_id}
        request = channel_pb2.GetWrapsRequest(space_id=crew.space_id, from_epoch=3)
        await refused(
            channels.GetWraps(request, metadata=await as_user(p.cyd)), grpc.StatusCode.PERMISSION_DENIED, "NOT_A_MEMBER"
        )
        with pytest.raises(PermissionDeniedError, match="NOT_A_MEMBER"):
            await cyd_crew.sync()

        _, cyd_dh_private = await own_device(p.cyd)
        state = held_state(crew)
        stolen = next(w.wrap for w in wraps if w.device_id == p.ben.device_id)
        for posing_as in (p.cyd.device_id, p.ben.device_id):
            with pytest.raises(group.WrapRejectedError):
                group.unwrap_epoch_secret(stolen, posing_as, cyd_dh_private, crew.space_id, 3, state.content_hash)

        after, before = await p.ann.history(crew.space_id, event="message")
        assert cyd_crew._keys.open(sealed_of(before.data), replay_check=False).epoch == 2  # what cyd could read
        with pytest.raises(group.UnknownEpochError):
            cyd_crew._keys.open(sealed_of(after.data), replay_check=False)
        assert not cyd_crew._keys.knows_epoch(3)


# Authenticator


async def test_members_agree_on_the_epoch_authenticator(server: MaliciousServer) -> None:
    async with people(server) as p:
        crew = await channel_of(p.ann, p.ben)
        ben_crew = await p.ben.space.join_channel(crew.space_id)
        first = crew.authenticator
        assert ben_crew.authenticator == first
        await crew.add_member(p.cyd.user_id)
        cyd_crew = await p.cyd.space.join_channel(crew.space_id)
        await ben_crew.sync()
        assert crew.epoch == ben_crew.epoch == cyd_crew.epoch == 2
        assert crew.authenticator == ben_crew.authenticator == cyd_crew.authenticator != first
        assert len(crew.authenticator) == 32


# Messages


async def test_a_replayed_message_is_handed_over_once_also_after_a_restart(server: MaliciousServer) -> None:
    """The server publishes a message's sealed bytes again as a new room event: refused live, and after the
    receiving device restarts (its replay guard must outlive the process)."""
    async with person(server, "ann") as ann:
        async with person(server, "ben") as ben:
            crew = await channel_of(ann, ben)
            inbox = Inbox(await ben.space.join_channel(crew.space_id))
            await crew.send_message({"text": "m1"})
            await inbox.wait_for("m1")
            (m1,) = await ann.history(crew.space_id, event="message")
            await publish(server, crew.space_id, m1.data)  # the same sealed bytes, a new room event
            await crew.send_message({"text": "m2"})
            await inbox.wait_for("m2")
            assert inbox.texts == ["m1", "m2"]
            assert inbox.refused == [group.ReplayedGroupMessageError]

        async with Client(server.address, key_file=server.key_dir / "ben.json") as ben_again:
            restarted = Inbox(await ben_again.space.join_channel(crew.space_id))
            await publish(server, crew.space_id, m1.data)
            await crew.send_message({"text": "m3"})
            await restarted.wait_for("m3")
            assert restarted.texts == ["m3"]
            assert restarted.refused == [group.ReplayedGroupMessageError]


async def test_a_restarted_sender_is_not_taken_for_a_replay(server: MaliciousServer) -> None:
    """The other side of the guard: a sender that restarts must not reuse the counters it already sent with."""
    async with person(server, "ben") as ben:
        async with person(server, "ann") as ann:
            crew = await channel_of(ann, ben)
            inbox = Inbox(await ben.space.join_channel(crew.space_id))
            await crew.send_message({"text": "before the restart"})
            await inbox.wait_for("before the restart")
        async with Client(server.address, key_file=server.key_dir / "ann.json") as ann_again:
            await (await ann_again.space.join_channel(crew.space_id)).send_message({"text": "after the restart"})
            await inbox.handled(2)
        assert inbox.texts == ["before the restart", "after the restart"]
        assert inbox.refused == []


@pytest.mark.parametrize("forgery", ["another member's device", "a device of no member", "a signature flipped"])
async def test_a_message_with_a_forged_sender_is_rejected(server: MaliciousServer, forgery: str) -> None:
    """ben holds the epoch's keys and seals a message naming another device as its sender, signed with his own
    key (or the server flips a bit of ann's signature)."""
    async with people(server) as p:
        crew = await channel_of(p.ann, p.ben, p.cyd)
        ben_crew = await p.ben.space.join_channel(crew.space_id)
        inbox = Inbox(await p.cyd.space.join_channel(crew.space_id))
        if forgery == "a signature flipped":
            await crew.send_message({"text": "from ann"})
            await inbox.wait_for("from ann")
            (genuine,) = await p.ann.history(crew.space_id, event="message")
            forged = flip_last_bit(sealed_of(genuine.data))
        else:
            state = held_state(ben_crew)
            secret = base64.b64decode(
                (await p.ben._direct.ready()).state.get_json("channels", crew.space_id)["secrets"][str(state.epoch)]
            )
            ben_device, _ = await own_device(p.ben)
            named = p.ann if forgery == "another member's device" else p.dan
            forged = group.seal_group_message(
                group.epoch_keys(secret, crew.space_id, state.epoch, state.commit_hash),
                crew.space_id,
                state.epoch,
                dataclasses.replace(ben_device, device_id=named.device_id),
                p.ben.identity.device_signing_key,
                message_id=secrets.token_hex(16),
                content_type="message",
                counter=0,
                plaintext=b'{"text":"honestly from ann"}',
            )
        await publish(server, crew.space_id, {"sealed": base64.b64encode(forged).decode()})
        await crew.send_message({"text": "genuine"})
        await inbox.wait_for("genuine")
        assert inbox.texts[-1] == "genuine"
        assert "honestly from ann" not in inbox.texts
        assert inbox.refused == [group.ForgedGroupMessageError]
        assert {m.sender_user_id for m in inbox.messages} == {p.ann.user_id}


# Access


async def test_a_non_member_reads_nothing_of_the_channel(server: MaliciousServer) -> None:
    async with people(server) as p, channel_service(server) as channels:
        crew = await channel_of(p.ann, p.ben, p.cyd)
        handle = await crew.send_message({"text": "members only"})
        await crew.remove_member(p.cyd.user_id)
        for outsider in (p.dan, p.cyd):  # never added; removed
            await refused_every_read(outsider, crew.space_id, handle)
            metadata = await as_user(outsider)
            for call in (
                channels.ListCommits(channel_pb2.ListCommitsRequest(space_id=crew.space_id), metadata=metadata),
                channels.GetWraps(channel_pb2.GetWrapsRequest(space_id=crew.space_id), metadata=metadata),
            ):
                await refused(call, grpc.StatusCode.PERMISSION_DENIED, "NOT_A_MEMBER")
            with pytest.raises(PermissionDeniedError, match="NOT_A_MEMBER"):
                await outsider.space.join_channel(crew.space_id)
            assert crew.space_id not in [c.space_id for c in await outsider.space.list_channels()]
            found = await channels.GetChannel(channel_pb2.GetChannelRequest(space_id=crew.space_id), metadata=metadata)
            assert found.channel.epoch == 0, "only members see the epoch"
