"""A change whose caller stops waiting still lands in the store and in the hot buffer alike."""

from __future__ import annotations

import asyncio
from pathlib import Path

from parley.history.v1 import history_pb2
from parley.values import to_value
from services.history.server import history_parts
from tests.storage_support import storage_config

pytest_plugins = ["tests.storage_backends"]


async def test_a_cancelled_delete_is_mirrored_in_the_hot_buffer(tmp_path: Path, storage_url: str) -> None:
    module, servicer = await history_parts(storage_config(tmp_path, storage_url))
    try:
        event = history_pb2.NewEvent(event="msg", payload=to_value("hi"), sender="u", handle="h1")
        await servicer.append(history_pb2.AppendEventsRequest(room_id="r", events=[event]))

        async def page() -> history_pb2.ListEventsResponse:
            encoded = await servicer.ListEvents(history_pb2.ListEventsRequest(room_id="r"), None)  # type: ignore[arg-type]
            return history_pb2.ListEventsResponse.FromString(encoded)

        assert not (await page()).events[0].deleted  # served from memory: the room is held
        deleting = asyncio.ensure_future(
            servicer.delete(history_pb2.DeleteEventRequest(room_id="r", handle="h1", editor="u"))
        )
        await asyncio.sleep(0)  # the transaction is under way
        deleting.cancel()
        await asyncio.sleep(0.2)
        stored = await servicer.get(history_pb2.GetEventRequest(room_id="r", handle="h1"))
        held = await page()
        assert stored.event.deleted
        assert (held.events[0].deleted, held.last_seq) == (True, 2)
    finally:
        await module.close()
