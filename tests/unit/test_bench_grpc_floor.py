"""The grpc.aio floor's frames (bench/grpc_floor_wire.py): what a client writes comes back as it was sent."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench import grpc_floor_wire as wire
from bench.fanout_wire import payload

REQUEST_IDS = st.integers(min_value=0, max_value=2**32 - 1)
ROOMS = st.text(max_size=60)


@given(REQUEST_IDS, ROOMS)
def test_a_join_comes_back_with_its_request_id_and_room(request_id: int, room: str) -> None:
    assert wire.parse_request(wire.join(request_id, room)) == wire.Request(wire.JOIN, request_id, room)


@given(REQUEST_IDS, ROOMS, st.binary(max_size=300))
def test_a_publish_comes_back_with_its_request_id_room_and_payload(request_id: int, room: str, data: bytes) -> None:
    parsed = wire.parse_request(wire.publish(request_id, room, data))
    assert parsed == wire.Request(wire.PUBLISH, request_id, room, data)


def test_a_benchmark_payload_travels_as_one_event_frame() -> None:
    data = payload("42", 7)
    frame = wire.event(data.encode())
    assert frame[:1] == wire.EVENT
    assert frame[1:].decode() == data


@given(REQUEST_IDS)
def test_an_ack_names_the_request_it_answers(request_id: int) -> None:
    frame = wire.ack(request_id)
    assert frame[:1] == wire.ACK
    assert wire.acked_request_id(frame) == request_id


def test_a_room_name_longer_than_its_length_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 255"):
        wire.publish(1, "r" * 256, b"x")


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"J\x00\x00", id="short request id"),
        pytest.param(wire.ack(1), id="an ack"),
        pytest.param(b"X\x00\x00\x00\x01room", id="unknown kind"),
        pytest.param(b"P\x00\x00\x00\x01", id="publish without room length"),
        pytest.param(b"P\x00\x00\x00\x01\x05ro", id="publish shorter than its room"),
    ],
)
def test_what_is_not_a_join_or_publish_frame_is_refused(frame: bytes) -> None:
    with pytest.raises(ValueError, match="frame"):
        wire.parse_request(frame)
