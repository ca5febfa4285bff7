"""gRPC face of the room service."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Sequence

from parley.room.v1 import room_pb2, room_pb2_grpc
from services.room import definitions
from services.room.leases import GatewayLeases
from services.room.members import RoomMembers, is_private, not_a_member
from services.room.membership import Membership
from services.room.registry import RoomRegistry, room_not_found
from services.runtime.errors import invalid_field, rate_limited
from services.runtime.grpc_types import Context
from services.runtime.paging import clamp_page_size, decode_page_token, encode_page_token
from services.runtime.principal import current_principal
from services.runtime.ratelimit import RateLimiter
from services.runtime.session_ids import GATEWAY_ID_LENGTH
from services.runtime.uncancellable import uncancellable

# A page of rooms stays well within the message size limit, whatever schemas the rooms carry.
MAX_PAGE_BYTES = 1024 * 1024


class RoomServicer(room_pb2_grpc.RoomServiceServicer):
    def __init__(
        self,
        registry: RoomRegistry,
        membership: Membership,
        members: RoomMembers,
        creations_per_hour: int,
        max_schema_bytes_per_room: int,
    ) -> None:
        self._registry = registry
        self._membership = membership
        self._members = members
        # Gateways in other processes renew leases on their connections' memberships (set by the server).
        self.leases: GatewayLeases | None = None
        self._creations = RateLimiter(creations_per_hour, 3600.0)
        self._max_schema_bytes = max_schema_bytes_per_room

    def _with_size(self, room: room_pb2.Room) -> room_pb2.Room:
        sized = room_pb2.Room()
        sized.CopyFrom(room)
        sized.size = self._membership.size(room.room_id)
        return sized

    async def ListRooms(self, request: room_pb2.ListRoomsRequest, context: Context) -> room_pb2.ListRoomsResponse:
        size = clamp_page_size(request.page_size)
        rooms, more = self._registry.listed_after(decode_page_token(request.page_token), size)
        page: list[room_pb2.Room] = []
        page_bytes = 0
        for room in rooms:
            sized = self._with_size(room)
            page_bytes += sized.ByteSize()
            if page and page_bytes > MAX_PAGE_BYTES:  # rooms carry their schemas: the rest go on the next page
                more = True
                break
            page.append(sized)
        next_token = encode_page_token(page[-1].room_id) if more else ""
        return room_pb2.ListRoomsResponse(rooms=page, next_page_token=next_token)

    async def GetRoom(self, request: room_pb2.GetRoomRequest, context: Context) -> room_pb2.GetRoomResponse:
        definitions.check_room_id(request.room_id)
        room = self._registry.get(request.room_id)
        if not self._members.may_use(room, current_principal()):
            raise room_not_found(request.room_id)  # a private room is not there for others
        return room_pb2.GetRoomResponse(room=self._with_size(room))

    async def CreateRoom(self, request: room_pb2.CreateRoomRequest, context: Context) -> room_pb2.CreateRoomResponse:
        caller = current_principal()
        # First, before any work: a user over the limit costs nothing more.
        if not caller.is_service:
            wait = self._creations.try_acquire(caller.user_id)
            if wait:
                raise rate_limited("too many rooms created; try again later", wait)
        if request.room_id.startswith(CHANNEL_ID_PREFIX):
            raise invalid_field("room_id", f"{CHANNEL_ID_PREFIX!r} starts the ids of channels (ChannelService)")
        # Large schemas take a while to read and measure: not on the event loop.
        room, schema_bytes = await asyncio.to_thread(
            definitions.from_request, request, caller.user_id, self._max_schema_bytes
        )
        if not is_private(room):
            return room_pb2.CreateRoomResponse(room=await self._registry.create(room, schema_bytes))

        async def restrict_reading() -> None:
            await self._members.open(room.room_id, room.creator)

        created = await self._registry.create(room, schema_bytes, restrict_reading)
        await self._members.created(room.room_id, room.creator)
        return room_pb2.CreateRoomResponse(room=created)

    async def DeleteRoom(self, request: room_pb2.DeleteRoomRequest, context: Context) -> room_pb2.DeleteRoomResponse:
        definitions.check_room_id(request.room_id)
        caller = current_principal()

        channel_admin = False
        if request.room_id.startswith(CHANNEL_ID_PREFIX) and not caller.is_service:
            room = self._registry.get(request.room_id)
            self._members.check_admin(room, caller)  # a channel's current admins, not a creator removed since
            channel_admin = True

        async def delete() -> None:
            room = await self._registry.delete(request.room_id, caller, by_admin=channel_admin)
            self._membership.drop_room(request.room_id)
            if is_private(room):
                await self._members.dropped(request.room_id)

        # Once its log is erased, the room goes too, members and all, even if the caller stops waiting.
        await uncancellable(delete())
        return room_pb2.DeleteRoomResponse()

    async def ListParticipants(
        self, request: room_pb2.ListParticipantsRequest, context: Context
    ) -> room_pb2.ListParticipantsResponse:
        definitions.check_room_id(request.room_id)
        self._members.check_use(self._registry.get(request.room_id), current_principal())
        participants = self._membership.participants(request.room_id)
        return room_pb2.ListParticipantsResponse(
            participants=[
                room_pb2.Participant(user_id=user, session_ids=sorted(sessions))
                for user, sessions in sorted(participants.items())
            ]
        )

    async def JoinRoom(self, request: room_pb2.JoinRoomRequest, context: Context) -> room_pb2.JoinRoomResponse:
        return self.join(request)

    def join(self, request: room_pb2.JoinRoomRequest) -> room_pb2.JoinRoomResponse:
        """JoinRoom itself; the all-in-one gateway calls it in process."""
        definitions.check_room_id(request.room_id)
        _require(user_id=request.user_id, session_id=request.session_id)
        room = self._registry.get(request.room_id)
        if is_private(room) and not self._members.is_member(room.room_id, request.user_id):
            raise not_a_member(room.room_id)
        first = self._membership.join(room.room_id, room.max_size, request.user_id, request.session_id)
        return room_pb2.JoinRoomResponse(room=self._with_size(room), first_connection=first)

    async def LeaveRoom(self, request: room_pb2.LeaveRoomRequest, context: Context) -> room_pb2.LeaveRoomResponse:
        return self.leave(request)

    def leave(self, request: room_pb2.LeaveRoomRequest) -> room_pb2.LeaveRoomResponse:
        """LeaveRoom itself; the all-in-one gateway calls it in process."""
        _require(user_id=request.user_id)
        left = self._membership.leave(request.room_id or None, request.user_id, request.session_id or None)
        return room_pb2.LeaveRoomResponse(left_room_ids=left)

    async def ListUserRooms(
        self, request: room_pb2.ListUserRoomsRequest, context: Context
    ) -> room_pb2.ListUserRoomsResponse:
        _require(user_id=request.user_id)
        return room_pb2.ListUserRoomsResponse(room_ids=self._membership.rooms_of(request.user_id))

    async def AddRoomMembers(
        self, request: room_pb2.AddRoomMembersRequest, context: Context
    ) -> room_pb2.AddRoomMembersResponse:
        room = self._members_by_call(request.room_id)
        self._members.check_admin(room, current_principal())
        user_ids = _user_ids(request.user_ids)
        role = request.role or room_pb2.MEMBER_ROLE_MEMBER
        if role not in (room_pb2.MEMBER_ROLE_MEMBER, room_pb2.MEMBER_ROLE_ADMIN):
            raise invalid_field("role", "must be MEMBER_ROLE_MEMBER or MEMBER_ROLE_ADMIN")
        if room.creator in user_ids and role != room_pb2.MEMBER_ROLE_ADMIN:
            raise invalid_field("user_ids", "the creator stays an admin")
        return room_pb2.AddRoomMembersResponse(members=await self._members.add(room.room_id, user_ids, role))

    async def RemoveRoomMembers(
        self, request: room_pb2.RemoveRoomMembersRequest, context: Context
    ) -> room_pb2.RemoveRoomMembersResponse:
        room = self._members_by_call(request.room_id)
        caller = current_principal()
        user_ids = _user_ids(request.user_ids)
        if user_ids != [caller.user_id]:  # anyone may leave; removing others takes an admin
            self._members.check_admin(room, caller)
        if room.creator in user_ids:
            raise invalid_field("user_ids", "the creator cannot be removed")
        removed = await self._members.remove(room.room_id, user_ids)
        for user_id in removed:
            self._membership.leave(room.room_id, user_id, None)
        if removed:
            self._registry.members_removed(room, removed)
        return room_pb2.RemoveRoomMembersResponse(removed_user_ids=removed)

    async def ListRoomMembers(
        self, request: room_pb2.ListRoomMembersRequest, context: Context
    ) -> room_pb2.ListRoomMembersResponse:
        room = self._private_room(request.room_id)
        self._members.check_use(room, current_principal())
        return room_pb2.ListRoomMembersResponse(members=self._members.members(room.room_id))

    def _private_room(self, room_id: str) -> room_pb2.Room:
        definitions.check_room_id(room_id)
        room = self._registry.get(room_id)
        if not is_private(room):
            raise invalid_field("room_id", f"room {room_id!r} is not private: anyone may join it")
        return room

    def _members_by_call(self, room_id: str) -> room_pb2.Room:
        """A private room whose members change by these calls: a channel's change only by its commits."""
        room = self._private_room(room_id)
        if room_id.startswith(CHANNEL_ID_PREFIX):
            raise invalid_field("room_id", f"{room_id!r} is a channel: its members change by commits (Commit)")
        return room

    async def WatchRooms(
        self, request: room_pb2.WatchRoomsRequest, context: Context
    ) -> AsyncIterator[room_pb2.WatchRoomsResponse]:
        async for changes in self._registry.watch():
            if changes is None:
                yield room_pb2.WatchRoomsResponse(snapshot_complete=True)
            else:
                yield room_pb2.WatchRoomsResponse(changes=changes)

    async def RenewLease(self, request: room_pb2.RenewLeaseRequest, context: Context) -> room_pb2.RenewLeaseResponse:
        if len(request.gateway_id) != GATEWAY_ID_LENGTH:
            raise invalid_field("gateway_id", f"must be a gateway id ({GATEWAY_ID_LENGTH} characters)")
        assert self.leases is not None, "the server gives the servicer its leases before it starts"
        if request.release:
            await self.leases.release(request.gateway_id)
            return room_pb2.RenewLeaseResponse()
        if not MIN_LEASE_MS <= request.ttl_ms <= MAX_LEASE_MS:
            raise invalid_field("ttl_ms", f"must be from {MIN_LEASE_MS} to {MAX_LEASE_MS}")
        self.leases.renew(request.gateway_id, request.ttl_ms / 1000)
        return room_pb2.RenewLeaseResponse()


MIN_LEASE_MS = 1000
MAX_LEASE_MS = 600_000


MAX_MEMBERS_PER_CALL = 100
# Channels' rooms (spaces) have ids of this form (see services/room/channels.py).
CHANNEL_ID_PREFIX = "sp-"
MAX_USER_ID_LENGTH = 64


def _user_ids(user_ids: Sequence[str]) -> list[str]:
    if not 0 < len(user_ids) <= MAX_MEMBERS_PER_CALL:
        raise invalid_field("user_ids", f"give 1–{MAX_MEMBERS_PER_CALL} user ids")
    for i, user_id in enumerate(user_ids):
        if not 0 < len(user_id) <= MAX_USER_ID_LENGTH:
            raise invalid_field(f"user_ids[{i}]", f"must be 1–{MAX_USER_ID_LENGTH} characters")
    return sorted(set(user_ids))


def _require(**fields: str) -> None:
    for name, value in fields.items():
        if not value:
            raise invalid_field(name, "is required")
