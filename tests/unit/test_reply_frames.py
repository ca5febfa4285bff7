"""Replies ready together leave in one frame (ConnectResponse.replies), a lone one as `reply`;
events keep their place."""

from __future__ import annotations

from parley.gateway.v1 import gateway_pb2
from services.gateway import wire
from services.gateway.outbox import EVENT, REPLY, FlushScheduler, Outbox


def reply_item(request_id: str) -> bytes:
    return wire.batch_item(gateway_pb2.Reply(request_id=request_id).SerializeToString())


def decoded(frames: list[bytes] | None) -> list[gateway_pb2.ConnectResponse]:
    assert frames is not None
    return [gateway_pb2.ConnectResponse.FromString(frame) for frame in frames]


async def test_replies_ready_together_share_a_frame_and_a_lone_one_is_a_reply() -> None:
    outbox = Outbox(FlushScheduler(60), 10**6, 10**6)
    for request_id in ("a", "b", "c"):
        outbox.put(REPLY, reply_item(request_id), urgent=True)
    (batch,) = decoded(await outbox.next_frames())
    assert [reply.request_id for reply in batch.replies.replies] == ["a", "b", "c"]
    outbox.put(REPLY, reply_item("d"), urgent=True)
    (lone,) = decoded(await outbox.next_frames())
    assert lone.WhichOneof("frame") == "reply"
    assert lone.reply.request_id == "d"


async def test_events_between_replies_keep_their_place() -> None:
    outbox = Outbox(FlushScheduler(60), 10**6, 10**6)
    event = gateway_pb2.Event(room_id="r", seq=1).SerializeToString()
    outbox.put(REPLY, reply_item("a"), urgent=True)
    outbox.put(EVENT, wire.batch_item(event), urgent=True)
    outbox.put(REPLY, reply_item("b"), urgent=True)
    frames = decoded(await outbox.next_frames())
    assert [frame.WhichOneof("frame") for frame in frames] == ["reply", "events", "reply"]
