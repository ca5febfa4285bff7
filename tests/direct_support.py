"""What a test client received as direct messages: the handed-over messages and the rejected envelopes."""

from __future__ import annotations

from parley import Client
from parley.crypto.errors import CryptoError
from parley.direct_messages import DirectMessage, RejectedEnvelope


class DirectInbox:
    """Messages and rejected envelopes in the order the client's handlers got them (`open` subscribes)."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.messages: list[DirectMessage] = []
        self.rejected: list[tuple[RejectedEnvelope, CryptoError]] = []

    async def open(self) -> DirectInbox:
        self.client.message.on_rejected(lambda envelope, error: self.rejected.append((envelope, error)))
        await self.client.message.subscribe(f"user:{self.client.user_id}", self.messages.append)
        await self.client.stream()
        return self
