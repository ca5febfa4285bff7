"""Sealed group channels in the SDK: `client.space.create_channel(name)`, `join_channel`, and the `Space` handle.

A channel's messages are events of its private room, each sealed once with
the epoch's key and signed by the sender's device (`parley.crypto.group`), so
the server stores and replays ciphertext and a message costs the same
whatever the member count. The room stream carries them, so they resume like
any room event. Members change by commits an admin signs (`add_member`,
`remove_member`); removing a member starts a new epoch whose secret only the
remaining devices get.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from parley.auth import Auth
from parley.channel_keys import ChannelKeys
from parley.crypto import group
from parley.crypto.errors import CryptoError, MalformedInputError
from parley.crypto.primitives import constant_time_equal
from parley.errors import NotFoundError, ParleyError, PermissionDeniedError
from parley.files import FileRef, Files, Media, Progress, media_body, read_media, sent_or_deleted
from parley.room.v1 import channel_pb2, channel_pb2_grpc
from parley.rooms import EventChange, Room, RoomEvent, Signal

if TYPE_CHECKING:
    from parley.direct_messages import DirectMessages

MESSAGE_EVENT = "message"
# Content types of sealed channel events.
MESSAGE = "message"
EDIT = "edit"
# Message authors remembered, to check that an edit comes from its message's author.
REMEMBERED_AUTHORS = 10_000
SPACE_ID_PREFIX = "sp-"
# How often a join that waits for an admin looks whether it was let in.
JOIN_POLL_SECONDS = 0.5


class ChannelNotFoundError(NotFoundError):
    """No channel by that name or space id (or you are not one of its members)."""


@dataclasses.dataclass(frozen=True)
class ChannelInfo:
    """A channel or space you are a member of (`client.space.list_channels()`)."""

    space_id: str
    name: str
    end_to_end: bool
    """False for keeper channels, whose keys a service of the app holds too."""
    epoch: int


@dataclasses.dataclass(frozen=True)
class ChannelMessage:
    """A decrypted channel message, its sender's device verified by signature."""

    space_id: str
    handle: str
    seq: int
    sender_user_id: str
    sender_device_id: str
    body: Any
    epoch: int
    time_ms: int
    edited: bool = False
    media: Media | None = None
    """The file the message carries (`Space.send_file`): fetch it with `space.get_file(message.media.file)`."""


@dataclasses.dataclass(frozen=True)
class ChannelSignal:
    space_id: str
    subject: str
    sender_user_id: str
    data: Any


@dataclasses.dataclass(frozen=True)
class InvitationCode:
    """An invitation: `code` (a link-sized text) and `auth_code` (8 digits), to hand over separately."""

    code: str
    auth_code: str = dataclasses.field(repr=False)


MessageHandler = Callable[[ChannelMessage], Awaitable[None] | None]
SignalHandler = Callable[[ChannelSignal], Awaitable[None] | None]
DeletedHandler = Callable[[str], Awaitable[None] | None]


