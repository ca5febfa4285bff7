"""ChannelService: sealed group channels, checked and stored by the room service, which holds no epoch secret.

A channel is a private room plus its commit chain. The service verifies
every commit with the clients' own rules (`parley.crypto.group`: the chain,
the signatures, who may change what) and that the caller's device signed
it, then keeps the room's members equal to the committed roster: users a
commit drops lose the room (and its history) before the commit is stored,
users it adds gain it once stored. Wraps are stored as given and handed to
their device only.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import defaultdict
from collections.abc import Sequence

import grpc

from parley.api.v1 import errors_pb2
from parley.crypto.errors import CryptoError
from parley.crypto.group import (
    ChannelState,
    MemberDevice,
    Roster,
    SignedCommit,
    SignedWrap,
    read_invitation_proof,
    verify_commit,
    verify_commit_wraps,
    verify_signed_wrap,
    wrap_digest,
)
from parley.crypto.primitives import HASH_BYTES, constant_time_equal
from parley.room.v1 import channel_pb2, channel_pb2_grpc, room_pb2
from services.room.keeper import Keeper
from services.room.members import ADMIN, MEMBER, RoomMembers, not_a_member
from services.room.membership import Membership
from services.room.registry import RoomRegistry
from services.room.storage import ChannelRow, CommitRow, InvitationRow, RoomStorage, WrapRow
from services.runtime.errors import ServiceError, already_exists, invalid_field, not_found, permission_denied
from services.runtime.grpc_types import Context
from services.runtime.principal import Principal, current_principal

NAME = re.compile(r"[a-z0-9_.-]{1,64}")
SPACE_ID = re.compile(r"sp-[0-9a-f]{32}")
# Admissions a Commit may carry; "invitation" also needs a redeemed invitation of the caller's.
CHECKED_ADMISSIONS = ("admin", "device", "invitation")
INVITE_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_PACKAGE_BYTES = 64 * 1024
MAX_INVITATION_USES = 1000
# Wrong auth codes that burn an invitation.
BURN_AFTER = 3


def invitation_invalid(why: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, errors_pb2.ERROR_REASON_INVITATION_INVALID, why)


def channel_not_found(what: str) -> ServiceError:
    return not_found(errors_pb2.ERROR_REASON_CHANNEL_NOT_FOUND, f"no channel {what}")


class ChannelServicer(channel_pb2_grpc.ChannelServiceServicer):
    def __init__(
        self,
        storage: RoomStorage,
        registry: RoomRegistry,
        members: RoomMembers,
        membership: Membership,
        keeper: Keeper,
    ) -> None:
        self._keeper = keeper
        # One commit at a time per channel: verify, drop, store and follow the roster as one step.
        self._committing: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._storage = storage
        self._registry = registry
        self._members = members
        self._membership = membership

    async def CreateChannel(
        self, request: channel_pb2.CreateChannelRequest, context: Context
    ) -> channel_pb2.CreateChannelResponse:
        caller = _user(current_principal())
        if request.name and not NAME.fullmatch(request.name):
            raise invalid_field("name", "must be 1–64 characters of a-z, 0-9, '_', '.' and '-'")
        if request.kind not in (channel_pb2.CHANNEL_KIND_E2E, channel_pb2.CHANNEL_KIND_KEEPER):
            raise invalid_field("kind", "must be CHANNEL_KIND_E2E or CHANNEL_KIND_KEEPER")
        signed = _signed(request.commit)
        state = _verified(None, signed)
        _signed_by_caller(state, signed, caller)
        if not SPACE_ID.fullmatch(state.channel_id):
            raise invalid_field("commit", "the channel id must be 'sp-' and 32 hex digits")
        wraps = _wraps(request.wraps)
        _wraps_match(signed, wraps)
        space_id = state.channel_id
        row = ChannelRow(space_id, request.name, request.kind, caller.user_id, _now_ms(), 0, state.to_bytes())
        commit = CommitRow(space_id, 0, signed.commit_bytes, signed.signature)

        async def store_channel() -> None:
            if not await self._storage.insert_channel(row, commit, _rows(space_id, 0, wraps)):
                raise already_exists(
                    errors_pb2.ERROR_REASON_CHANNEL_EXISTS, f"a channel named {request.name!r} exists already"
                )
            await self._members.open(space_id, caller.user_id)

        room = room_pb2.Room(
            room_id=space_id,
            name=request.name,
            creator=caller.user_id,
            visibility=room_pb2.ROOM_VISIBILITY_PRIVATE,
            events=[room_pb2.EventDefinition(name="*", history=room_pb2.HistoryPolicy(enabled=True))],
            default_subscriptions=["*"],
        )
        await self._registry.create(room, 0, store_channel)
        await self._follow_roster(space_id, state)
        return channel_pb2.CreateChannelResponse(channel=_channel(row, member=True))

    async def GetChannel(
        self, request: channel_pb2.GetChannelRequest, context: Context
    ) -> channel_pb2.GetChannelResponse:
        caller = current_principal()
        if bool(request.name) == bool(request.space_id):
            raise invalid_field("name", "give a name or a space id")
        row = await self._storage.channel(space_id=request.space_id, name=request.name)
        if row is None:
            raise channel_not_found(repr(request.name or request.space_id))
        return channel_pb2.GetChannelResponse(channel=_channel(row, member=self._may_read(row.space_id, caller)))

    async def ListChannels(
        self, request: channel_pb2.ListChannelsRequest, context: Context
    ) -> channel_pb2.ListChannelsResponse:
        caller = current_principal()
        rows = [row for row in await self._storage.all_channels() if self._may_read(row.space_id, caller)]
        return channel_pb2.ListChannelsResponse(
            channels=[_channel(row, member=True) for row in sorted(rows, key=lambda r: (r.name, r.space_id))]
        )

    async def ListCommits(
        self, request: channel_pb2.ListCommitsRequest, context: Context
    ) -> channel_pb2.ListCommitsResponse:
        await self._member_channel(request.space_id, guests=True)
        commits = await self._storage.commits(request.space_id, request.from_epoch)
        return channel_pb2.ListCommitsResponse(
            commits=[channel_pb2.SignedCommit(commit=c.commit, signature=c.signature) for c in commits]
        )

    async def Commit(self, request: channel_pb2.CommitRequest, context: Context) -> channel_pb2.CommitResponse:
        caller = _user(current_principal())
        await self._member_channel(request.space_id, guests=True)
        async with self._committing[request.space_id]:
            row = await self._member_channel(request.space_id, guests=True)
            signed = _signed(request.commit)
            if _epoch_of(signed) <= row.epoch:
                raise _taken(row.epoch)
            state = _verified(ChannelState.from_bytes(row.state), signed)
            admission = signed.commit().admission
            if admission not in CHECKED_ADMISSIONS:
                raise invalid_field("commit", f"admission must be one of {CHECKED_ADMISSIONS} in a Commit")
            _signed_by_caller(state, signed, caller)
            invite_id = ""
            if admission == "invitation":  # the guest's own commit: it must have redeemed that invitation
                invite_id = read_invitation_proof(signed.commit().proof)[1].invite_id
                if not await self._storage.has_grant(row.space_id, caller.user_id, invite_id, _now_ms()):
                    raise invitation_invalid("redeem the invitation (RedeemInvitation) before committing with it")
            elif not self._members.is_member(row.space_id, caller.user_id):
                raise not_a_member(row.space_id)
            wraps = _wraps(request.wraps)
            _wraps_match(signed, wraps)
            new_row = await self._store_commit(row, state, signed, wraps)
            if invite_id:
                await self._storage.use_grant(row.space_id, invite_id, caller.user_id)
        return channel_pb2.CommitResponse(channel=_channel(new_row, member=True))

    async def _store_commit(
        self, row: ChannelRow, state: ChannelState, signed: SignedCommit, wraps: dict[str, bytes]
    ) -> ChannelRow:
        """Keeps a verified commit: who leaves loses the room before it is kept, who joins gains it after."""
        await self._drop_missing(row.space_id, state)
        new_row = ChannelRow(
            row.space_id, row.name, row.kind, row.creator, row.created_ms, state.epoch, state.to_bytes()
        )
        commit = CommitRow(row.space_id, state.epoch, signed.commit_bytes, signed.signature)
        if not await self._storage.append_commit(new_row, commit, _rows(row.space_id, state.epoch, wraps)):
            raise _taken(state.epoch)
        await self._follow_roster(row.space_id, state)
        self._registry.channel_committed(self._registry.get(row.space_id))
        return new_row

    async def GetWraps(self, request: channel_pb2.GetWrapsRequest, context: Context) -> channel_pb2.GetWrapsResponse:
        caller = _user(current_principal())
        await self._member_channel(request.space_id, guests=True)
        every = await self._storage.wraps(request.space_id, request.from_epoch)
        digests: dict[int, dict[str, bytes]] = {}
        for wrap in every:
            if not wrap.signed:
                digests.setdefault(wrap.epoch, {})[wrap.device_id] = wrap_digest(wrap.wrap)
        mine = [w for w in every if w.device_id == caller.device_id]
        return channel_pb2.GetWrapsResponse(
            wraps=[
                channel_pb2.EpochWrap(epoch=w.epoch, signed_wrap=w.wrap)
                if w.signed
                else channel_pb2.EpochWrap(epoch=w.epoch, wrap=w.wrap, digests=digests[w.epoch])
                for w in mine
            ]
        )

    async def AddWraps(self, request: channel_pb2.AddWrapsRequest, context: Context) -> channel_pb2.AddWrapsResponse:
        caller = _user(current_principal())
        row = await self._member_channel(request.space_id)
        state = ChannelState.from_bytes(row.state)
        rows = []
        for i, data in enumerate(request.signed_wraps):
            try:
                signed = SignedWrap.from_bytes(data)
                verify_signed_wrap(state, signed)
            except CryptoError as error:
                raise invalid_field(f"signed_wraps[{i}]", str(error)) from None
            if signed.signer_device_id != caller.device_id:
                raise invalid_field(f"signed_wraps[{i}]", "must be signed by your own device")
            rows.append(WrapRow(row.space_id, signed.epoch, signed.recipient_device_id, data, True))
        await self._storage.add_wraps(rows)
        return channel_pb2.AddWrapsResponse()

    async def CreateInvitation(
        self, request: channel_pb2.CreateInvitationRequest, context: Context
    ) -> channel_pb2.CreateInvitationResponse:
        caller = _user(current_principal())
        row = await self._member_channel(request.space_id)
        if not ChannelState.from_bytes(row.state).roster.is_admin(caller.device_id):
            raise permission_denied(errors_pb2.ERROR_REASON_NOT_ADMIN, "only an admin's device invites")
        if not INVITE_ID.fullmatch(request.invite_id):
            raise invalid_field("invite_id", "must be 1–64 characters of A-Z, a-z, 0-9, '_' and '-'")
        if len(request.verifier) != HASH_BYTES:
            raise invalid_field("verifier", f"must be {HASH_BYTES} bytes")
        if not 0 < len(request.package) <= MAX_PACKAGE_BYTES:
            raise invalid_field("package", f"must be 1–{MAX_PACKAGE_BYTES} bytes")
        if not 0 < request.uses <= MAX_INVITATION_USES:
            raise invalid_field("uses", f"must be 1–{MAX_INVITATION_USES}")
        if request.expire_time_ms <= _now_ms():
            raise invalid_field("expire_time_ms", "must be in the future")
        invitation = InvitationRow(
            row.space_id,
            request.invite_id,
            request.verifier,
            request.package,
            request.uses,
            request.expire_time_ms,
            0,
            False,
            caller.user_id,
        )
        if not await self._storage.insert_invitation(invitation):
            raise invalid_field("invite_id", "the channel has an invitation with that id")
        return channel_pb2.CreateInvitationResponse()

    async def RedeemInvitation(
        self, request: channel_pb2.RedeemInvitationRequest, context: Context
    ) -> channel_pb2.RedeemInvitationResponse:
        caller = _user(current_principal())
        row = await self._storage.channel(space_id=request.space_id) if request.space_id else None
        invitation = await self._storage.invitation(request.space_id, request.invite_id) if row else None
        if row is None or invitation is None:
            raise channel_not_found(f"invitation {request.invite_id!r} in {request.space_id!r}")
        if invitation.burned:
            raise invitation_invalid("this invitation was burned by wrong auth codes")
        if not constant_time_equal(invitation.verifier, request.verifier):
            await self._storage.count_failure(row.space_id, invitation.invite_id, BURN_AFTER)
            left = BURN_AFTER - invitation.failures - 1
            raise invitation_invalid(
                "wrong auth code; " + (f"{left} more tries" if left > 0 else "the invitation is burned now")
            )
        if not await self._storage.take_use(row.space_id, invitation.invite_id, caller.user_id, _now_ms()):
            raise invitation_invalid("this invitation has expired or admitted as many guests as it may")
        return channel_pb2.RedeemInvitationResponse(channel=_channel(row, member=False), package=invitation.package)

    async def RequestJoin(
        self, request: channel_pb2.RequestJoinRequest, context: Context
    ) -> channel_pb2.RequestJoinResponse:
        caller = _user(current_principal())
        row = await self._storage.channel(space_id=request.space_id) if request.space_id else None
        if row is None:
            raise channel_not_found(repr(request.space_id))
        if self._members.is_member(row.space_id, caller.user_id):
            raise invalid_field("space_id", "you are a member already")
        await self._storage.put_join_request(row.space_id, caller.user_id, _now_ms())
        if row.kind == channel_pb2.CHANNEL_KIND_KEEPER and await self._keeper_admits(row, caller.user_id):
            return channel_pb2.RequestJoinResponse()
        self._registry.join_requested(self._registry.get(row.space_id), caller.user_id)
        return channel_pb2.RequestJoinResponse()

    async def GetKeeper(self, request: channel_pb2.GetKeeperRequest, context: Context) -> channel_pb2.GetKeeperResponse:
        return channel_pb2.GetKeeperResponse(user_id=await self._keeper.user_id())

    async def _keeper_admits(self, row: ChannelRow, user_id: str) -> bool:
        """The keeper adds the user, if it is an admin of the channel; False when it is not (yet)."""
        device = await self._keeper.device()
        async with self._committing[row.space_id]:
            current = await self._storage.channel(space_id=row.space_id)
            assert current is not None
            return await self._keeper_commits(current, user_id, device)

    async def _keeper_commits(self, row: ChannelRow, user_id: str, device: MemberDevice) -> bool:
        state = ChannelState.from_bytes(row.state)
        if not state.roster.is_admin(device.device_id):
            return False
        try:
            joining = await self._keeper.member(user_id)
        except CryptoError as error:
            raise invalid_field("authorization", f"your keys do not check out: {error}") from None
        if not joining.devices:
            raise invalid_field("authorization", "none of your devices is vouched for by your user key")
        roster = Roster(tuple(sorted((*state.roster.members, joining), key=lambda m: m.user_id)))
        committed = await self._keeper.commit(state, roster)
        await self._store_commit(row, committed.epoch.state, committed.signed, dict(committed.wraps))
        return True

    async def ListJoinRequests(
        self, request: channel_pb2.ListJoinRequestsRequest, context: Context
    ) -> channel_pb2.ListJoinRequestsResponse:
        row = await self._member_channel(request.space_id)
        requests = await self._storage.join_requests(row.space_id)
        return channel_pb2.ListJoinRequestsResponse(
            requests=[channel_pb2.JoinRequest(user_id=u, request_time_ms=t) for u, t in requests]
        )

    async def reconcile(self) -> None:
        """At start: every channel's room members are its latest roster's users (a change that stopped half
        way, e.g. the history service away after the commit was kept, is finished)."""
        for row in await self._storage.all_channels():
            await self._follow_roster(row.space_id, ChannelState.from_bytes(row.state))

    async def _member_channel(self, space_id: str, *, guests: bool = False) -> ChannelRow:
        """The channel, if the caller is a member (or, with `guests`, redeemed an invitation to it)."""
        row = await self._storage.channel(space_id=space_id) if space_id else None
        if row is None:
            raise channel_not_found(repr(space_id))
        caller = current_principal()
        guest = guests and await self._storage.has_grant(space_id, caller.user_id, now_ms=_now_ms())
        if not self._may_read(space_id, caller) and not guest:
            raise not_a_member(space_id)
        return row

    def _may_read(self, space_id: str, caller: Principal) -> bool:
        return caller.is_service or self._members.is_member(space_id, caller.user_id)

    async def _drop_missing(self, space_id: str, state: ChannelState) -> None:
        stays = {member.user_id for member in state.roster.members}
        gone = [m.user_id for m in self._members.members(space_id) if m.user_id not in stays]
        removed = await self._members.remove(space_id, gone)
        for user_id in removed:
            self._membership.leave(space_id, user_id, None)
        if removed:
            self._registry.members_removed(self._registry.get(space_id), removed)

    async def _follow_roster(self, space_id: str, state: ChannelState) -> None:
        """The room's members become the roster's users, with their roles."""
        current = {m.user_id: m.role for m in self._members.members(space_id)}
        for role in (ADMIN, MEMBER):
            wanted = [m.user_id for m in state.roster.members if (ADMIN if m.is_admin else MEMBER) == role]
            changed = [user for user in wanted if current.get(user) != role]
            if changed:
                await self._members.add(space_id, changed, role)
        await self._drop_missing(space_id, state)
        joined = [m.user_id for m in state.roster.members if m.user_id not in current]
        if joined:  # only non-members ask to join: a user the roster just let in ends their request
            await self._storage.drop_join_requests(space_id, joined)


def _user(caller: Principal) -> Principal:
    if caller.is_service:
        raise invalid_field("authorization", "channels are changed by member devices, not services")
    return caller


def _signed(commit: channel_pb2.SignedCommit) -> SignedCommit:
    if not commit.commit or not commit.signature:
        raise invalid_field("commit", "is required")
    return SignedCommit(commit.commit, commit.signature)


def _epoch_of(signed: SignedCommit) -> int:
    try:
        return signed.commit().epoch
    except CryptoError as error:
        raise invalid_field("commit", f"refused: {error}") from None


def _taken(epoch: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.ABORTED,
        errors_pb2.ERROR_REASON_VALIDATION_FAILED,
        f"another commit took epoch {epoch} first: fetch the chain and commit again",
    )


def _verified(previous: ChannelState | None, signed: SignedCommit) -> ChannelState:
    try:
        return verify_commit(previous, signed)
    except CryptoError as error:
        raise invalid_field("commit", f"refused: {error}") from None


def _signed_by_caller(state: ChannelState, signed: SignedCommit, caller: Principal) -> None:
    device = signed.commit().committer_device_id
    member = state.roster.member_of(device)
    if device != caller.device_id or member is None or member.user_id != caller.user_id:
        raise invalid_field("commit", "must be signed by the calling device, as one of its user's devices")


def _wraps(wraps: Sequence[channel_pb2.DeviceWrap]) -> dict[str, bytes]:
    found = {w.device_id: w.wrap for w in wraps}
    if len(found) != len(wraps):
        raise invalid_field("wraps", "one wrap per device")
    return found


def _wraps_match(signed: SignedCommit, wraps: dict[str, bytes]) -> None:
    try:
        verify_commit_wraps(signed.commit(), wraps)
    except CryptoError as error:
        raise invalid_field("wraps", str(error)) from None


def _rows(space_id: str, epoch: int, wraps: dict[str, bytes]) -> list[WrapRow]:
    return [WrapRow(space_id, epoch, device_id, wrap, False) for device_id, wrap in sorted(wraps.items())]


def _channel(row: ChannelRow, *, member: bool) -> channel_pb2.Channel:
    return channel_pb2.Channel(
        space_id=row.space_id,
        name=row.name,
        kind=channel_pb2.ChannelKind.ValueType(row.kind),
        epoch=row.epoch if member else 0,
        creator=row.creator,
        create_time_ms=row.created_ms,
    )


def _now_ms() -> int:
    return int(time.time() * 1000)
