"""The gateway's per-room append pipeline: one request in flight per room, later appends merged in order,
never past the bytes one request may carry."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from google.protobuf import struct_pb2

from parley.history.v1 import history_pb2
from services.gateway.append_pipeline import MAX_MERGED_BYTES, AppendPipeline


class SlowHistory:
    """Numbers appends in order, each request taking a while; records what each request held."""

    def __init__(self) -> None:
        self.requests: list[list[str]] = []
        self.sizes: list[int] = []
        self._seq = 0

    async def append(
        self, room_id: str, events: Sequence[history_pb2.NewEvent], no_echo_session: str = ""
    ) -> history_pb2.AppendEventsResponse:
        self.requests.append([event.handle for event in events])
        self.sizes.append(sum(event.ByteSize() for event in events))
        await asyncio.sleep(0.01)
        appended = []
        for event in events:
            self._seq += 1
            appended.append(history_pb2.AppendedEvent(seq=self._seq, handle=event.handle))
        return history_pb2.AppendEventsResponse(epoch="e", appended=appended)


def event(handle: str, size: int = 10) -> history_pb2.NewEvent:
    return history_pb2.NewEvent(event="m", handle=handle, payload=struct_pb2.Value(string_value="x" * size))


async def test_appends_queued_behind_one_go_together_in_order() -> None:
    history = SlowHistory()
    pipeline = AppendPipeline(history)  # type: ignore[arg-type]
    placed = [pipeline.submit("r", [event(f"h{n}")]) for n in range(5)]
    results = await asyncio.gather(*placed)
    assert [p.appended[0].seq for p in results] == [1, 2, 3, 4, 5]
    assert history.requests == [["h0"], ["h1", "h2", "h3", "h4"]]


async def test_a_merged_request_stays_within_the_bytes_one_request_may_carry() -> None:
    history = SlowHistory()
    pipeline = AppendPipeline(history)  # type: ignore[arg-type]
    big = 60_000
    placed = [pipeline.submit("r", [event(f"h{n}", big)]) for n in range(60)]
    results = await asyncio.gather(*placed)
    assert [p.appended[0].seq for p in results] == list(range(1, 61))
    assert max(history.sizes) <= MAX_MERGED_BYTES
    assert len(history.requests) < 60
