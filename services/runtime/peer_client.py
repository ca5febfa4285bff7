"""Calls from one Parley service to another, as Parley's own service."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from parley.errors import error_info
from services.runtime.channels import open_channel
from services.runtime.config import INTERNAL_SERVICE, Config, ConfigError, ServerConfig
from services.runtime.errors import ServiceError, unavailable
from services.runtime.tokens import service_token

T = TypeVar("T")
CALL_TIMEOUT_SECONDS = 10.0


def internal_secret(config: Config) -> str:
    """The shared secret Parley's services call each other with (`auth.service_credentials`)."""
    secret = config.auth.service_credentials.get(INTERNAL_SERVICE, "")
    if not secret:
        raise ConfigError(
            f"auth.service_credentials needs a {INTERNAL_SERVICE!r} entry shared by every service in split mode, "
            f"e.g. PARLEY_AUTH_SERVICE_CREDENTIALS={INTERNAL_SERVICE}=<secret>"
        )
    return secret


def relay(exc: grpc.aio.AioRpcError, what: str) -> ServiceError:
    """The peer's error as a ServiceError with the same code and reason."""
    reason, metadata = error_info(exc.trailing_metadata() or ())
    if not reason:
        return unavailable(f"{what}: no answer ({exc.code().name}: {exc.details()})")
    return ServiceError.named(exc.code(), reason, exc.details() or "", **metadata)


class PeerClient:
    """A lazily opened channel to a peer, and calls that carry Parley's service credential."""

    def __init__(self, server: ServerConfig, secret: str, address: str = "") -> None:
        # Set later for a peer on this very server (all-in-one: its own address).
        self.address = address
        self._server = server
        self.metadata = (("authorization", f"Bearer {service_token(INTERNAL_SERVICE, secret)}"),)
        self._channel: grpc.aio.Channel | None = None

    @property
    def channel(self) -> grpc.aio.Channel:
        if self._channel is None:
            if not self.address:
                # A peer on this server is dialled once the server has started.
                raise unavailable("the service is starting; try again")
            self._channel = open_channel(self.address, self._server)
        return self._channel

    async def call(self, method: Callable[..., Awaitable[T]], request: object, what: str) -> T:
        try:
            return await method(request, metadata=self.metadata, timeout=CALL_TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            raise relay(exc, what) from exc

    async def server_stream(self, method: Callable[..., Any], request: object) -> AsyncIterator[Any]:
        """A server stream's responses, for as long as it runs; the call is cancelled when the caller stops."""
        call = method(request, metadata=self.metadata)
        try:
            async for response in call:
                yield response
        finally:
            call.cancel()

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close(None)
            self._channel = None
