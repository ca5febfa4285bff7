"""What a join sends before live events: a replay after a resume, or the history a room syncs on join.

A catch-up of any size is cut into HistoryBatch frames within the frame limit
(all but the last marked `continued`), so a long replay of big events never
makes a frame the stream cannot carry.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from services.gateway import wire
from services.gateway.recovery import LogRead

# Room for a frame's own fields beside its events (ids, epoch, reason, tags).
FRAME_OVERHEAD = 1024


@dataclasses.dataclass
class CatchUp:
    read: LogRead
    # KIND_REPLAY, KIND_SYNC, or 0: no catch-up frames (a plain join).
    kind: int = 0
    recovered: bool = False
    unrecovered_reason: str = ""


def sync_selection(events: list[history_pb2.LoggedEvent], last: int) -> list[history_pb2.LoggedEvent]:
    """All of them, or the newest `last` of each event name, oldest first."""
    if not last:
        return events
    chosen: list[history_pb2.LoggedEvent] = []
    counts: dict[str, int] = {}
    for event in reversed(events):
        if counts.get(event.event, 0) < last:
            counts[event.event] = counts.get(event.event, 0) + 1
            chosen.append(event)
    return chosen[::-1]


def history_frames(
    room_id: str,
    catch_up: CatchUp,
    events: Sequence[gateway_pb2.Event],
    changes: Sequence[gateway_pb2.EventChanged],
    max_frame_bytes: int,
) -> Iterator[bytes]:
    """HistoryBatch frames carrying `changes` then `events` in order, each frame within `max_frame_bytes`.

    There is always at least one frame (it carries `recovered`), and an item
    bigger than the limit on its own still goes, alone in its frame.
    """
    budget = max(1, max_frame_bytes - FRAME_OVERHEAD)
    items: list[gateway_pb2.EventChanged | gateway_pb2.Event] = [*changes, *events]
    batch = _batch(room_id, catch_up)
    size = 0
    for item in items:
        item_size = item.ByteSize() + 8
        if size and size + item_size > budget:
            batch.continued = True
            yield wire.frame(gateway_pb2.ConnectResponse(history=batch))
            batch = _batch(room_id, catch_up)
            size = 0
        if isinstance(item, gateway_pb2.EventChanged):
            batch.changes.append(item)
        else:
            batch.events.append(item)
        size += item_size
    yield wire.frame(gateway_pb2.ConnectResponse(history=batch))


def _batch(room_id: str, catch_up: CatchUp) -> gateway_pb2.HistoryBatch:
    return gateway_pb2.HistoryBatch(
        room_id=room_id,
        kind=catch_up.kind,  # type: ignore[arg-type]
        recovered=catch_up.recovered,
        epoch=catch_up.read.epoch,
        unrecovered_reason=catch_up.unrecovered_reason,
    )