class Spaces:
    """`client.space`: create, join and list channels and spaces."""

    def __init__(
        self, auth: Auth, direct: DirectMessages, join_room: Callable[[str], Awaitable[Room]], files: Files
    ) -> None:
        self._auth = auth
        self._direct = direct
        self._files = files
        self._join_room = join_room
        self._open: dict[str, Space] = {}

    @property
    def _stub(self) -> channel_pb2_grpc.ChannelServiceAsyncStub:
        return channel_pb2_grpc.ChannelServiceStub(self._auth.channel())

    async def create_channel(self, name: str, *, keeper: bool = False) -> Space:
        """A new end-to-end channel named `name` in the app's registry (ALREADY_EXISTS if taken); you are its admin.

        With `keeper=True` the app's keeper (a service identity) becomes an admin too and lets in everyone
        who asks to join, with nobody online: such a channel is NOT end to end against the operator, who
        holds the keeper's keys (`Space.end_to_end` and `list_channels` say so).
        """
        space = await self._create(name, keeper=keeper)
        if keeper:
            found = await self._auth.call(self._stub.GetKeeper, channel_pb2.GetKeeperRequest())
            await space.add_member(found.user_id, admin=True)
        return space

    async def create_space(self) -> Space:
        """A new space: a channel with no name, shared by its `space_id`."""
        return await self._create("")

    async def join_channel(self, name_or_space_id: str, *, wait: float = 0.0) -> Space:
        """Opens a channel or space you are a member of: verifies its commit chain, takes the epoch secrets
        wrapped for this device and joins its room. `ChannelNotFoundError` when there is none by that name.

        Not a member yet: asks its admins to add you (`on_join_request` on their side) and waits up to
        `wait` seconds for one of them to do so; `PermissionDeniedError` (NOT_A_MEMBER) if none did by then.
        """
        key = "space_id" if name_or_space_id.startswith(SPACE_ID_PREFIX) else "name"
        try:
            found = await self._auth.call(
                self._stub.GetChannel, channel_pb2.GetChannelRequest(**{key: name_or_space_id})
            )
        except NotFoundError as error:
            raise ChannelNotFoundError(error.code, error.reason, error.message, error.metadata) from None
        space_id = found.channel.space_id
        if key == "space_id" and space_id != name_or_space_id:
            raise group.BrokenChainError(f"asked for {name_or_space_id!r}, the service answered with {space_id!r}")
        if not await self._is_member(space_id):
            await self._auth.call(self._stub.RequestJoin, channel_pb2.RequestJoinRequest(space_id=space_id))
            deadline = time.monotonic() + wait
            while not await self._is_member(space_id):
                if time.monotonic() >= deadline:
                    raise PermissionDeniedError(
                        grpc.StatusCode.PERMISSION_DENIED,
                        "NOT_A_MEMBER",
                        f"not a member of {name_or_space_id!r} yet: its admins were asked to add you",
                    )
                await asyncio.sleep(JOIN_POLL_SECONDS)
        return await self._opened(found.channel)

    async def _is_member(self, space_id: str) -> bool:
        return any(c.space_id == space_id for c in await self.list_channels())

    async def committed(self, space_id: str) -> None:
        """A channel moved to a new epoch: an open one reads the commit (and its wrap) before it sends again."""
        space = self._open.get(space_id)
        if space is not None:
            await space.sync()

    def join_requested(self, space_id: str, user_id: str) -> None:
        """A user asks to join an open channel: its `on_join_request` handlers hear of it."""
        space = self._open.get(space_id)
        if space is not None:
            space.join_requested(user_id)

    async def accept_invitation(self, code: str, auth_code: str) -> Space:
        """Joins the channel an invitation code is for, with the 8-digit auth code given apart from it.

        A wrong auth code raises `PermissionDeniedError` (INVITATION_INVALID), and the third burns the
        invitation; so do an expired or used-up one. The package the inviter sealed proves an admin of the
        channel (the one the code names) invited you; your device then commits itself into a new epoch.
        """
        invitation = group.Invitation.from_text(code)
        verifier = group.invitation_verifier(invitation.secret, auth_code, invitation.invite_id)
        request = channel_pb2.RedeemInvitationRequest(
            space_id=invitation.channel_id, invite_id=invitation.invite_id, verifier=verifier
        )
        redeemed = await self._auth.call(self._stub.RedeemInvitation, request)
        ticket = group.SignedTicket.from_bytes(group.open_invitation_package(invitation, auth_code, redeemed.package))
        parts = await self._direct.ready()
        keys = ChannelKeys(self._auth, parts.state, parts.own, invitation.channel_id)
        await keys.sync()
        inviter = keys.roster.device(ticket.signer_device_id)
        if inviter is None or not constant_time_equal(
            group.admitter_key_hash(inviter.signing_key), invitation.admitter_key_hash
        ):
            raise group.InvalidInvitationError("the invitation was not made by the admin device its code names")
        if not keys.holds_commit(invitation.chain_hash):
            raise group.InvalidInvitationError("the channel's chain is not the one the invitation was made in")
        me = await parts.trust.peer(self._auth.identity.user_id, refresh=True)
        guest = keys.member(me.user_id, me.user_signing_key, me.devices, group.MEMBER)
        channel = await keys.commit(
            lambda roster: _with(roster, guest),
            admission="invitation",
            prove=lambda latest: group.invitation_proof(
                ticket, invitation, latest.epoch + 1, latest.commit_hash, me.user_id
            ),
        )
        return await self._opened(channel, keys)

    async def list_channels(self) -> list[ChannelInfo]:
        """Your channels and spaces: name (empty for a space), space id, whether end to end."""
        listed = await self._auth.call(self._stub.ListChannels, channel_pb2.ListChannelsRequest())
        return [_info(c) for c in listed.channels]

    async def list_spaces(self) -> list[ChannelInfo]:
        """Your spaces (channels without a name)."""
        return [c for c in await self.list_channels() if not c.name]

    async def _create(self, name: str, *, keeper: bool = False) -> Space:
        parts = await self._direct.ready()
        space_id = SPACE_ID_PREFIX + secrets.token_hex(16)
        keys = ChannelKeys(self._auth, parts.state, parts.own, space_id)
        me = await parts.trust.peer(self._auth.identity.user_id, refresh=True)
        roster = group.Roster((keys.member(me.user_id, me.user_signing_key, me.devices, group.ADMIN),))
        kind = channel_pb2.CHANNEL_KIND_KEEPER if keeper else channel_pb2.CHANNEL_KIND_E2E
        channel = await keys.create(roster, name, group.MEMBERS_SINCE_JOIN, kind)
        return await self._opened(channel, keys)

    async def _opened(self, channel: channel_pb2.Channel, keys: ChannelKeys | None = None) -> Space:
        space = self._open.get(channel.space_id)
        if space is None:
            parts = await self._direct.ready()
            keys = keys or ChannelKeys(self._auth, parts.state, parts.own, channel.space_id)
            await keys.sync()
            await self._bring_own_devices(keys)
            room = await self._join_room(channel.space_id)
            space = Space(channel, keys, room, self._direct, self._auth, self._files)
            self._open[channel.space_id] = space
        return space

    async def _bring_own_devices(self, keys: ChannelKeys) -> None:
        """A member's device the roster lacks (added since) commits itself in: a new epoch for every device,
        which needs nobody online; devices the user revoked since leave the roster the same way."""
        own = self._auth.identity
        member = keys.roster.member(own.user_id)
        if member is None or keys.roster.device(own.device_id) is not None:
            return
        parts = await self._direct.ready()
        me = await parts.trust.peer(own.user_id, refresh=True)
        updated = keys.member(own.user_id, me.user_signing_key, me.devices, member.role)
        await keys.commit(lambda roster: _with(_without(roster, own.user_id), updated), admission="device")


