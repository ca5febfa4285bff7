"""The RoomService and HistoryService calls that need no realtime stream."""

from __future__ import annotations

import grpc

from parley.auth import Auth
from parley.errors import ValidationError
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.room.v1 import room_pb2, room_pb2_grpc
from parley.rooms import RoomEvent, logged_event


class RoomCalls:
    """Rooms (list, get, create, delete, participants) and their kept history, over unary calls."""

    def __init__(self, auth: Auth) -> None:
        self._auth = auth

    @property
    def room_stub(self) -> room_pb2_grpc.RoomServiceAsyncStub:
        return room_pb2_grpc.RoomServiceStub(self._auth.channel())

    @property
    def history_stub(self) -> history_pb2_grpc.HistoryServiceAsyncStub:
        return history_pb2_grpc.HistoryServiceStub(self._auth.channel())

    async def list_rooms(self) -> list[room_pb2.Room]:
        rooms: list[room_pb2.Room] = []
        token = ""
        while True:
            page = await self._auth.call(
                self.room_stub.ListRooms, room_pb2.ListRoomsRequest(page_size=100, page_token=token)
            )
            rooms += page.rooms
            token = page.next_page_token
            if not token:
                return rooms

    async def get_room(self, room_id: str) -> room_pb2.Room:
        return (await self._auth.call(self.room_stub.GetRoom, room_pb2.GetRoomRequest(room_id=room_id))).room

    async def create_room(self, request: room_pb2.CreateRoomRequest) -> room_pb2.Room:
        return (await self._auth.call(self.room_stub.CreateRoom, request)).room

    async def delete_room(self, room_id: str) -> None:
        await self._auth.call(self.room_stub.DeleteRoom, room_pb2.DeleteRoomRequest(room_id=room_id))

    async def add_members(self, room_id: str, user_ids: list[str], *, admin: bool) -> list[room_pb2.RoomMember]:
        role = room_pb2.MEMBER_ROLE_ADMIN if admin else room_pb2.MEMBER_ROLE_MEMBER
        request = room_pb2.AddRoomMembersRequest(room_id=room_id, user_ids=user_ids, role=role)
        return list((await self._auth.call(self.room_stub.AddRoomMembers, request)).members)

    async def remove_members(self, room_id: str, user_ids: list[str]) -> list[str]:
        request = room_pb2.RemoveRoomMembersRequest(room_id=room_id, user_ids=user_ids)
        return list((await self._auth.call(self.room_stub.RemoveRoomMembers, request)).removed_user_ids)

    async def members(self, room_id: str) -> list[room_pb2.RoomMember]:
        request = room_pb2.ListRoomMembersRequest(room_id=room_id)
        return list((await self._auth.call(self.room_stub.ListRoomMembers, request)).members)

    async def participants(self, room_id: str) -> dict[str, list[str]]:
        response = await self._auth.call(
            self.room_stub.ListParticipants, room_pb2.ListParticipantsRequest(room_id=room_id)
        )
        return {p.user_id: list(p.session_ids) for p in response.participants}

    async def history(self, room_id: str, *, limit: int = 50, before: int = 0, event: str = "") -> list[RoomEvent]:
        for field, number in (("limit", limit), ("before", before)):
            if number < 0:
                raise ValidationError(
                    grpc.StatusCode.INVALID_ARGUMENT,
                    "VALIDATION_FAILED",
                    f"{field}: must not be negative",
                    {"field": field},
                )
        events: list[RoomEvent] = []
        request = history_pb2.ListEventsRequest(room_id=room_id, before_seq=before, event=event)
        while len(events) < limit:
            request.page_size = limit - len(events)
            page = await self._auth.call(self.history_stub.ListEvents, request)
            events += [logged_event(room_id, page.epoch, e) for e in page.events]
            if not page.next_page_token:
                break
            request.page_token = page.next_page_token
        return events

    async def get_history(self, room_id: str, event: str = "", start: int = 0, end: int = 50) -> list[RoomEvent]:
        request = history_pb2.ListEventsRequest(
            room_id=room_id, event=event, range=history_pb2.OffsetRange(start=start, end=end)
        )
        page = await self._auth.call(self.history_stub.ListEvents, request)
        return [logged_event(room_id, page.epoch, e) for e in page.events]
