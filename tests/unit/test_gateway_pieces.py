"""Pure parts of the gateway: wire framing, outboxes, interests, subject rules."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from parley.gateway.v1 import gateway_pb2
from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.connections import Interest
from services.gateway.outbox import FlushScheduler, Outbox, SlowConsumer
from services.gateway.subjects import check_subscription_owner
from services.runtime.errors import ServiceError
from services.runtime.protowire import varint

events = st.builds(
    gateway_pb2.Event,
    room_id=st.text(max_size=20),
    event=st.text(max_size=20),
    sender=st.text(max_size=20),
    seq=st.integers(min_value=0, max_value=2**63),
    handle=st.text(max_size=20),
)


@settings(max_examples=100, deadline=None)
@given(st.lists(events, min_size=1, max_size=30))
def test_a_frame_of_concatenated_events_decodes_as_an_event_batch(batch: list[gateway_pb2.Event]) -> None:
    frame = wire.events_frame([wire.batch_item(e.SerializeToString()) for e in batch])
    decoded = gateway_pb2.ConnectResponse.FromString(frame)
    assert decoded.WhichOneof("frame") == "events"
    assert list(decoded.events.events) == batch


@given(st.integers(min_value=0, max_value=2**64 - 1) | st.sampled_from([1, 127, 128, 255, 16383, 16384, 2**21]))
def test_varint_matches_protobuf(value: int) -> None:
    encoded = gateway_pb2.Event(seq=value).SerializeToString()
    expected = b"\x30" + varint(value) if value else b""  # field 6, varint; 0 is not sent
    assert encoded == expected


async def test_outbox_batches_events_between_frames() -> None:
    outbox = Outbox(FlushScheduler(0.001), max_bytes=10_000, max_frame_bytes=10_000)
    first, second, third = (gateway_pb2.Event(seq=n).SerializeToString() for n in (1, 2, 3))
    outbox.put(kinds.EVENT, wire.batch_item(first))
    outbox.put(kinds.EVENT, wire.batch_item(second))
    reply = gateway_pb2.ConnectResponse(reply=gateway_pb2.Reply(request_id="r")).SerializeToString()
    outbox.put(kinds.FRAME, reply, urgent=True)
    outbox.put(kinds.EVENT, wire.batch_item(third))
    frames = await asyncio.wait_for(outbox.next_frames(), 1)
    assert frames is not None
    decoded = [gateway_pb2.ConnectResponse.FromString(f) for f in frames]
    assert [d.WhichOneof("frame") for d in decoded] == ["events", "reply", "events"]
    assert [e.seq for e in decoded[0].events.events] == [1, 2]
    assert outbox.pending_bytes == sum(len(f) for f in frames)  # until written
    for frame in frames:
        outbox.sent(frame)
    assert outbox.pending_bytes == 0


async def test_outbox_overflow_is_a_slow_consumer() -> None:
    overflowed: list[bool] = []
    outbox = Outbox(FlushScheduler(0.001), max_bytes=100, max_frame_bytes=100, on_cut=lambda: overflowed.append(True))
    assert outbox.put(kinds.EVENT, b"x" * 60)
    assert not outbox.put(kinds.EVENT, b"x" * 60)
    assert overflowed == [True]
    assert not outbox.put(kinds.EVENT, b"x")  # closed for good
    with pytest.raises(SlowConsumer):
        await outbox.next_frames()


async def test_outbox_finish_and_fail_send_what_is_queued_first() -> None:
    finished = Outbox(FlushScheduler(0), max_bytes=1000, max_frame_bytes=1000)
    finished.put(kinds.FRAME, b"a", urgent=True)
    finished.finish()
    assert await finished.next_frames() == [b"a"]
    assert await finished.next_frames() is None
    failed = Outbox(FlushScheduler(0), max_bytes=1000, max_frame_bytes=1000)
    failed.put(kinds.FRAME, b"b", urgent=True)
    failed.fail(ValueError("stop"))
    assert await failed.next_frames() == [b"b"]
    with pytest.raises(ValueError, match="stop"):
        await failed.next_frames()


def test_interest_all_but_some_and_some() -> None:
    interest = Interest(["*"])
    interest.remove({"typing"}, 10)
    assert (interest.wants("message"), interest.wants("typing"), interest.names()) == (True, False, ["*", "-typing"])
    interest.add({"typing"}, 10)
    assert interest.wants("typing")
    interest.set_all(False)
    assert not interest.wants("message")
    interest.add({"message"}, 10)
    assert (interest.wants("message"), interest.wants("typing"), interest.names()) == (True, False, ["message"])
    with pytest.raises(ValueError, match="at most 2"):
        interest.add({"a", "b"}, 2)
    assert interest.names() == ["message"]  # unchanged by the refused change


@pytest.mark.parametrize(
    ("pattern", "allowed"),
    [("user:me", True), ("user:you", False), ("user:*", True), ("*", True), ("presence:lobby", True)],
)
def test_user_subjects_belong_to_their_owner(pattern: str, allowed: bool) -> None:
    if allowed:
        check_subscription_owner(pattern, "me")
    else:
        with pytest.raises(ServiceError) as refused:
            check_subscription_owner(pattern, "me")
        assert refused.value.reason == "NOT_OWNER"
