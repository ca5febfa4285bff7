"""The bus message format of a room: what crosses the bus on `room.<room id>`.

Sequenced messages take a position in the room's log, and each gateway
releases them to its connections in that order:
- EVENT: an encoded `gateway.v1.Event`, kept or transient, announced by the
  history service once its append committed;
- CHANGE: an encoded `ConnectResponse{event_changed}` frame (an edit or a
  delete), announced by the history service once it committed.
Unsequenced messages come in no order with the log: whole frames for the
room's members (FRAME: ephemeral signals), and a user's arrival or departure
(PRESENCE: an encoded `gateway.v1.PresenceChange`, which each gateway gathers
into one Presence frame per window).

Headers carry what receivers route by without decoding the body.
"""

from __future__ import annotations

import dataclasses

from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from services.runtime import protowire
from services.runtime.bus import BusMessage

NAMESPACE = "room"
EVENT = "event"
CHANGE = "change"
FRAME = "frame"
PRESENCE = "presence"

_KIND = "kind"
_SEQ = "seq"
_EPOCH = "epoch"
_EVENT_NAME = "event"
# A connection that asked not to receive these (a publish with no_echo).
_SKIP_SESSION = "skip"

EDITED = gateway_pb2.EventChanged.KIND_EDITED
DELETED = gateway_pb2.EventChanged.KIND_DELETED


def room_subject(room_id: str) -> str:
    return f"{NAMESPACE}.{room_id}"


def room_of(subject: str) -> str:
    return subject[len(NAMESPACE) + 1 :]


@dataclasses.dataclass(frozen=True)
class RoomMessage:
    """A room's bus message as receivers see it."""

    room_id: str
    kind: str
    # The log position (0 for a FRAME or PRESENCE).
    seq: int
    epoch: str
    # The event name of an EVENT, or of the event a CHANGE changed.
    event: str
    skip_session: str
    data: bytes

    @property
    def sequenced(self) -> bool:
        return self.kind not in (FRAME, PRESENCE)


def parse(message: BusMessage) -> RoomMessage:
    headers = message.headers
    return RoomMessage(
        room_id=room_of(message.subject),
        kind=headers.get(_KIND, FRAME),
        seq=int(headers.get(_SEQ, 0)),
        epoch=headers.get(_EPOCH, ""),
        event=headers.get(_EVENT_NAME, ""),
        skip_session=headers.get(_SKIP_SESSION, ""),
        data=message.data,
    )


def room_event(room_id: str, logged: history_pb2.LoggedEvent, epoch: str = "") -> gateway_pb2.Event:
    """A logged event as members get it (its seq as logged; 0 before it was appended)."""
    return gateway_pb2.Event(
        room_id=room_id,
        event=logged.event,
        payload=logged.payload,
        sender=logged.sender,
        time_ms=logged.time_ms,
        seq=logged.seq,
        handle=logged.handle,
        meta=logged.meta,
        epoch=epoch,
    )


def unsequenced_event(room_id: str, logged: history_pb2.LoggedEvent) -> bytes:
    """A logged event's `gateway.v1.Event` encoding without its seq and epoch (`event_message` adds them)."""
    return room_event(room_id, logged).SerializeToString()


_SEQ_FIELD = gateway_pb2.Event.SEQ_FIELD_NUMBER
_EPOCH_FIELD = gateway_pb2.Event.EPOCH_FIELD_NUMBER


def event_message(
    room_id: str, unsequenced: bytes, event: str, seq: int, epoch: str, skip_session: str = ""
) -> BusMessage:
    """An appended event, its position added to its encoding by concatenation."""
    position = protowire.uint_field(_SEQ_FIELD, seq) + protowire.length_delimited(_EPOCH_FIELD, epoch.encode())
    data = unsequenced + position
    headers = {_KIND: EVENT, _SEQ: str(seq), _EPOCH: epoch, _EVENT_NAME: event}
    if skip_session:
        headers[_SKIP_SESSION] = skip_session
    return BusMessage(room_subject(room_id), data, headers)


def event_changed(room_id: str, event: history_pb2.LoggedEvent) -> gateway_pb2.EventChanged:
    """The change a logged event's latest edit or delete made, as members get it."""
    change = gateway_pb2.EventChanged(
        kind=DELETED if event.deleted else EDITED,
        room_id=room_id,
        handle=event.handle,
        seq=event.seq,
        event=event.event,
        sender=event.sender,
        change_time_ms=event.edit_time_ms,
        change_seq=event.change_seq,
    )
    if not event.deleted:
        change.payload.CopyFrom(event.payload)
    return change


def change_message(room_id: str, epoch: str, event: history_pb2.LoggedEvent) -> BusMessage:
    """An edit or delete of `event` (as now stored), at its change_seq."""
    frame = gateway_pb2.ConnectResponse(event_changed=event_changed(room_id, event))
    headers = {_KIND: CHANGE, _SEQ: str(event.change_seq), _EPOCH: epoch, _EVENT_NAME: event.event}
    return BusMessage(room_subject(room_id), frame.SerializeToString(), headers)


def frame_message(room_id: str, frame: gateway_pb2.ConnectResponse, skip_session: str = "") -> BusMessage:
    """A frame for every member of the room (but `skip_session`), outside the log's order."""
    headers = {_KIND: FRAME, _SKIP_SESSION: skip_session} if skip_session else {_KIND: FRAME}
    return BusMessage(room_subject(room_id), frame.SerializeToString(), headers)


def presence_message(room_id: str, user_id: str, joined: bool, ended_session_id: str = "") -> BusMessage:
    """A join or leave for the room's Presence frames; `ended_session_id` when the leave is that connection ending."""
    change = gateway_pb2.PresenceChange(user_id=user_id, joined=joined, ended_session_id=ended_session_id)
    return BusMessage(room_subject(room_id), change.SerializeToString(), {_KIND: PRESENCE})


def change_of(message: RoomMessage) -> gateway_pb2.EventChanged:
    """The EventChanged a CHANGE message carries."""
    return gateway_pb2.ConnectResponse.FromString(message.data).event_changed
