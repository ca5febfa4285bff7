"""The history service (its logs and its mailboxes) in process, for a gateway on the same server (all-in-one).

Same interface as the gateway's gRPC HistoryClient, without the round trip:
the publish path is identical in both modes except for the transport.
"""

from __future__ import annotations

from collections.abc import Sequence

from parley.history.v1 import history_pb2
from services.history.mailboxes import Mailboxes
from services.history.servicer import HistoryServicer


class InProcessHistory:
    def __init__(self, servicer: HistoryServicer) -> None:
        self._servicer = servicer

    async def append(
        self, room_id: str, events: Sequence[history_pb2.NewEvent], no_echo_session: str = ""
    ) -> history_pb2.AppendEventsResponse:
        request = history_pb2.AppendEventsRequest(room_id=room_id, events=events, no_echo_session=no_echo_session)
        return await self._servicer.append(request)

    async def since(self, room_id: str, after_seq: int, limit: int) -> history_pb2.ListEventsSinceResponse:
        return await self._servicer.since(
            history_pb2.ListEventsSinceRequest(room_id=room_id, after_seq=after_seq, limit=limit)
        )

    async def get(self, room_id: str, handle: str) -> history_pb2.GetEventResponse:
        return await self._servicer.get(history_pb2.GetEventRequest(room_id=room_id, handle=handle))

    async def edit(self, request: history_pb2.EditEventRequest) -> history_pb2.EditEventResponse:
        return await self._servicer.edit(request)

    async def delete(self, request: history_pb2.DeleteEventRequest) -> history_pb2.DeleteEventResponse:
        return await self._servicer.delete(request)

    async def set_retention(self, request: history_pb2.SetRetentionRequest) -> None:
        await self._servicer.set_retention(request)

    async def close(self) -> None:
        """Nothing to close: the history module owns the servicer."""


class InProcessMailbox:
    """The mailboxes in process (all-in-one), with the gateway's MailboxClient interface."""

    def __init__(self, mailboxes: Mailboxes) -> None:
        self._mailboxes = mailboxes

    async def deposit(self, envelopes: Sequence[history_pb2.SealedEnvelope]) -> list[int]:
        response = await self._mailboxes.deposit(history_pb2.DepositEnvelopesRequest(envelopes=envelopes))
        return list(response.seqs)

    async def pending(self, device_id: str, after_seq: int) -> list[history_pb2.SealedEnvelope]:
        response = await self._mailboxes.list(
            history_pb2.ListEnvelopesRequest(device_id=device_id, after_seq=after_seq)
        )
        return list(response.envelopes)

    async def ack(self, device_id: str, up_to_seq: int) -> None:
        await self._mailboxes.ack(history_pb2.AckEnvelopesRequest(device_id=device_id, up_to_seq=up_to_seq))
