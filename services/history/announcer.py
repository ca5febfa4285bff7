"""Every committed write to a room's log, announced on the bus (services/runtime/room_stream.py).

The history service is the one place that announces: whoever asked for the
write (a gateway's publish, a backend's AppendEvents, an edit), members on
every gateway hear of it, and each gateway puts the room's messages in order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from parley.history.v1 import history_pb2
from services.history.storage import Appended
from services.runtime import room_stream
from services.runtime.bus import Bus, BusMessage

log = logging.getLogger("parley.history")


class LogAnnouncer:
    def __init__(self, bus: Bus) -> None:
        self._bus = bus

    async def appended(
        self,
        room_id: str,
        epoch: str,
        unsequenced: Sequence[tuple[str, bytes]],
        appended: Sequence[Appended],
        skip_session: str,
    ) -> None:
        """The events of one append: (name, `room_stream.unsequenced_event`) each; retries are not new."""
        for (name, body), placed in zip(unsequenced, appended, strict=True):
            if not placed.duplicate:
                message = room_stream.event_message(room_id, body, name, placed.seq, epoch, skip_session)
                await self._publish(message)

    async def changed(self, room_id: str, epoch: str, event: history_pb2.LoggedEvent) -> None:
        await self._publish(room_stream.change_message(room_id, epoch, event))

    async def _publish(self, message: BusMessage) -> None:
        # A lost announcement is a gap the gateways fill from the log: the write stands.
        try:
            await self._bus.publish(message)
        except Exception:
            log.exception("a committed write could not be announced", extra={"subject": message.subject})
