"""The gateway's calls to the history service's mailboxes (sealed direct-message envelopes)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from parley.history.v1 import history_pb2, history_pb2_grpc
from services.runtime.peer_client import PeerClient


class MailboxClient(Protocol):
    async def deposit(self, envelopes: Sequence[history_pb2.SealedEnvelope]) -> list[int]:
        """Stores the envelopes until acknowledged; their positions (a retried one keeps its first)."""

    async def pending(self, device_id: str, after_seq: int) -> list[history_pb2.SealedEnvelope]:
        """The device's waiting envelopes after `after_seq`, oldest first (one page)."""

    async def ack(self, device_id: str, up_to_seq: int) -> None: ...


class RemoteMailbox(PeerClient):
    async def deposit(self, envelopes: Sequence[history_pb2.SealedEnvelope]) -> list[int]:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        request = history_pb2.DepositEnvelopesRequest(envelopes=envelopes)
        response: history_pb2.DepositEnvelopesResponse = await self.call(stub.DepositEnvelopes, request, "deposit")
        return list(response.seqs)

    async def pending(self, device_id: str, after_seq: int) -> list[history_pb2.SealedEnvelope]:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        request = history_pb2.ListEnvelopesRequest(device_id=device_id, after_seq=after_seq)
        response: history_pb2.ListEnvelopesResponse = await self.call(stub.ListEnvelopes, request, "read a mailbox")
        return list(response.envelopes)

    async def ack(self, device_id: str, up_to_seq: int) -> None:
        stub = history_pb2_grpc.HistoryServiceStub(self.channel)
        request = history_pb2.AckEnvelopesRequest(device_id=device_id, up_to_seq=up_to_seq)
        await self.call(stub.AckEnvelopes, request, "acknowledge envelopes")
