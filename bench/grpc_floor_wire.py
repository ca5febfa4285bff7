"""The grpc.aio floor's frames: raw bytes in gRPC messages, a one-byte kind first (no .proto).

Client to server:
- join: b"J", request id (4 bytes, big-endian), room (UTF-8);
- publish: b"P", request id, room length (1 byte), room, payload.
Server to client:
- ack: b"A", the request id of the join or publish answered;
- event: b"E", the payload of one publish (one event per message).
"""

from __future__ import annotations

from typing import NamedTuple

METHOD = "/floor.Floor/Connect"

JOIN = b"J"
PUBLISH = b"P"
ACK = b"A"
EVENT = b"E"

REQUEST_ID_BYTES = 4
ROOM_AT = 1 + REQUEST_ID_BYTES


class Request(NamedTuple):
    kind: bytes
    request_id: int
    room: str
    # Empty for a join.
    payload: bytes = b""


def _request_id(request_id: int) -> bytes:
    return request_id.to_bytes(REQUEST_ID_BYTES, "big")


def join(request_id: int, room: str) -> bytes:
    return JOIN + _request_id(request_id) + room.encode()


def publish(request_id: int, room: str, payload: bytes) -> bytes:
    name = room.encode()
    if len(name) > 255:
        raise ValueError(f"room name of {len(name)} bytes (at most 255)")
    return PUBLISH + _request_id(request_id) + bytes((len(name),)) + name + payload


def ack(request_id: int) -> bytes:
    return ACK + _request_id(request_id)


def event(payload: bytes) -> bytes:
    return EVENT + payload


def parse_request(frame: bytes) -> Request:
    """A join or publish frame read back; ValueError for anything else."""
    kind = frame[:1]
    if len(frame) < ROOM_AT or kind not in (JOIN, PUBLISH):
        raise ValueError(f"not a join or publish frame: {frame[:16]!r}")
    request_id = int.from_bytes(frame[1:ROOM_AT], "big")
    if kind == JOIN:
        return Request(JOIN, request_id, frame[ROOM_AT:].decode())
    if len(frame) == ROOM_AT:
        raise ValueError("a publish frame without its room length")
    payload_at = ROOM_AT + 1 + frame[ROOM_AT]
    if len(frame) < payload_at:
        raise ValueError("a publish frame shorter than its room")
    return Request(PUBLISH, request_id, frame[ROOM_AT + 1 : payload_at].decode(), frame[payload_at:])


def acked_request_id(frame: bytes) -> int:
    """The request id an ack frame answers."""
    return int.from_bytes(frame[1:ROOM_AT], "big")
