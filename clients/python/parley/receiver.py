"""The one path every received frame takes: through the receive stages, then to rooms and handlers.

A receive stage may await (a later stage will fetch a key before it can
decrypt). Frames wait in a lane per room, so a room's events reach its
handlers in the order received however long a stage takes, while other
rooms go on. With no stage, or nothing waiting in its lane, a frame is
handed on at once.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable

from google.protobuf import json_format

from parley.api.v1 import errors_pb2
from parley.connection import Connection
from parley.direct_messages import DirectMessages
from parley.errors import error_from_status
from parley.gateway.v1 import gateway_pb2
from parley.handlers import HandlerRunner
from parley.messages import Messages
from parley.peers import Peers
from parley.questions import Questions
from parley.reasons import reason_name
from parley.room.v1 import room_pb2
from parley.room_registry import RoomRegistry
from parley.rooms import room_event

EventStage = Callable[[gateway_pb2.Event], Awaitable[None]]
DRAINING = reason_name(errors_pb2.ERROR_REASON_DRAINING)
# Frames that belong to no room share one lane.
_NO_ROOM = ""


def _lane_of(frame: gateway_pb2.ConnectResponse) -> str:
    kind = frame.WhichOneof("frame")
    if kind == "events":
        return frame.events.events[0].room_id if frame.events.events else _NO_ROOM
    if kind in ("presence", "history", "event_changed", "ephemeral"):
        room_id: str = getattr(frame, kind).room_id
        return room_id
    return _NO_ROOM


def _by_room(frame: gateway_pb2.ConnectResponse) -> list[gateway_pb2.ConnectResponse]:
    """An EventBatch that mixes rooms, cut into one frame per room (in order)."""
    if frame.WhichOneof("frame") != "events" or len({e.room_id for e in frame.events.events}) < 2:
        return [frame]
    frames: list[gateway_pb2.ConnectResponse] = []
    for event in frame.events.events:
        if not frames or frames[-1].events.events[0].room_id != event.room_id:
            frames.append(gateway_pb2.ConnectResponse(events=gateway_pb2.EventBatch()))
        frames[-1].events.events.append(event)
    return frames


class Receiver:
    def __init__(
        self,
        runner: HandlerRunner,
        connection: Connection,
        rooms: RoomRegistry,
        messages: Messages,
        questions: Questions,
        peers: Peers,
        direct: DirectMessages,
    ) -> None:
        self._direct = direct
        self._runner = runner
        self._connection = connection
        self._rooms = rooms
        self._messages = messages
        self._questions = questions
        self._peers = peers
        self._stages: list[EventStage] = []
        self._lanes: dict[str, deque[tuple[gateway_pb2.ConnectResponse, asyncio.Future[None]]]] = {}

    def add_stage(self, stage: EventStage) -> None:
        """`await stage(event)` on every room event before it reaches the room (it may change the event)."""
        self._stages.append(stage)

    def receive(self, frame: gateway_pb2.ConnectResponse) -> None:
        for part in _by_room(frame):
            lane = _lane_of(part)
            if not self._stages and lane not in self._lanes:
                with self._runner.backlog.dispatching(part.ByteSize()):
                    self._dispatch(part)
                continue
            # Counted by the backlog from now until it is handed on, like a handler call.
            with self._runner.backlog.dispatching(part.ByteSize()):
                handed_on: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._runner.backlog.track(handed_on)
            if lane in self._lanes:
                self._lanes[lane].append((part, handed_on))
            else:
                self._lanes[lane] = deque([(part, handed_on)])
                self._runner.spawn(self._run_lane(lane))

    async def _run_lane(self, lane: str) -> None:
        waiting = self._lanes[lane]
        try:
            while waiting:
                frame, handed_on = waiting[0]
                try:
                    for event in _events_of(frame):
                        for stage in self._stages:
                            await stage(event)
                    with self._runner.backlog.dispatching(frame.ByteSize()):
                        self._dispatch(frame)
                finally:
                    waiting.popleft()
                    handed_on.set_result(None)
        finally:
            del self._lanes[lane]
            for _, handed_on in waiting:  # cancelled: the client is closing
                if not handed_on.done():
                    handed_on.cancel()

    def _dispatch(self, frame: gateway_pb2.ConnectResponse) -> None:
        kind = frame.WhichOneof("frame")
        if kind == "events":
            for event in frame.events.events:
                room = self._rooms.get(event.room_id)
                if room is not None:
                    room.dispatch(event)
        elif kind == "subject_events":
            for subject_event in frame.subject_events.events:
                self._messages.dispatch(subject_event)
        elif kind == "presence":
            room = self._rooms.get(frame.presence.room_id)
            for presence in frame.presence.changes:
                # A connection that ended comes first: the user may have joined again since, in the same window.
                if presence.ended_session_id:
                    self._peers.offline(presence.user_id, presence.ended_session_id)
                if room is not None:
                    room.dispatch_presence(presence.user_id, presence.joined)
        elif kind == "room_changed":
            change = frame.room_changed.change
            if change.kind == room_pb2.RoomChange.KIND_CHANNEL_COMMITTED:
                self._runner.fire("channel_committed", change.room.room_id)
            elif change.kind == room_pb2.RoomChange.KIND_JOIN_REQUESTED:
                for user_id in change.user_ids:
                    self._runner.fire("join_request", change.room.room_id, user_id)
            elif change.kind == room_pb2.RoomChange.KIND_MEMBERS_REMOVED:
                self._rooms.deleted(change.room.room_id)
                self._rooms.forget(change.room.room_id)
                self._runner.fire("removed_from_room", change.room.room_id)
            elif change.kind == room_pb2.RoomChange.KIND_DELETED:
                self._rooms.deleted(change.room.room_id)
                self._runner.fire("room_deleted", change.room)
            else:
                self._runner.fire("room_created", change.room)
        elif kind == "direct_message":
            message = frame.direct_message
            self._runner.fire("direct_message", message.sender, json_format.MessageToDict(message.data))
        elif kind == "history":
            batch = frame.history
            room = self._rooms.get(batch.room_id)
            if room is not None:
                for event in batch.events:
                    room.dispatch(event)
                for edit_or_delete in batch.changes:
                    room.dispatch_change(edit_or_delete)
                room.recovered = batch.recovered
            self._runner.fire("history", batch.room_id, [room_event(e) for e in batch.events], batch.recovered)
        elif kind == "event_changed":
            room = self._rooms.get(frame.event_changed.room_id)
            if room is not None:
                room.dispatch_change(frame.event_changed)
        elif kind == "ephemeral":
            room = self._rooms.get(frame.ephemeral.room_id)
            if room is not None:
                room.dispatch_signal(frame.ephemeral)
        elif kind == "go_away":
            self._connection.going_away(frame.go_away)
            if frame.go_away.status.reason != DRAINING:  # a planned drain is no error: the client comes back
                self._runner.fire("error", error_from_status(frame.go_away.status))
        elif kind == "question":
            self._questions.asked(frame.question)
        elif kind == "peer_offline":  # from a server older than PresenceChange.ended_session_id
            self._peers.offline(frame.peer_offline.user_id, frame.peer_offline.session_id)
        elif kind == "sealed":
            self._direct.received(frame.sealed)


def _events_of(frame: gateway_pb2.ConnectResponse) -> list[gateway_pb2.Event]:
    kind = frame.WhichOneof("frame")
    if kind == "events":
        return list(frame.events.events)
    if kind == "history":
        return list(frame.history.events)
    return []
