"""Edits and deletes over the Connect stream: author only, schema checked, announced, in the log."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

from parley import Client, EventChange
from parley.errors import ParleyError
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from parley.values import to_value
from services import allinone
from services.history.servicer import HistoryServicer
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import stream
from tests.support import make_config, running

TEXT = {"type": "object", "required": ["text"], "properties": {"text": {"type": "string", "minLength": 1}}}
ROOMS = [
    RoomDefinition(
        id="chat",
        events=[
            EventDefinition(name="message", schema=TEXT, history=HistorySettings(enabled=True)),
            EventDefinition(name="note", history=HistorySettings(enabled=True)),
            EventDefinition(name="typing"),
        ],
    )
]


@pytest.fixture
async def server_address(data_dir: Path) -> AsyncIterator[str]:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (_, address):
        yield address


@pytest.fixture
async def pair(server_address: str, tmp_path: Path) -> AsyncIterator[tuple[Client, Client]]:
    async with (
        Client(server_address, username="ada", key_file=tmp_path / "a.json") as ada,
        Client(server_address, username="ben", key_file=tmp_path / "b.json") as ben,
    ):
        yield ada, ben


def collect(room_changes: list[EventChange], arrived: asyncio.Event) -> Callable[[EventChange], None]:
    def handler(change: EventChange) -> None:
        room_changes.append(change)
        arrived.set()

    return handler


async def wait_for(changes: list[EventChange], arrived: asyncio.Event, count: int) -> None:
    while len(changes) < count:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 5)


async def test_an_edit_and_a_delete_reach_members_and_the_log(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    edited: list[EventChange] = []
    deleted: list[EventChange] = []
    arrived = asyncio.Event()
    theirs.on_edited(collect(edited, arrived))
    theirs.on_deleted(collect(deleted, arrived))
    first = await mine.trigger("message", {"text": "helo"})
    second = await mine.trigger("message", {"text": "oops"})

    change = await mine.edit(first.handle, {"text": "hello"})
    assert (change.seq, change.deleted, change.data) == (first.seq, False, {"text": "hello"})
    await wait_for(edited, arrived, 1)
    assert edited[0] == change
    assert edited[0].time_ms > 0

    gone = await mine.delete(second.handle)
    assert (gone.seq, gone.deleted, gone.data) == (second.seq, True, None)
    await wait_for(deleted, arrived, 1)
    assert deleted[0].handle == second.handle

    log = await ben.history("chat")
    expected = [(second.seq, True, None), (first.seq, False, {"text": "hello"})]
    assert [(e.seq, e.deleted, e.data) for e in log] == expected
    assert log[1].edit_time_ms == change.time_ms


async def test_only_the_sender_may_change_an_event(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    sent = await mine.trigger("message", {"text": "mine"})
    for attempt in (theirs.edit(sent.handle, {"text": "yours now"}), theirs.delete(sent.handle)):
        with pytest.raises(ParleyError) as refused:
            await attempt
        assert (refused.value.code, refused.value.reason) == (grpc.StatusCode.PERMISSION_DENIED, "NOT_AUTHOR")
    assert (await ada.history("chat"))[0].data == {"text": "mine"}


async def test_an_edit_must_pass_the_schema_and_name_a_kept_event(pair: tuple[Client, Client]) -> None:
    ada, _ = pair
    room = await ada.join("chat")
    sent = await room.trigger("message", {"text": "valid"})
    with pytest.raises(ParleyError) as invalid:
        await room.edit(sent.handle, {"text": ""})
    assert invalid.value.reason == "VALIDATION_FAILED"
    note = await room.trigger("note", {"any": "shape"})
    assert (await room.edit(note.handle, [1, 2, 3])).data == [1, 2, 3]

    transient = await room.trigger("typing", {})
    for handle in (transient.handle, "no-such-handle"):
        with pytest.raises(ParleyError) as missing:
            await room.edit(handle, {"text": "x"})
        assert missing.value.reason == "EVENT_NOT_FOUND"
    await room.delete(sent.handle)
    with pytest.raises(ParleyError) as twice:
        await room.delete(sent.handle)
    assert twice.value.reason == "EVENT_NOT_FOUND"
    with pytest.raises(ParleyError) as empty:
        await room.edit("", {"text": "x"})
    assert empty.value.reason == "VALIDATION_FAILED"


async def test_changes_go_only_to_members_subscribed_to_the_event(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    await theirs.unsubscribe()
    await theirs.subscribe("note")
    changes: list[EventChange] = []
    arrived = asyncio.Event()
    theirs.on_edited(collect(changes, arrived))
    message = await mine.trigger("message", {"text": "unseen"})
    note = await mine.trigger("note", 1)
    await mine.edit(message.handle, {"text": "still unseen"})
    await mine.edit(note.handle, 2)
    await wait_for(changes, arrived, 1)
    assert [c.handle for c in changes] == [note.handle]


async def test_changing_needs_the_room_joined(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    sent = await (await ada.join("chat")).trigger("message", {"text": "hi"})
    room = await ben.join("chat")
    await room.leave()
    with pytest.raises(ParleyError) as outside:
        await room.delete(sent.handle)
    assert outside.value.reason == "NOT_IN_ROOM"


async def test_a_resume_replays_changes_to_events_seen_before(pair: tuple[Client, Client]) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    changes: list[EventChange] = []
    arrived = asyncio.Event()
    theirs.on_edited(collect(changes, arrived))
    theirs.on_deleted(collect(changes, arrived))
    first, second = await mine.trigger_batch([("message", {"text": "a"}, None), ("message", {"text": "b"}, None)])
    seen = theirs.events()
    assert [(await asyncio.wait_for(anext(seen), 5)).seq for _ in range(2)] == [first.seq, second.seq]
    await ben.close()  # ben is away while the events change
    edited = await mine.edit(first.handle, {"text": "a, edited"})
    deleted = await mine.delete(second.handle)
    assert (edited.seq, deleted.seq) == (first.seq, second.seq)
    again = await ben.join("chat")
    await wait_for(changes, arrived, 2)
    assert again.recovered
    assert [(c.handle, c.deleted, c.data) for c in changes] == [
        (first.handle, False, {"text": "a, edited"}),
        (second.handle, True, None),
    ]
    # Each change has its own place in the log, after the events: 3 and 4.
    assert [c.change_seq for c in changes] == [edited.change_seq, deleted.change_seq] == [3, 4]
    assert again.last_seq == changes[-1].change_seq


@pytest.mark.parametrize("edit_lands", ["before the read", "after the read"])
async def test_a_change_during_a_resume_arrives_once(
    pair: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, edit_lands: str
) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    changes: list[EventChange] = []
    arrived = asyncio.Event()
    theirs.on_edited(collect(changes, arrived))
    sent = await mine.trigger("message", {"text": "v1"})
    assert (await asyncio.wait_for(anext(theirs.events()), 5)).seq == sent.seq
    await ben.close()

    read = HistoryServicer.since

    async def slow_read(self: HistoryServicer, request: history_pb2.ListEventsSinceRequest) -> Any:
        # The resume's read of the log is slow: the edit lands before or after it, while live events are held.
        if edit_lands == "before the read":
            await asyncio.sleep(0.3)
            return await read(self, request)
        result = await read(self, request)
        await asyncio.sleep(0.3)
        return result

    monkeypatch.setattr(HistoryServicer, "since", slow_read)
    joining = asyncio.create_task(ben.join("chat"))
    await asyncio.sleep(0.1)
    await mine.edit(sent.handle, {"text": "v2"})
    again = await joining
    await wait_for(changes, arrived, 1)
    await asyncio.sleep(0.2)  # a second copy would have come by now
    assert [(c.handle, c.data) for c in changes] == [(sent.handle, {"text": "v2"})]
    assert again.recovered
    assert again.last_seq == changes[0].change_seq


async def test_a_delete_during_a_plain_join_is_not_lost(
    pair: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, server_address: str
) -> None:
    ada, ben = pair
    mine = await ada.join("chat")
    read = HistoryServicer.since

    async def slow_read(self: HistoryServicer, request: history_pb2.ListEventsSinceRequest) -> Any:
        await asyncio.sleep(0.3)  # the publish and the delete land while live events are held
        return await read(self, request)

    monkeypatch.setattr(HistoryServicer, "since", slow_read)
    async with stream(server_address, await ben.access_token()) as s:
        joining = asyncio.create_task(s.join("chat"))
        await asyncio.sleep(0.1)
        sent = await mine.trigger("message", {"text": "secret"})
        await mine.delete(sent.handle)
        await joining
        held = await s.next_event()  # the event, held during the read, then its delete
        change = (await s.next_other("event_changed")).event_changed
    assert (held.handle, change.handle, change.kind) == (
        sent.handle,
        sent.handle,
        gateway_pb2.EventChanged.KIND_DELETED,
    )


async def test_a_resume_keeps_the_subscriptions_the_client_had(
    pair: tuple[Client, Client], server_address: str
) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    assert await theirs.unsubscribe("note") == ["*", "-note"]
    await ben.close()
    await mine.trigger("note", {"skip": "me"})
    kept = await mine.trigger("message", {"text": "for ben"})
    again = await ben.join("chat")
    assert (again.recovered, again.subscriptions) == (True, ["*", "-note"])
    replayed = await asyncio.wait_for(anext(again.events()), 5)
    assert replayed.handle == kept.handle  # the note was not replayed: ben had unsubscribed from it
    async with stream(server_address, await ben.access_token()) as s:
        for names, field in ((["-note"], "subscriptions"), (["no way"], "subscriptions[0]")):
            refused = await s.command(join=gateway_pb2.JoinCommand(room_id="chat", subscriptions=names))
            assert (refused.status.reason, refused.status.metadata["field"]) == ("VALIDATION_FAILED", field)


async def test_a_change_waits_for_a_publish_that_took_an_earlier_sequence(
    pair: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, server_address: str, tmp_path: Path
) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    sent = await mine.trigger("message", {"text": "v1"})
    seen: list[tuple[str, int]] = []
    arrived = asyncio.Event()

    def record(kind: str, seq: int) -> None:
        seen.append((kind, seq))
        arrived.set()

    await asyncio.sleep(0.1)  # the first event has reached ben
    theirs.on("message", lambda event: record("event", event.seq))
    theirs.on_edited(lambda change: record("edit", change.change_seq))
    append = HistoryServicer.append

    async def slow_answer(self: HistoryServicer, request: history_pb2.AppendEventsRequest) -> Any:
        answer = await append(self, request)  # the sequence is taken and durable...
        await asyncio.sleep(0.3)  # ...but the gateway hears of it after the edit's, which comes next
        return answer

    # Ada publishes from one connection and edits from another (one connection's commands run in turn).
    async with Client(server_address, username="ada", key_file=tmp_path / "a.json") as ada_elsewhere:
        editing_room = await ada_elsewhere.join("chat")
        monkeypatch.setattr(HistoryServicer, "append", slow_answer)
        publishing = asyncio.create_task(mine.trigger("message", {"text": "meanwhile"}))
        await asyncio.sleep(0.1)
        change = await editing_room.edit(sent.handle, {"text": "v2"})
        published = await publishing
    assert change.change_seq == published.seq + 1
    while len(seen) < 2:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 5)
    # Members get the log's order: a client stopped between the two resumes after the event, not past it.
    assert seen == [("event", published.seq), ("edit", change.change_seq)]


async def test_a_publish_is_delivered_even_if_its_sender_is_gone_before_it_is_sequenced(
    pair: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, server_address: str
) -> None:
    ada, ben = pair
    theirs = await ben.join("chat")
    append = HistoryServicer.append

    async def slow_append(self: HistoryServicer, request: history_pb2.AppendEventsRequest) -> Any:
        await asyncio.sleep(0.3)
        return await append(self, request)

    monkeypatch.setattr(HistoryServicer, "append", slow_append)
    async with stream(server_address, await ada.access_token()) as s:
        await s.join("chat")
        s.send_raw(
            gateway_pb2.ConnectRequest(
                request_id="last-words",
                publish=gateway_pb2.PublishCommand(
                    room_id="chat",
                    events=[gateway_pb2.OutgoingEvent(event="message", payload=to_value({"text": "bye"}))],
                ),
            )
        )
        await asyncio.sleep(0.1)  # the publish waits for its sequence when the stream goes
    # The sequence was taken and the event kept: it reaches the room too, not only the log.
    delivered = await asyncio.wait_for(anext(theirs.events()), 5)
    assert delivered.data == {"text": "bye"}
    assert [e.seq for e in await ben.history("chat")] == [delivered.seq]


async def test_an_edit_is_announced_even_if_its_author_is_gone_before_it_is_made(
    pair: tuple[Client, Client], monkeypatch: pytest.MonkeyPatch, server_address: str
) -> None:
    ada, ben = pair
    mine, theirs = await ada.join("chat"), await ben.join("chat")
    sent = await mine.trigger("message", {"text": "v1"})
    changes: list[EventChange] = []
    arrived = asyncio.Event()
    theirs.on_edited(collect(changes, arrived))
    edit = HistoryServicer.edit

    async def slow_edit(self: HistoryServicer, request: history_pb2.EditEventRequest) -> Any:
        await asyncio.sleep(0.3)
        return await edit(self, request)

    monkeypatch.setattr(HistoryServicer, "edit", slow_edit)
    async with stream(server_address, await ada.access_token()) as s:
        await s.join("chat")
        s.send_raw(
            gateway_pb2.ConnectRequest(
                request_id="last-edit",
                edit=gateway_pb2.EditCommand(room_id="chat", handle=sent.handle, payload=to_value({"text": "v2"})),
            )
        )
        await asyncio.sleep(0.1)  # the edit is under way when the stream goes
    await wait_for(changes, arrived, 1)
    assert changes[0].data == {"text": "v2"}
