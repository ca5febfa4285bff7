"""The history service's mailbox RPCs: deposit, list and acknowledge sealed envelopes (see mailbox_storage.py),
and the pruning of expired ones."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

import grpc

from parley.api.v1 import errors_pb2
from parley.history.v1 import history_pb2
from services.history.mailbox_storage import EnvelopeRow, MailboxStorage, NewEnvelope
from services.runtime.config import HistoryConfig
from services.runtime.errors import ServiceError, invalid_field
from services.runtime.grpc_types import Context

log = logging.getLogger("parley.history")
MAX_ENVELOPES_PER_DEPOSIT = 200
# A direct message is text and small attachments' keys: files go to the file service.
MAX_ENVELOPE_BYTES = 64 * 1024
MAX_ID_LENGTH = 128
# Envelopes one device's mailbox may hold; a deposit past it is refused (QUOTA_EXCEEDED).
MAX_HELD_PER_DEVICE = 10_000
# A page stays under the 4 MiB message limit however large its envelopes.
MAX_PAGE = 60
DEFAULT_PAGE = 16


def sealed(row: EnvelopeRow) -> history_pb2.SealedEnvelope:
    return history_pb2.SealedEnvelope(
        seq=row.seq,
        device_id=row.device_id,
        sender_user_id=row.sender_user_id,
        sender_device_id=row.sender_device_id,
        message_id=row.message_id,
        ciphertext=row.ciphertext,
        time_ms=int(row.created_at * 1000),
    )


def _new(envelope: history_pb2.SealedEnvelope, index: int) -> NewEnvelope:
    field = f"envelopes[{index}]"
    for name in ("device_id", "sender_user_id", "sender_device_id", "message_id"):
        value = getattr(envelope, name)
        if not value or len(value) > MAX_ID_LENGTH:
            raise invalid_field(f"{field}.{name}", f"must be 1–{MAX_ID_LENGTH} characters")
    if not envelope.ciphertext or len(envelope.ciphertext) > MAX_ENVELOPE_BYTES:
        raise invalid_field(f"{field}.ciphertext", f"must be 1–{MAX_ENVELOPE_BYTES} bytes")
    return NewEnvelope(
        envelope.device_id, envelope.sender_user_id, envelope.sender_device_id, envelope.message_id, envelope.ciphertext
    )


class Mailboxes:
    def __init__(self, storage: MailboxStorage, config: HistoryConfig, clock: Callable[[], float] = time.time) -> None:
        self._storage = storage
        self._config = config
        self._clock = clock
        self._pruning: asyncio.Task[None] | None = None

    async def DepositEnvelopes(
        self, request: history_pb2.DepositEnvelopesRequest, context: Context
    ) -> history_pb2.DepositEnvelopesResponse:
        return await self.deposit(request)

    async def ListEnvelopes(
        self, request: history_pb2.ListEnvelopesRequest, context: Context
    ) -> history_pb2.ListEnvelopesResponse:
        return await self.list(request)

    async def AckEnvelopes(
        self, request: history_pb2.AckEnvelopesRequest, context: Context
    ) -> history_pb2.AckEnvelopesResponse:
        return await self.ack(request)

    async def deposit(self, request: history_pb2.DepositEnvelopesRequest) -> history_pb2.DepositEnvelopesResponse:
        if not 0 < len(request.envelopes) <= MAX_ENVELOPES_PER_DEPOSIT:
            raise invalid_field("envelopes", f"give 1–{MAX_ENVELOPES_PER_DEPOSIT}")
        envelopes = [_new(e, n) for n, e in enumerate(request.envelopes)]
        full = sorted(
            d
            for d, n in (await self._storage.held([e.device_id for e in envelopes])).items()
            if n >= MAX_HELD_PER_DEVICE
        )
        if full:
            raise ServiceError(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                errors_pb2.ERROR_REASON_QUOTA_EXCEEDED,
                f"the mailboxes of {full} hold {MAX_HELD_PER_DEVICE} envelopes, their limit, until acknowledged",
            )
        seqs = await self._storage.deposit(envelopes, self._clock(), self._config.mailbox_ttl_seconds)
        return history_pb2.DepositEnvelopesResponse(seqs=seqs)

    async def list(self, request: history_pb2.ListEnvelopesRequest) -> history_pb2.ListEnvelopesResponse:
        if not request.device_id:
            raise invalid_field("device_id", "is required")
        if not 0 <= request.page_size <= MAX_PAGE:
            raise invalid_field("page_size", f"must be 0–{MAX_PAGE}")
        rows = await self._storage.pending(
            request.device_id, request.after_seq, request.page_size or DEFAULT_PAGE, self._clock()
        )
        return history_pb2.ListEnvelopesResponse(envelopes=[sealed(row) for row in rows])

    async def ack(self, request: history_pb2.AckEnvelopesRequest) -> history_pb2.AckEnvelopesResponse:
        if not request.device_id:
            raise invalid_field("device_id", "is required")
        return history_pb2.AckEnvelopesResponse(deleted=await self._storage.ack(request.device_id, request.up_to_seq))

    def start(self) -> None:
        self._pruning = asyncio.get_running_loop().create_task(self._prune_forever())

    async def close(self) -> None:
        if self._pruning is not None:
            self._pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pruning
        await self._storage.close()

    async def _prune_forever(self) -> None:
        while True:
            await asyncio.sleep(self._config.prune_interval_seconds)
            try:
                await self._storage.prune(self._clock())
            except Exception:
                log.warning("could not prune expired mailbox envelopes; trying again later", exc_info=True)
