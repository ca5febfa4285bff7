"""DropLog among concurrent appends: the store and the hot buffer agree, and the next log has a new epoch.

On each storage backend."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest

from parley.history.v1 import history_pb2
from parley.values import to_value
from services.history.server import history_parts
from services.history.servicer import HistoryServicer
from services.runtime.errors import ServiceError
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]


def append(servicer: HistoryServicer, n: int) -> asyncio.Future[history_pb2.AppendEventsResponse]:
    event = history_pb2.NewEvent(event="m", payload=to_value(n), sender="u", handle=f"h{n}", idempotency_key=f"k{n}")
    return asyncio.ensure_future(servicer.append(history_pb2.AppendEventsRequest(room_id="r", events=[event])))


async def held_page(servicer: HistoryServicer) -> history_pb2.ListEventsResponse:
    encoded = await servicer.ListEvents(history_pb2.ListEventsRequest(room_id="r"), None)  # type: ignore[arg-type]
    return history_pb2.ListEventsResponse.FromString(encoded)


async def test_appends_before_a_drop_go_with_it_and_later_ones_start_a_new_log(
    tmp_path: Path, storage_url: str
) -> None:
    module, servicer = await history_parts(storage_config(tmp_path, storage_url))
    try:
        first = await append(servicer, 0)
        assert [e.handle for e in (await held_page(servicer)).events] == ["h0"]  # the room is held in memory
        before = [append(servicer, n) for n in range(1, 6)]
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # their group commit is under way
        dropping = asyncio.ensure_future(servicer.drop_log(history_pb2.DropLogRequest(room_id="r")))
        await asyncio.sleep(0)
        after = [append(servicer, n) for n in range(6, 11)]
        old = await asyncio.gather(*before)
        dropped = await dropping
        new = await asyncio.gather(*after)

        assert {r.epoch for r in old} == {first.epoch}
        assert dropped.dropped_events == 6
        assert {r.epoch for r in new} != {first.epoch}
        assert [r.appended[0].seq for r in new] == [1, 2, 3, 4, 5]
        stored = await servicer.since(history_pb2.ListEventsSinceRequest(room_id="r"))
        held = await held_page(servicer)
        assert [e.handle for e in stored.events] == [f"h{n}" for n in range(6, 11)]
        assert [e.handle for e in held.events] == [f"h{n}" for n in range(10, 5, -1)]
        assert (held.epoch, held.last_seq) == (stored.epoch, stored.last_seq) == (new[0].epoch, 5)
        # The idempotency keys went with the log: a retry of an old event is a new one.
        again = await append(servicer, 1)
        assert (again.appended[0].seq, again.appended[0].duplicate) == (6, False)
    finally:
        assert module.close is not None
        await module.close()


async def test_a_cancelled_drop_still_empties_the_hot_buffer(tmp_path: Path, storage_url: str) -> None:
    module, servicer = await history_parts(storage_config(tmp_path, storage_url))
    try:
        await append(servicer, 0)
        assert len((await held_page(servicer)).events) == 1
        dropping = asyncio.ensure_future(servicer.drop_log(history_pb2.DropLogRequest(room_id="r")))
        await asyncio.sleep(0)  # the transaction is under way
        dropping.cancel()
        await asyncio.sleep(0.2)
        held = await held_page(servicer)
        state = await servicer.GetLogState(history_pb2.GetLogStateRequest(room_id="r"), None)  # type: ignore[arg-type]
        assert (list(held.events), held.epoch) == ([], "")
        assert (state.state.epoch, state.state.last_seq) == ("", 0)
    finally:
        assert module.close is not None
        await module.close()


def append_to(servicer: HistoryServicer, room_id: str, handle: str) -> asyncio.Future[history_pb2.AppendEventsResponse]:
    event = history_pb2.NewEvent(event="m", payload=to_value(handle), sender="u", handle=handle)
    return asyncio.ensure_future(servicer.append(history_pb2.AppendEventsRequest(room_id=room_id, events=[event])))


async def test_a_closed_log_refuses_appends_without_failing_the_other_rooms_in_its_group_commit(
    tmp_path: Path, storage_url: str
) -> None:
    module, servicer = await history_parts(storage_config(tmp_path, storage_url))
    try:
        await append(servicer, 0)
        await servicer.drop_log(history_pb2.DropLogRequest(room_id="r", close=True))
        committed = servicer._committer.transactions
        together = [
            append_to(servicer, "other", "o1"),
            append_to(servicer, "r", "late"),
            append_to(servicer, "other", "o2"),
        ]
        outcomes = await asyncio.gather(*together, return_exceptions=True)

        assert servicer._committer.transactions == committed + 1  # one group commit for the three
        refused = outcomes[1]
        assert isinstance(refused, ServiceError)
        assert (refused.code, refused.reason) == (grpc.StatusCode.NOT_FOUND, "ROOM_NOT_FOUND")
        others = [o for i, o in enumerate(outcomes) if i != 1]
        assert [o.appended[0].seq for o in others if isinstance(o, history_pb2.AppendEventsResponse)] == [1, 2]
        assert list((await held_page(servicer)).events) == []
        stored = await servicer.since(history_pb2.ListEventsSinceRequest(room_id="r"))
        assert (list(stored.events), stored.epoch, stored.last_seq) == ([], "", 0)
        with pytest.raises(ServiceError) as not_edited:
            await servicer.edit(history_pb2.EditEventRequest(room_id="r", handle="h0", payload=to_value(1)))
        assert not_edited.value.reason == "ROOM_NOT_FOUND"
    finally:
        assert module.close is not None
        await module.close()


async def test_reopening_only_opens_a_closed_log_and_keeps_an_open_one(tmp_path: Path, storage_url: str) -> None:
    module, servicer = await history_parts(storage_config(tmp_path, storage_url))
    try:
        kept = await append_to(servicer, "kept", "k1")
        untouched = await servicer.drop_log(history_pb2.DropLogRequest(room_id="kept", reopen_only=True))
        assert untouched.dropped_events == 0
        state = await servicer.since(history_pb2.ListEventsSinceRequest(room_id="kept"))
        assert ([e.handle for e in state.events], state.epoch) == (["k1"], kept.epoch)

        await append(servicer, 0)
        await servicer.drop_log(history_pb2.DropLogRequest(room_id="r", close=True))
        await servicer.drop_log(history_pb2.DropLogRequest(room_id="r", reopen_only=True))
        reopened = await append_to(servicer, "r", "new")
        assert reopened.appended[0].seq == 1

        with pytest.raises(ServiceError) as both:
            await servicer.drop_log(history_pb2.DropLogRequest(room_id="r", close=True, reopen_only=True))
        assert both.value.reason == "VALIDATION_FAILED"
    finally:
        assert module.close is not None
        await module.close()


async def test_a_closed_log_stays_closed_across_a_restart(tmp_path: Path, storage_url: str) -> None:
    module, servicer = await history_parts(storage_config(tmp_path, storage_url))
    try:
        await append(servicer, 0)
        await servicer.drop_log(history_pb2.DropLogRequest(room_id="r", close=True))
    finally:
        assert module.close is not None
        await module.close()
    module, servicer = await history_parts(storage_config(tmp_path, storage_url))
    try:
        with pytest.raises(ServiceError) as refused:
            await append(servicer, 1)
        assert refused.value.reason == "ROOM_NOT_FOUND"
    finally:
        assert module.close is not None
        await module.close()
