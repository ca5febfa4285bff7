"""Server frames built from pre-encoded events, without re-encoding.

An event is serialised once when it is published. A frame carrying several
events is the protobuf encoding of `ConnectResponse{events: EventBatch{...}}`,
which is just the events' bytes, each behind its field tag and length, inside
the frame's own tag and length: concatenation, no per-subscriber encoding.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley.gateway.v1 import gateway_pb2
from services.runtime.protowire import varint

# Wire tags (field number << 3 | length-delimited).
_EVENTS_FRAME_TAG = bytes([gateway_pb2.ConnectResponse.EVENTS_FIELD_NUMBER << 3 | 2])
_SUBJECT_FRAME_TAG = bytes([gateway_pb2.ConnectResponse.SUBJECT_EVENTS_FIELD_NUMBER << 3 | 2])
_REPLY_FRAME_TAG = bytes([gateway_pb2.ConnectResponse.REPLY_FIELD_NUMBER << 3 | 2])
_REPLIES_FRAME_TAG = bytes([gateway_pb2.ConnectResponse.REPLIES_FIELD_NUMBER << 3 | 2])
_BATCH_ITEM_TAG = bytes([gateway_pb2.EventBatch.EVENTS_FIELD_NUMBER << 3 | 2])
_SUBSCRIBE_FRAME_TAG = bytes([gateway_pb2.SubscribeResponse.FRAME_FIELD_NUMBER << 3 | 2])
# One tag byte each, and one item tag for both batch kinds: field numbers must stay small and equal.
assert gateway_pb2.EventBatch.EVENTS_FIELD_NUMBER == gateway_pb2.SubjectEventBatch.EVENTS_FIELD_NUMBER
assert gateway_pb2.EventBatch.EVENTS_FIELD_NUMBER == gateway_pb2.SubscribeRoomResponse.EVENTS_FIELD_NUMBER
assert gateway_pb2.EventBatch.EVENTS_FIELD_NUMBER == gateway_pb2.ReplyBatch.REPLIES_FIELD_NUMBER
assert (
    max(
        gateway_pb2.ConnectResponse.EVENTS_FIELD_NUMBER,
        gateway_pb2.ConnectResponse.SUBJECT_EVENTS_FIELD_NUMBER,
        gateway_pb2.ConnectResponse.REPLIES_FIELD_NUMBER,
        gateway_pb2.SubscribeResponse.FRAME_FIELD_NUMBER,
    )
    <= 15
)


def batch_item(encoded: bytes) -> bytes:
    """One element of a repeated message field (EventBatch.events / SubjectEventBatch.events)."""
    return _BATCH_ITEM_TAG + varint(len(encoded)) + encoded


def events_frame(items: Sequence[bytes]) -> bytes:
    """A ConnectResponse{events} frame from `batch_item`s."""
    body = b"".join(items)
    return _EVENTS_FRAME_TAG + varint(len(body)) + body


def replies_frame(items: Sequence[bytes]) -> bytes:
    """A lone reply as `ConnectResponse{reply}`, or several in one `ConnectResponse{replies}`, from `batch_item`s."""
    if len(items) == 1:
        # An item and a lone reply frame differ only in their tag.
        return _REPLY_FRAME_TAG + items[0][len(_BATCH_ITEM_TAG) :]
    body = b"".join(items)
    return _REPLIES_FRAME_TAG + varint(len(body)) + body


def subject_events_frame(items: Sequence[bytes]) -> bytes:
    body = b"".join(items)
    return _SUBJECT_FRAME_TAG + varint(len(body)) + body


def is_events_frame(frame: bytes) -> bool:
    return frame.startswith(_EVENTS_FRAME_TAG)


def frame_body(frame: bytes) -> bytes:
    """The EventBatch inside an events frame (tag, length, body -> body)."""
    position = 1
    while frame[position] & 0x80:
        position += 1
    return frame[position + 1 :]


def whole_body_frame(body: bytes) -> bytes:
    """A frame whose `frame_body` is `body` as given (a backend feed's own response)."""
    return _EVENTS_FRAME_TAG + varint(len(body)) + body


def subscribe_frame(frame: bytes) -> bytes:
    """A ConnectResponse frame as Subscribe sends it: `SubscribeResponse{frame}`."""
    return _SUBSCRIBE_FRAME_TAG + varint(len(frame)) + frame


def frame(response: gateway_pb2.ConnectResponse) -> bytes:
    return response.SerializeToString()
