"""The SDK's outbox: order, limit, idempotency keys, and the file that keeps pending sends."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from parley.gateway.v1 import gateway_pb2
from parley.outbox import Outbox, OutboxFullError, SendStatus


def publish(room: str, *events: str, key: str = "") -> gateway_pb2.ConnectRequest:
    return gateway_pb2.ConnectRequest(
        publish=gateway_pb2.PublishCommand(
            room_id=room, events=[gateway_pb2.OutgoingEvent(event=e, idempotency_key=key) for e in events]
        )
    )


def test_every_published_event_gets_a_key_unless_it_has_one() -> None:
    outbox = Outbox()
    send = outbox.new("chat", publish("chat", "a", "b"))
    keys = send.idempotency_keys
    assert len(keys) == 2
    assert all(len(k) == 32 for k in keys)
    assert keys[0] != keys[1]
    assert outbox.new("chat", publish("chat", "c", key="mine")).idempotency_keys == ["mine"]


def test_sends_keep_their_order_and_the_limit_is_a_clear_error() -> None:
    outbox = Outbox(limit=3)
    made = [outbox.new("chat", publish("chat", str(n))) for n in range(3)]
    with pytest.raises(OutboxFullError, match="3 pending sends"):
        outbox.new("chat", publish("chat", "3"))
    assert [s.id for s in outbox.unsent()] == [s.id for s in made]
    outbox.on_wire(made[0])
    assert outbox.unsent_count("chat") == 2
    assert [s.id for s in outbox.unsent()] == [s.id for s in made[1:]]
    outbox.off_wire(made[0])  # its stream ended before the answer
    assert [s.id for s in outbox.unsent()] == [s.id for s in made]
    outbox.finish(made[0], gateway_pb2.Reply(), None)
    assert made[0].status is SendStatus.SENT
    assert len(outbox) == 2
    outbox.new("chat", publish("chat", "room again"))


async def test_a_finished_send_wakes_its_waiters_with_the_outcome() -> None:
    outbox = Outbox()
    send = outbox.new("chat", publish("chat", "a"))
    reply = gateway_pb2.Reply(request_id="c1")
    outbox.finish(send, reply, None)
    assert await send == reply
    assert send.retries == 0


def test_the_file_keeps_pending_sends_in_order_across_restarts(tmp_path: Path) -> None:
    path = tmp_path / "state" / "outbox.jsonl"
    first = Outbox(path=path)
    made = [first.new("chat", publish("chat", str(n))) for n in range(4)]
    first.finish(made[1], gateway_pb2.Reply(), None)
    first.close()
    assert path.stat().st_mode & 0o777 == 0o600

    second = Outbox(path=path)
    restored = list(second)
    assert [s.id for s in restored] == [made[0].id, made[2].id, made[3].id]
    assert all(s.restored for s in restored)
    assert [s.request.publish.events[0].event for s in restored] == ["0", "2", "3"]
    assert restored[0].idempotency_keys == made[0].idempotency_keys  # the same key: stored once
    second.close()
    assert len(path.read_text().splitlines()) == 3  # compacted: struck-off sends are gone


def test_a_line_cut_short_by_a_crash_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "outbox.jsonl"
    first = Outbox(path=path)
    kept = first.new("chat", publish("chat", "kept"))
    first.close()
    with open(path, "a") as handle:
        handle.write('{"op": "add", "id": "cut sh')
    second = Outbox(path=path)
    assert [s.id for s in second] == [kept.id]
    second.close()
    assert all(json.loads(line)["op"] == "add" for line in path.read_text().splitlines())


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Outbox(limit=0)
