"""Ephemeral signals in rooms (typing, cursors): relayed, never stored, expiring unless renewed."""

from __future__ import annotations

import asyncio

from google.protobuf import struct_pb2

from parley.gateway.v1 import gateway_pb2
from services.gateway.connections import Connection
from services.gateway.publishing import check_event_name, payload_too_large
from services.runtime import room_stream
from services.runtime.bus import Bus, publish_soon
from services.runtime.config import GatewayConfig
from services.runtime.errors import rate_limited
from services.runtime.ratelimit import RateLimiter
from services.runtime.request_checks import check_json, null_if_unset

# (room, subject, session) of a signal that is active.
SignalKey = tuple[str, str, str]


class EphemeralSignals:
    """Relays signals to a room's other members; announces each one's end once it is not renewed.

    The gateway of the sending connection keeps the timer, so a signal also
    ends when its connection leaves the room or goes away.
    """

    def __init__(self, config: GatewayConfig, bus: Bus) -> None:
        self._config = config
        self._bus = bus
        self._limit = RateLimiter(config.events_per_window, float(config.window_seconds))
        self._active: dict[SignalKey, tuple[str, asyncio.TimerHandle]] = {}

    def send(self, connection: Connection, room_id: str, subject: str, data: struct_pb2.Value, field: str) -> None:
        """Relays a signal; `data` is walked (JSON rules) once its size and rate allow it, `field` naming it.

        `data` left unset (a typing signal with nothing to say) is relayed as JSON null.
        """
        check_event_name(subject, "subject")
        size = len(subject) + data.ByteSize()
        if size > self._config.max_payload_bytes:
            raise payload_too_large(size, self._config.max_payload_bytes)
        wait = self._limit.try_acquire(connection.user_id)
        if wait:
            raise rate_limited(
                f"more than {self._config.events_per_window} signals in {self._config.window_seconds}s", wait
            )
        check_json(data, field)
        data = null_if_unset(data)
        ttl = self._config.ephemeral_ttl_seconds
        key = (room_id, subject, connection.session_id)
        previous = self._active.pop(key, None)
        if previous is not None:
            previous[1].cancel()
        timer = asyncio.get_running_loop().call_later(ttl, self._expire, key)
        self._active[key] = (connection.user_id, timer)
        signal = gateway_pb2.Ephemeral(
            room_id=room_id,
            subject=subject,
            sender=connection.user_id,
            data=data,
            ttl_ms=int(ttl * 1000),
            session_id=connection.session_id,
        )
        self._relay(signal, connection.session_id)

    def end_all(self, connection: Connection, room_id: str) -> None:
        """The connection left the room: its active signals there end now."""
        for key in [k for k in self._active if k[0] == room_id and k[2] == connection.session_id]:
            self._active[key][1].cancel()
            self._expire(key)

    def _expire(self, key: SignalKey) -> None:
        entry = self._active.pop(key, None)
        if entry is None:
            return
        room_id, subject, session_id = key
        ended = gateway_pb2.Ephemeral(
            room_id=room_id, subject=subject, sender=entry[0], expired=True, session_id=session_id
        )
        self._relay(ended, session_id)

    def _relay(self, signal: gateway_pb2.Ephemeral, from_session: str) -> None:
        frame = gateway_pb2.ConnectResponse(ephemeral=signal)
        publish_soon(self._bus, room_stream.frame_message(signal.room_id, frame, skip_session=from_session))
