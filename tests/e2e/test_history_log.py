"""The history service's log through real RPCs: appends, idempotency, pages."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.history.v1 import history_pb2, history_pb2_grpc
from parley.values import to_value
from services import allinone
from tests.support import SERVICE_SECRET, bearer, error_reason, make_config, running

SERVICE = bearer(f"svc:backend:{SERVICE_SECRET}")


def new_event(n: int, event: str = "message", key: str = "") -> history_pb2.NewEvent:
    return history_pb2.NewEvent(
        event=event, payload=to_value({"n": n}), sender="u1", time_ms=n, handle=f"h{n}", idempotency_key=key
    )


# Every test runs with the hot buffer as configured by default, small enough that
# pages cross from memory to the store and rooms are evicted, and turned off.
HOT_BUFFERS = {
    "hot-default": {},
    "hot-small": {"history.hot_events_per_name": 7, "history.hot_buffer_bytes": 3000},
    "hot-off": {"history.hot_events_per_name": 0},
}


@pytest.fixture(params=list(HOT_BUFFERS))
async def history(data_dir: Path, request: pytest.FixtureRequest) -> AsyncIterator[history_pb2_grpc.HistoryServiceStub]:
    async with running(allinone.create_server, make_config(data_dir, **HOT_BUFFERS[request.param])) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            yield history_pb2_grpc.HistoryServiceStub(channel)


async def append(
    stub: history_pb2_grpc.HistoryServiceStub, room: str, *events: history_pb2.NewEvent
) -> history_pb2.AppendEventsResponse:
    response: history_pb2.AppendEventsResponse = await stub.AppendEvents(
        history_pb2.AppendEventsRequest(room_id=room, events=events), metadata=SERVICE
    )
    return response


async def test_concurrent_appends_get_gap_free_sequences(history: history_pb2_grpc.HistoryServiceStub) -> None:
    results = await asyncio.gather(*(append(history, "busy", new_event(n), new_event(n)) for n in range(200)))
    seqs = sorted(a.seq for r in results for a in r.appended)
    assert seqs == list(range(1, 401))
    assert len({r.epoch for r in results}) == 1
    for r in results:
        first, second = r.appended
        assert second.seq == first.seq + 1  # one request's events stay together
    state = await history.GetLogState(history_pb2.GetLogStateRequest(room_id="busy"), metadata=SERVICE)
    assert state.state.last_seq == 400


async def test_a_retry_with_the_same_key_is_stored_once(history: history_pb2_grpc.HistoryServiceStub) -> None:
    first = await append(history, "r", new_event(1, key="abc"))
    retry = await append(history, "r", new_event(1, key="abc"))
    assert (retry.appended[0].seq, retry.appended[0].duplicate) == (first.appended[0].seq, True)
    page = await history.ListEvents(history_pb2.ListEventsRequest(room_id="r"), metadata=SERVICE)
    assert len(page.events) == 1


@pytest.mark.parametrize("key", ["k" * 129, "a\x00b", "line\nbreak"])
async def test_an_idempotency_key_every_store_can_keep_or_a_named_refusal(
    history: history_pb2_grpc.HistoryServiceStub, key: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await append(history, "r", new_event(1), new_event(2, key=key))
    assert error_reason(caught.value) == "VALIDATION_FAILED"
    assert (caught.value.details() or "").startswith("events[1].idempotency_key:")
    # Nothing of the request was appended, and the log goes on.
    assert (await append(history, "r", new_event(3, key="k" * 128))).appended[0].seq == 1


async def test_pages_by_cursor_and_offset_over_ten_thousand_events(
    history: history_pb2_grpc.HistoryServiceStub,
) -> None:
    for chunk in range(10):
        await append(
            history,
            "big",
            *(new_event(n, "typing" if n % 4 == 0 else "message") for n in range(chunk * 1000, chunk * 1000 + 1000)),
        )
    seen: list[int] = []
    token = ""
    while True:
        page = await history.ListEvents(
            history_pb2.ListEventsRequest(room_id="big", page_size=500, page_token=token), metadata=SERVICE
        )
        seen += [e.seq for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert seen == list(range(10_000, 0, -1))
    typing: list[int] = []
    token = ""
    while True:
        page = await history.ListEvents(
            history_pb2.ListEventsRequest(room_id="big", event="typing", page_size=300, page_token=token),
            metadata=SERVICE,
        )
        assert all(e.event == "typing" for e in page.events)
        typing += [e.seq for e in page.events]
        token = page.next_page_token
        if not token:
            break
    assert typing == [s for s in range(10_000, 0, -1) if (s - 1) % 4 == 0]
    window = await history.ListEvents(
        history_pb2.ListEventsRequest(room_id="big", event="message", range=history_pb2.OffsetRange(start=3, end=8)),
        metadata=SERVICE,
    )
    messages = [s for s in range(10_000, 0, -1) if (s - 1) % 4 != 0]
    assert [e.seq for e in window.events] == messages[3:8]
    assert window.last_seq == 10_000
    below = await history.ListEvents(
        history_pb2.ListEventsRequest(room_id="big", before_seq=11, page_size=3), metadata=SERVICE
    )
    assert [e.seq for e in below.events] == [10, 9, 8]
    assert below.events[0].payload.struct_value.fields["n"].number_value == 9


async def test_page_sizes_are_clamped_and_bad_input_named(history: history_pb2_grpc.HistoryServiceStub) -> None:
    await append(history, "small", *(new_event(n) for n in range(600)))
    default = await history.ListEvents(history_pb2.ListEventsRequest(room_id="small"), metadata=SERVICE)
    huge = await history.ListEvents(history_pb2.ListEventsRequest(room_id="small", page_size=10_000), metadata=SERVICE)
    assert (len(default.events), len(huge.events)) == (100, 500)
    for request, field in [
        (history_pb2.ListEventsRequest(room_id="small", page_token="nope"), "page_token"),
        (history_pb2.ListEventsRequest(room_id="small", range=history_pb2.OffsetRange(start=5, end=5)), "range"),
        (history_pb2.ListEventsRequest(room_id=""), "room_id"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await history.ListEvents(request, metadata=SERVICE)
        assert error_reason(caught.value) == "VALIDATION_FAILED"
        assert (caught.value.details() or "").startswith(f"{field}:")


async def test_retention_is_set_per_room_and_bad_input_named(history: history_pb2_grpc.HistoryServiceStub) -> None:
    def request(*rooms: history_pb2.RoomRetention) -> history_pb2.SetRetentionRequest:
        return history_pb2.SetRetentionRequest(rooms=rooms)

    keep_two = history_pb2.EventRetention(event="message", keep_last=2)
    await history.SetRetention(request(history_pb2.RoomRetention(room_id="r", events=[keep_two])), metadata=SERVICE)
    for bad, field in [
        (request(history_pb2.RoomRetention(room_id="")), "rooms[0].room_id"),
        (request(history_pb2.RoomRetention(room_id="r", events=[history_pb2.EventRetention()])), "rooms[0].events[0]"),
        (request(*[history_pb2.RoomRetention(room_id=f"r{i}") for i in range(1001)]), "rooms"),
    ]:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await history.SetRetention(bad, metadata=SERVICE)
        assert error_reason(caught.value) == "VALIDATION_FAILED"
        assert (caught.value.details() or "").startswith(field)


async def test_only_services_append(data_dir: Path, tmp_path: Path) -> None:
    async with running(allinone.create_server, make_config(data_dir)) as (_, address):
        async with Client(address, username="val", key_file=tmp_path / "v.json") as val:
            stub = history_pb2_grpc.HistoryServiceStub(val._auth.channel())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.AppendEvents(
                    history_pb2.AppendEventsRequest(room_id="r", events=[new_event(1)]),
                    metadata=bearer(await val.access_token()),
                )
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert error_reason(caught.value) == "SERVICE_ONLY"


async def test_the_log_survives_a_restart(data_dir: Path) -> None:
    config = make_config(data_dir)
    async with running(allinone.create_server, config) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            first = await append(history_pb2_grpc.HistoryServiceStub(channel), "kept", new_event(1), new_event(2))
    async with running(allinone.create_server, config) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = history_pb2_grpc.HistoryServiceStub(channel)
            page = await stub.ListEvents(history_pb2.ListEventsRequest(room_id="kept"), metadata=SERVICE)
            assert [e.seq for e in page.events] == [2, 1]
            assert page.epoch == first.epoch
            more = await append(stub, "kept", new_event(3))
            assert more.appended[0].seq == 3


async def test_edit_and_delete_by_handle_keep_sequences(history: history_pb2_grpc.HistoryServiceStub) -> None:
    await append(history, "talk", new_event(1), new_event(2), new_event(3))
    edited = await history.EditEvent(
        history_pb2.EditEventRequest(room_id="talk", handle="h2", payload=to_value({"n": 22}), editor="u1"),
        metadata=SERVICE,
    )
    assert (edited.event.seq, edited.event.edit_time_ms > 0) == (2, True)
    deleted = await history.DeleteEvent(
        history_pb2.DeleteEventRequest(room_id="talk", handle="h3", editor="u1"), metadata=SERVICE
    )
    assert (deleted.event.seq, deleted.event.deleted) == (3, True)
    page = await history.ListEvents(history_pb2.ListEventsRequest(room_id="talk"), metadata=SERVICE)
    by_seq = {e.seq: e for e in page.events}
    assert sorted(by_seq) == [1, 2, 3]  # the tombstone keeps the sequence gap-free
    assert by_seq[2].payload.struct_value.fields["n"].number_value == 22
    assert by_seq[2].edit_time_ms > 0
    assert (by_seq[3].deleted, by_seq[3].HasField("payload"), by_seq[3].handle) == (True, False, "h3")
    assert by_seq[1].edit_time_ms == 0


async def test_only_the_sender_changes_an_event(history: history_pb2_grpc.HistoryServiceStub) -> None:
    await append(history, "talk", new_event(1))
    for call in (
        history.EditEvent(
            history_pb2.EditEventRequest(room_id="talk", handle="h1", payload=to_value(0), editor="someone-else"),
            metadata=SERVICE,
        ),
        history.DeleteEvent(history_pb2.DeleteEventRequest(room_id="talk", handle="h1", editor="u2"), metadata=SERVICE),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as denied:
            await call
        assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert error_reason(denied.value) == "NOT_AUTHOR"


async def test_unknown_or_deleted_events_are_not_found(history: history_pb2_grpc.HistoryServiceStub) -> None:
    await append(history, "talk", new_event(1))
    await history.DeleteEvent(
        history_pb2.DeleteEventRequest(room_id="talk", handle="h1", editor="u1"), metadata=SERVICE
    )
    for handle in ("h1", "nope"):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await history.EditEvent(
                history_pb2.EditEventRequest(room_id="talk", handle=handle, payload=to_value(1), editor="u1"),
                metadata=SERVICE,
            )
        assert error_reason(missing.value) == "EVENT_NOT_FOUND"
