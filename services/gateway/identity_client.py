"""The gateway's calls to the identity service."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from services.runtime.errors import ServiceError
from services.runtime.peer_client import PeerClient


class IdentityClient(PeerClient):
    async def watch_revocations(self) -> AsyncIterator[identity_pb2.WatchRevocationsResponse]:
        stub = identity_pb2_grpc.IdentityServiceStub(self.channel)
        async for response in self.server_stream(stub.WatchRevocations, identity_pb2.WatchRevocationsRequest()):
            yield response

    async def active_devices(self, user_id: str) -> set[str]:
        """The user's devices that are not revoked (none for an unknown user)."""
        stub = identity_pb2_grpc.IdentityServiceStub(self.channel)
        try:
            response: identity_pb2.ListDevicesResponse = await self.call(
                stub.ListDevices, identity_pb2.ListDevicesRequest(user_id=user_id), "list devices"
            )
        except ServiceError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return set()
            raise
        return {device.device_id for device in response.devices}
