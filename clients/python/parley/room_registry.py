"""The rooms this client is in: joining, resuming after a reconnection, and leaving them behind.

A room handle outlives streams: when a stream ends the client joins the
room again on the next one, resuming from the last event it saw, with the
same handlers and open `events()` iterators.
"""

from __future__ import annotations

import asyncio

from parley.connection import Connection
from parley.errors import ParleyError, worth_retrying
from parley.gateway.v1 import gateway_pb2
from parley.handlers import HandlerRunner
from parley.outbox import Send
from parley.room.v1 import room_pb2
from parley.room_calls import RoomCalls
from parley.rooms import Room
from parley.sender import Sender
from parley.stream import ConnectStream


class RoomRegistry:
    def __init__(self, connection: Connection, sender: Sender, runner: HandlerRunner, calls: RoomCalls) -> None:
        self._connection = connection
        self._sender = sender
        self._runner = runner
        self._calls = calls
        self._rooms: dict[str, Room] = {}
        # Rooms this client was in when its stream ended: a join resumes from
        # their (epoch, last seq) and keeps their handlers.
        self._left_behind: dict[str, Room] = {}
        # Rooms to join again on the next stream.
        self._to_rejoin: dict[str, Room] = {}
        connection.on_open(self._rejoin_all)
        connection.on_end(self._stream_ended)
        connection.on_waiting(lambda: bool(self._to_rejoin))
        sender.room_waits = self._waits

    def get(self, room_id: str) -> Room | None:
        return self._rooms.get(room_id)

    def deleted(self, room_id: str) -> None:
        gone = self._rooms.pop(room_id, None)
        if gone is not None:
            gone.close()

    def forget(self, room_id: str) -> None:
        """The room was left on purpose: a later join starts afresh."""
        self._rooms.pop(room_id, None)
        self._left_behind.pop(room_id, None)
        self._to_rejoin.pop(room_id, None)

    def _waits(self, send: Send) -> bool:
        """A room's sends wait while it is being joined again, and a restored send until its room is joined."""
        if not send.room_id:
            return False
        room = self._rooms.get(send.room_id)
        return send.room_id in self._to_rejoin or (send.restored and (room is None or not room.joined))

    async def join(self, room_id: str, *, resume: bool = True) -> Room:
        stream = await self._connection.stream()
        waiting = self._to_rejoin.pop(room_id, None)
        if waiting is not None:  # joined again by the application first
            return await self._rejoin(stream, waiting, by_app=True)
        room = self._rooms.get(room_id)
        before = self._left_behind.get(room_id) if resume else None
        if room is None or not room.joined:
            # Registered before the command: events can arrive ahead of the reply.
            room = self._rooms[room_id] = Room(
                room_pb2.Room(room_id=room_id), [], self._sender, self._calls, self._runner, self.forget
            )
            if before is not None:
                room.continue_from(before)
        await self._send_join(stream, room, before)
        self._sender.flush()  # sends restored from the outbox file for this room
        return room

    async def _rejoin_all(self, stream: ConnectStream) -> None:
        """On a new stream, before it counts as connected: every room joined again, resumed."""
        for room_id in list(self._to_rejoin):
            room = self._to_rejoin.pop(room_id, None)
            if room is None:
                continue
            try:
                await self._rejoin(stream, room, by_app=False)
            except ParleyError as exc:  # `_rejoin` put the room where it belongs
                if room.closed:
                    self._runner.fire("error", exc)  # the room refused: nobody else is told
                else:
                    raise  # the stream is no good: the connection tries another

    async def _rejoin(self, stream: ConnectStream, room: Room, *, by_app: bool) -> Room:
        """The same room handle, joined again on a new stream from where it was.

        If that fails for the connection's sake the room waits for the next
        one; if the room itself refuses (deleted, full, denied) it ends; if
        the application asked and the stream is fine, it is told (and a later
        join resumes the room).
        """
        room.joined = True
        self._rooms[room.id] = room
        try:
            return await self._send_join(stream, room, room)
        except ParleyError as exc:
            if self._rooms.get(room.id) is room:
                del self._rooms[room.id]
            if room.closed or self._connection.closing:
                raise  # ended meanwhile (closed client, a final ending): it stays ended
            if worth_retrying(exc) and not (by_app and self._connection.live_stream is stream):
                room.suspend()
                self._to_rejoin[room.id] = room
            else:
                self._leave_behind([room])
            raise

    async def _send_join(self, stream: ConnectStream, room: Room, before: Room | None) -> Room:
        command = gateway_pb2.JoinCommand(room_id=room.id)
        if before is not None:
            command.epoch, command.since_seq, command.resume = before.epoch, before.last_seq, True
            command.subscriptions.extend(before.subscriptions)
        try:
            reply = await stream.command(join=command)
        except BaseException:
            if self._rooms.get(room.id) is room and not room.info.name:
                del self._rooms[room.id]
            raise
        room.info = reply.join.room
        room.subscriptions = list(reply.join.subscriptions)
        room.recovered = reply.join.recovered
        if reply.join.last_seq > room.last_seq and not (before is not None and reply.join.recovered):
            # A fresh start: resume later from the log's position at this join.
            room.epoch, room.last_seq = reply.join.epoch, reply.join.last_seq
        room.epoch = room.epoch or reply.join.epoch
        # Runs after the caller's code up to its next await: handlers it registers
        # there get the events and changes that came with the join.
        asyncio.get_running_loop().call_soon(room.release_held)
        return room

    def _stream_ended(self, error: ParleyError | None, reconnecting: bool) -> None:
        rooms, self._rooms = self._rooms, {}
        if reconnecting:
            # The same room handles carry on once joined again: iterators stay open.
            for room in rooms.values():
                room.suspend()
            self._to_rejoin.update(rooms)
        else:
            self._leave_behind([*rooms.values(), *self._to_rejoin.values()])

    def _leave_behind(self, rooms: list[Room]) -> None:
        """The rooms end (iterators stop); joining one again later resumes from where it was."""
        for room in rooms:
            self._to_rejoin.pop(room.id, None)
            self._left_behind[room.id] = room
            room.close()
