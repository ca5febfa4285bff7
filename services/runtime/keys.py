"""Fetches token verification keys from the identity service over RPC."""

from __future__ import annotations

from collections.abc import Mapping

import grpc

from parley.identity.v1 import identity_pb2, identity_pb2_grpc
from services.runtime.channels import open_channel
from services.runtime.config import ServerConfig
from services.runtime.errors import unavailable
from services.runtime.tokens import PublishedKey

FETCH_TIMEOUT_SECONDS = 5.0


class RemoteKeySource:
    """Asks `IdentityService.GetVerificationKeys` at `address` (set once known)."""

    def __init__(self, server: ServerConfig, address: str = "") -> None:
        self.address = address
        self._server = server
        self._channel: grpc.aio.Channel | None = None

    async def fetch(self) -> Mapping[str, PublishedKey]:
        if self._channel is None:
            self._channel = open_channel(self.address, self._server)
        stub = identity_pb2_grpc.IdentityServiceStub(self._channel)
        try:
            response = await stub.GetVerificationKeys(
                identity_pb2.GetVerificationKeysRequest(), timeout=FETCH_TIMEOUT_SECONDS
            )
        except grpc.aio.AioRpcError as exc:
            raise unavailable(
                f"cannot fetch token verification keys from the identity service at {self.address}: "
                f"{exc.code().name} {exc.details()}"
            ) from exc
        return {
            key.key_id: PublishedKey(
                key.public_key, key.expire_time.ToNanoseconds() / 1e9 if key.HasField("expire_time") else None
            )
            for key in response.keys
        }

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
