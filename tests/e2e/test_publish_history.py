"""The publish path through the history log: sequences, kept events, retries."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from parley import Client
from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2, history_pb2_grpc
from services import allinone
from services.runtime.config import EventDefinition, HistorySettings, RoomDefinition
from tests.streams import stream, value
from tests.support import bearer, make_config, running

ROOMS = [
    RoomDefinition(
        id="chat",
        events=[EventDefinition(name="message", history=HistorySettings(enabled=True)), EventDefinition(name="typing")],
    )
]


@pytest.fixture
async def server(data_dir: Path, tmp_path: Path) -> AsyncIterator[tuple[str, Client, Client]]:
    async with running(allinone.create_server, make_config(data_dir, rooms=ROOMS)) as (_, address):
        async with (
            Client(address, username="ada", key_file=tmp_path / "a.json") as ada,
            Client(address, username="ben", key_file=tmp_path / "b.json") as ben,
        ):
            yield address, ada, ben


async def test_sequences_come_from_the_log_and_only_history_events_are_kept(
    server: tuple[str, Client, Client],
) -> None:
    address, ada, _ = server
    async with stream(address, await ada.access_token()) as s:
        await s.join("chat")
        seqs = []
        for name in ("message", "typing", "message", "typing"):
            reply = await s.publish("chat", name, {"text": name})
            seqs += list(reply.publish.seqs)
        assert seqs == [1, 2, 3, 4]
        delivered = [await s.next_event() for _ in range(4)]
        assert [e.seq for e in delivered] == [1, 2, 3, 4]
    async with grpc.aio.insecure_channel(address) as channel:
        page = await history_pb2_grpc.HistoryServiceStub(channel).ListEvents(
            history_pb2.ListEventsRequest(room_id="chat"), metadata=bearer(await ada.access_token())
        )
    assert [(e.seq, e.event) for e in page.events] == [(3, "message"), (1, "message")]
    assert page.last_seq == 4
    assert page.events[0].handle == delivered[2].handle


async def test_a_retried_publish_is_stored_and_delivered_once(server: tuple[str, Client, Client]) -> None:
    address, ada, ben = server
    async with stream(address, await ada.access_token()) as a, stream(address, await ben.access_token()) as b:
        await a.join("chat")
        await b.join("chat")
        outgoing = gateway_pb2.OutgoingEvent(event="message", payload=value({"text": "once"}), idempotency_key="k-1")
        first = await a.ok(publish=gateway_pb2.PublishCommand(room_id="chat", events=[outgoing]))
        retry = await a.ok(publish=gateway_pb2.PublishCommand(room_id="chat", events=[outgoing]))
        assert (retry.publish.seqs, retry.publish.handles) == (first.publish.seqs, first.publish.handles)
        assert retry.publish.recipients == 0
        assert (await b.next_event()).seq == first.publish.seqs[0]
        await b.no_event()