class Space:
    """One channel or space, opened: send and read its sealed messages, manage its members."""

    def __init__(
        self,
        channel: channel_pb2.Channel,
        keys: ChannelKeys,
        room: Room,
        direct: DirectMessages,
        auth: Auth,
        files: Files,
    ) -> None:
        self._auth = auth
        self._files = files
        self.space_id = channel.space_id
        self.name = channel.name
        self.end_to_end = channel.kind != channel_pb2.CHANNEL_KIND_KEEPER
        self._keys = keys
        self._room = room
        self._direct = direct
        self._message_handlers: list[MessageHandler] = []
        self._edited_handlers: list[MessageHandler] = []
        self._deleted_handlers: list[DeletedHandler] = []
        self._signal_handlers: list[SignalHandler] = []
        self._join_handlers: list[Callable[[str], Any]] = []
        self._authors: OrderedDict[str, str] = OrderedDict()
        self.rejected: list[tuple[int, CryptoError]] = []
        """(seq, error) of events that did not open or verify (forged, replayed, or of an epoch not held)."""
        room.on(MESSAGE_EVENT, self._on_event)
        room.on_edited(self._on_change)
        room.on_deleted(self._on_change)
        room.on_ephemeral(self._on_signal)

    @property
    def epoch(self) -> int:
        """The newest epoch this device holds the secret of: the one its messages are sealed in."""
        return self._keys.sealing_epoch or 0

    @property
    def authenticator(self) -> bytes:
        """The current epoch's authenticator: the same on every member device that holds the epoch."""
        return self._keys.authenticator()

    async def send_message(self, body: Any) -> str:
        """Seals `body` (any JSON value) for the channel and publishes it; returns the message's handle."""
        published = await self._room.trigger(MESSAGE_EVENT, await self._sealed_now(MESSAGE, body))
        return published.handle

    async def put_file(
        self,
        source: bytes | Path | str,
        *,
        name: str | None = None,
        media_type: str | None = None,
        progress: Progress | None = None,
    ) -> FileRef:
        """Encrypts and uploads a file (bytes or a path, read as it is sent) without sending a message. To share
        it, prefer `send_file`; to send the reference yourself, send `media_body(Media(ref))` (parley.files),
        which readers get as `message.media`, checked to come from its uploader. Needs no realtime stream."""
        return await self._files.put(source, name=name, media_type=media_type, progress=progress)

    async def get_file(
        self, ref: FileRef | Media, *, path: Path | str | None = None, progress: Progress | None = None
    ) -> Any:
        """A file's decrypted bytes, or with `path` the path it was written to (streamed); every chunk checked."""
        return await self._files.get(ref.file if isinstance(ref, Media) else ref, path=path, progress=progress)

    async def send_file(
        self,
        source: bytes | Path | str,
        *,
        name: str | None = None,
        media_type: str | None = None,
        caption: str = "",
        thumbnail: bool = True,
        progress: Progress | None = None,
    ) -> str:
        """Uploads a file (`put_file`) and sends a sealed message carrying its reference, key, caption and (for
        an image) a thumbnail; members find them in `ChannelMessage.media`. Returns the message's handle."""
        media = await self._files.put_media(
            source, name=name, media_type=media_type, caption=caption, thumbnail=thumbnail, progress=progress
        )
        return await sent_or_deleted(self._files, media, self.send_message(media_body(media)))

    async def edit_message(self, handle: str, body: Any) -> None:
        """Replaces the body of a message you sent (NOT_AUTHOR otherwise); members get it sealed anew."""
        await self._room.edit(handle, await self._sealed_now(EDIT, {"edit_of": handle, "body": body}))

    async def delete_message(self, handle: str) -> None:
        """Deletes a message you sent (NOT_AUTHOR otherwise)."""
        await self._room.delete(handle)

    async def send_ephemeral(self, subject: str, data: Any = None) -> None:
        """A signal (typing, a cursor) to the members online now, sealed too, never stored."""
        await self._room.send_ephemeral(subject, await self._sealed_now(subject, data, signal=True))

    def on_message(self, handler: MessageHandler) -> None:
        self._message_handlers.append(handler)

    def on_message_edited(self, handler: MessageHandler) -> None:
        self._edited_handlers.append(handler)

    def on_message_deleted(self, handler: DeletedHandler) -> None:
        """Calls `handler(handle)` when a message is deleted by its author."""
        self._deleted_handlers.append(handler)

    def on_ephemeral(self, handler: SignalHandler) -> None:
        self._signal_handlers.append(handler)

    def on_join_request(self, handler: Callable[[str], Any]) -> None:
        """Calls `handler(user_id)` when a user asks to join; an admin adds them with `add_member`."""
        self._join_handlers.append(handler)

    async def join_requests(self) -> list[str]:
        """Users waiting to be added, oldest request first."""
        stub: channel_pb2_grpc.ChannelServiceAsyncStub = channel_pb2_grpc.ChannelServiceStub(self._auth.channel())
        listed = await self._auth.call(
            stub.ListJoinRequests, channel_pb2.ListJoinRequestsRequest(space_id=self.space_id)
        )
        return [r.user_id for r in listed.requests]

    def join_requested(self, user_id: str) -> None:
        for handler in self._join_handlers:
            result = handler(user_id)
            if asyncio.iscoroutine(result):
                asyncio.get_running_loop().create_task(result)

    async def history(self, *, limit: int = 50, before: int = 0) -> list[ChannelMessage]:
        """Kept messages, newest first, decrypted; those of epochs this device never held are left out
        (a member reads from the epoch it joined)."""
        opened = []
        for event in await self._room.history(limit=limit, before=before, event=MESSAGE_EVENT):
            message = self._open(event.handle, event.seq, event.data, event.time_ms, replay_check=False)
            if message is not None:
                opened.append(message)
        return opened

    async def create_invitation(self, *, uses: int = 1, expires_in: float = 86_400.0) -> InvitationCode:
        """An invitation for up to `uses` guests, valid `expires_in` seconds (you must be an admin).

        Give the code and the auth code to the guest by different channels: the code alone admits nobody,
        and three wrong auth codes burn it. The service keeps only a verifier and a sealed package.
        """
        parts = await self._direct.ready()
        own = parts.own.keys
        await self._keys.sync()
        latest = self._keys.latest
        assert latest is not None  # an opened channel holds its chain
        invitation = group.Invitation.generate(
            self.space_id,
            secrets.token_urlsafe(12),
            group.admitter_key_hash(own.device_signing_key),
            chain_hash=latest.commit_hash,
        )
        code = group.auth_code()
        ticket = group.sign_ticket(invitation, uses, own.device_id, self._auth.identity.device_signing_key)
        request = channel_pb2.CreateInvitationRequest(
            space_id=self.space_id,
            invite_id=invitation.invite_id,
            verifier=group.invitation_verifier(invitation.secret, code, invitation.invite_id),
            package=group.seal_invitation_package(invitation, code, ticket.to_bytes()),
            uses=uses,
            expire_time_ms=int((time.time() + expires_in) * 1000),
        )
        stub: channel_pb2_grpc.ChannelServiceAsyncStub = channel_pb2_grpc.ChannelServiceStub(self._auth.channel())
        await self._auth.call(stub.CreateInvitation, request)
        return InvitationCode(invitation.to_text(), code)

    async def members(self) -> list[group.Member]:
        """The committed roster: users, roles and devices (as this device verified the chain)."""
        await self._keys.sync()
        return list(self._keys.roster.members)

    async def add_member(self, user_id: str, *, admin: bool = False) -> None:
        """Adds a user (with every device their key vouches for) in a new epoch; you must be an admin."""
        parts = await self._direct.ready()
        peer = await parts.trust.peer(user_id, refresh=True)
        role = group.ADMIN if admin else group.MEMBER
        added = self._keys.member(peer.user_id, peer.user_signing_key, peer.devices, role)
        await self._keys.sync()
        if self._keys.roster.member(user_id) is not None:
            raise ValueError(f"{user_id!r} is a member already")
        vouched = await self._vouched()
        await self._keys.commit(lambda roster: _pruned(_with(_without(roster, user_id), added), vouched))

    async def remove_member(self, user_id: str) -> None:
        """Removes a user in a new epoch with a fresh secret for the remaining devices: their connections
        leave the room at once and they cannot read what is sent from now on (they keep what they read)."""
        await self._keys.sync()
        if self._keys.roster.member(user_id) is None:
            raise ValueError(f"{user_id!r} is not a member")
        vouched = await self._vouched()
        await self._keys.commit(lambda roster: _pruned(_without(roster, user_id), vouched))

    async def _vouched(self) -> dict[str, set[str]]:
        """Each member's devices their user key vouches for now (their signed device list): a commit drops the
        others (revoked since), so they get no secret of the new epoch."""
        parts = await self._direct.ready()
        vouched: dict[str, set[str]] = {}
        for member in self._keys.roster.members:
            try:
                peer = await parts.trust.peer(member.user_id, refresh=True)
            except (CryptoError, ParleyError):
                continue  # unknown now (a changed key, the service away): the member's devices stay as they are
            vouched[member.user_id] = {d.device_id for d in peer.devices}
        return vouched

    async def sync(self) -> None:
        """Reads commits made by others (also done when a message of an unknown epoch arrives)."""
        await self._keys.sync()

    async def _sealed_now(self, content_type: str, body: Any, *, signal: bool = False) -> dict[str, str]:
        """Sealed once a sync under way (a commit notice) is done, its counter on disk."""
        await self._keys.settled()
        sealed = self._sealed(content_type, body, signal=signal)
        await self._keys.persist()  # its counter is on disk before it leaves: a restart never reuses it
        return sealed

    def _sealed(self, content_type: str, body: Any, *, signal: bool = False) -> dict[str, str]:
        plaintext = json.dumps(body, separators=(",", ":")).encode()
        sealed = self._keys.seal(content_type, plaintext, signal=signal)
        return {"sealed": base64.b64encode(sealed).decode()}

    def _open(
        self, handle: str, seq: int, data: Any, time_ms: int, *, replay_check: bool = True
    ) -> ChannelMessage | None:
        """The message (or its latest edit) of an event, or None (recorded in `rejected`) when it does not open,
        verify, or belong where it is: an edit names the message it edits and comes from that message's author."""
        try:
            opened = self._keys.open(_sealed_bytes(data), replay_check=replay_check)
            body = json.loads(opened.plaintext)
            edited = opened.content_type == EDIT
            if edited:
                body = self._edit_body(handle, opened.sender_device_id, body)
            elif opened.content_type != MESSAGE:
                raise MalformedInputError(f"a channel event of content type {opened.content_type!r}")
            media = read_media(body, opened.sender_device_id)
        except (CryptoError, ValueError, RecursionError) as error:
            self.rejected.append((seq, error if isinstance(error, CryptoError) else MalformedInputError(str(error))))
            return None
        if not edited:
            self._authors[handle] = opened.sender_device_id
            while len(self._authors) > REMEMBERED_AUTHORS:
                self._authors.popitem(last=False)
        return ChannelMessage(
            self.space_id,
            handle,
            seq,
            opened.sender_user_id,
            opened.sender_device_id,
            body,
            opened.epoch,
            time_ms,
            edited,
            media,
        )

    def _edit_body(self, handle: str, editor_device_id: str, sealed: Any) -> Any:
        if not isinstance(sealed, dict) or sealed.get("edit_of") != handle or "body" not in sealed:
            raise group.ForgedGroupMessageError("an edit sealed for another message")
        author = self._authors.get(handle)
        if author is not None and author != editor_device_id:
            raise group.ForgedGroupMessageError("an edit by another device than the message's author")
        return sealed["body"]

    async def _on_event(self, event: RoomEvent) -> None:
        if not self._epoch_held(event.data):
            await self._keys.sync()  # a commit this device has not read yet
        message = self._open(event.handle, event.seq, event.data, event.time_ms)
        if message is not None:
            await self._keys.persist()  # its counter is seen, also after a restart
            for handler in self._message_handlers:
                result = handler(message)
                if result is not None:
                    await result

    async def _on_change(self, change: EventChange) -> None:
        if change.deleted:
            for deleted in self._deleted_handlers:
                result = deleted(change.handle)
                if result is not None:
                    await result
            return
        message = self._open(change.handle, change.seq, change.data, change.time_ms, replay_check=False)
        if message is not None and message.edited:
            for handler in self._edited_handlers:
                result = handler(message)
                if result is not None:
                    await result

    async def _on_signal(self, signal: Signal) -> None:
        if signal.expired:
            return
        try:
            opened = self._keys.open(_sealed_bytes(signal.data), signal=True)
            data = json.loads(opened.plaintext)
        except (CryptoError, ValueError, RecursionError):
            return
        await self._keys.persist()
        received = ChannelSignal(self.space_id, signal.subject, opened.sender_user_id, data)
        for handler in self._signal_handlers:
            result = handler(received)
            if result is not None:
                await result

    def _epoch_held(self, data: Any) -> bool:
        try:
            return self._keys.knows_epoch(group.read_group_header(_sealed_bytes(data)).epoch)
        except (CryptoError, ValueError):
            return True  # nothing to fetch for it: opening reports why it fails


def _sealed_bytes(data: Any) -> bytes:
    if not isinstance(data, dict) or not isinstance(data.get("sealed"), str):
        raise MalformedInputError("not a sealed channel message")
    return base64.b64decode(data["sealed"], validate=True)


def _info(channel: channel_pb2.Channel) -> ChannelInfo:
    return ChannelInfo(channel.space_id, channel.name, channel.kind != channel_pb2.CHANNEL_KIND_KEEPER, channel.epoch)


def _with(roster: group.Roster, member: group.Member) -> group.Roster:
    return group.Roster(tuple(sorted((*roster.members, member), key=lambda m: m.user_id)))


def _without(roster: group.Roster, user_id: str) -> group.Roster:
    return group.Roster(tuple(m for m in roster.members if m.user_id != user_id))


def _pruned(roster: group.Roster, vouched: dict[str, set[str]]) -> group.Roster:
    """The roster without devices their users' keys no longer vouch for (a member keeps at least one device)."""
    members = []
    for member in roster.members:
        kept = tuple(d for d in member.devices if d.device_id in vouched.get(member.user_id, {d.device_id}))
        members.append(dataclasses.replace(member, devices=kept) if kept else member)
    return group.Roster(tuple(members))
