"""The gateway's calls to the identity service."""

from __future__ import annotations

from collections.abc import AsyncIterator

from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from services.runtime.peer_client import PeerClient


class IdentityClient(PeerClient):
    async def watch_revocations(self) -> AsyncIterator[identity_pb2.WatchRevocationsResponse]:
        stub = identity_pb2_grpc.IdentityServiceStub(self.channel)
        async for response in self.server_stream(stub.WatchRevocations, identity_pb2.WatchRevocationsRequest()):
            yield response
