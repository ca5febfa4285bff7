"""Sealed direct messages: into each recipient device's mailbox, and out to the device when it is connected.

A SendDirectCommand carries one ciphertext per device (the recipient's and
the sender's own other devices); each is deposited in that device's mailbox
in the history service before the sender is answered, so nothing waits only
in memory. Every gateway hears a wake-up on the bus (`direct.<device id>`)
and hands the device's waiting envelopes, oldest first, to the device's
connections on it; a connection gets its mailbox when it opens. Envelopes
stay until the device acknowledges them (AckDirectCommand) or they expire.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, Protocol

from parley.gateway.v1 import gateway_pb2
from parley.history.v1 import history_pb2
from services.gateway import outbox as kinds
from services.gateway import wire
from services.gateway.connections import Connection, ConnectionRegistry
from services.gateway.mailbox_client import MailboxClient
from services.runtime.bus import Bus, BusMessage, Subscription
from services.runtime.errors import ServiceError, invalid_field, rate_limited
from services.runtime.ratelimit import RateLimiter

log = logging.getLogger("parley.gateway")
WAKE_PREFIX = "direct."
MAX_ENVELOPES = 200
MAX_MESSAGE_ID = 128
# Envelopes handed over in one frame, by size.
FRAME_BYTES = 512 * 1024


class DeviceLookup(Protocol):
    async def active_devices(self, user_id: str) -> set[str]:
        """The user's devices that are not revoked (none for an unknown user)."""


class DirectMessages:
    def __init__(
        self,
        bus: Bus,
        mailbox: MailboxClient,
        devices: DeviceLookup,
        connections: ConnectionRegistry,
        limit: RateLimiter,
    ) -> None:
        self._bus = bus
        self._mailbox = mailbox
        self._devices = devices
        self._connections = connections
        # Sends per user per window (the events limit): each costs a write per device and a wake-up.
        self._limit = limit
        self._subscription: Subscription | None = None
        # Per connection (session id): the last position handed over, a hand-over under way, and
        # whether another was asked for meanwhile.
        self._handed: dict[str, int] = {}
        self._busy: set[str] = set()
        self._again: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._subscription = await self._bus.subscribe_prefix(WAKE_PREFIX, self._woken)

    async def close(self) -> None:
        if self._subscription is not None:
            self._subscription.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def send(self, connection: Connection, command: gateway_pb2.SendDirectCommand) -> gateway_pb2.DirectResult:
        if not command.recipient_user_id:
            raise invalid_field("send_direct.recipient_user_id", "is required")
        if not 0 < len(command.message_id) <= MAX_MESSAGE_ID:
            raise invalid_field("send_direct.message_id", f"must be 1–{MAX_MESSAGE_ID} characters")
        if not 0 < len(command.envelopes) <= MAX_ENVELOPES:
            raise invalid_field("send_direct.envelopes", f"give 1–{MAX_ENVELOPES}, one per device")
        wait = self._limit.try_acquire(connection.user_id)
        if wait:
            raise rate_limited("too many direct messages", wait)
        devices = [e.device_id for e in command.envelopes]
        if len(set(devices)) != len(devices):
            raise invalid_field("send_direct.envelopes", "one envelope per device")
        allowed = await self._devices.active_devices(command.recipient_user_id)
        if connection.user_id != command.recipient_user_id:
            allowed |= await self._devices.active_devices(connection.user_id)
        allowed.discard(connection.device_id)
        strangers = sorted(set(devices) - allowed)
        if strangers:
            raise invalid_field(
                "send_direct.envelopes", f"not an active device of the recipient or of yours: {strangers}"
            )
        sealed = [
            history_pb2.SealedEnvelope(
                device_id=e.device_id,
                sender_user_id=connection.user_id,
                sender_device_id=connection.device_id,
                message_id=command.message_id,
                ciphertext=e.ciphertext,
            )
            for e in command.envelopes
        ]
        seqs = await self._mailbox.deposit(sealed)
        for device_id in devices:
            await self._bus.publish(BusMessage(WAKE_PREFIX + device_id, b"", {}))
        return gateway_pb2.DirectResult(seqs=seqs, missing_device_ids=sorted(allowed - set(devices)))

    async def ack(self, connection: Connection, command: gateway_pb2.AckDirectCommand) -> None:
        await self._mailbox.ack(connection.device_id, command.up_to_seq)

    def connected(self, connection: Connection) -> None:
        """A new connection gets its device's mailbox."""
        self._handed[connection.session_id] = 0
        self._spawn(self._hand_over(connection))

    def ended(self, connection: Connection) -> None:
        self._handed.pop(connection.session_id, None)
        self._again.discard(connection.session_id)

    def _woken(self, message: BusMessage) -> None:
        for connection in self._connections.of_device(message.subject.removeprefix(WAKE_PREFIX)):
            if connection.session_id in self._handed:
                self._spawn(self._hand_over(connection))

    async def _hand_over(self, connection: Connection) -> None:
        """What waits for the connection's device after what it was handed, in order; one pass at a time."""
        session = connection.session_id
        if session in self._busy:
            self._again.add(session)  # the pass under way looks again before it ends
            return
        self._busy.add(session)
        try:
            while session in self._handed:
                self._again.discard(session)
                try:
                    waiting = await self._mailbox.pending(connection.device_id, self._handed[session])
                except ServiceError:
                    log.warning("could not read a mailbox; the device gets it on its next wake-up", exc_info=True)
                    return
                if waiting and session in self._handed:
                    await self._put(connection, waiting)
                    self._handed[session] = waiting[-1].seq
                elif session not in self._again:
                    return
        finally:
            self._busy.discard(session)

    @staticmethod
    async def _put(connection: Connection, envelopes: list[history_pb2.SealedEnvelope]) -> None:
        """Frames of at most FRAME_BYTES, each queued when it fits: at the reader's pace, like a replay."""
        chunks: list[list[history_pb2.SealedEnvelope]] = [[]]
        size = 0
        for envelope in envelopes:
            if chunks[-1] and size + envelope.ByteSize() > FRAME_BYTES:
                chunks.append([])
                size = 0
            chunks[-1].append(envelope)
            size += envelope.ByteSize()
        for chunk in chunks:
            frame = _frame(chunk)
            await connection.outbox.room_for(len(frame))
            connection.outbox.put(kinds.FRAME, frame)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _frame(envelopes: list[history_pb2.SealedEnvelope]) -> bytes:
    return wire.frame(gateway_pb2.ConnectResponse(sealed=gateway_pb2.SealedEnvelopes(envelopes=envelopes)))
