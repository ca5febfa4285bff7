"""Builds a Parley gRPC server: interceptors, health, reflection, limits.

Every service (and the all-in-one process) is assembled here from
`ServiceModule`s, so health, reflection, auth, errors and telemetry behave the
same in every mode.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection

from services.runtime.channels import channel_options
from services.runtime.config import Config
from services.runtime.grpc_types import HealthStatus, add_health_servicer
from services.runtime.interceptors import AuthHook, DecodingInterceptor, HookInterceptor, translate_errors
from services.runtime.keys import RemoteKeySource
from services.runtime.methods import MethodTable
from services.runtime.telemetry import RpcTelemetryHook, Telemetry, setup_telemetry
from services.runtime.tokens import TokenVerifier

log = logging.getLogger("parley.server")

Closer = Callable[[], Awaitable[None]]


@dataclasses.dataclass
class ServiceModule:
    """What one service contributes to a server."""

    name: str
    # Services it answers for (health status and reflection list them).
    services: Sequence[descriptor.ServiceDescriptor]
    register: Callable[[grpc.aio.Server], None]
    close: Closer | None = None
    # Generic handlers (the gateway's forwarding) added after the servicers.
    generic_handlers: Sequence[Any] = ()


class ParleyServer:
    """A started gRPC server with its health servicer and resources."""

    def __init__(
        self,
        server: grpc.aio.Server,
        health_servicer: HealthStatus,
        telemetry: Telemetry,
        closers: Sequence[Closer],
        grace_seconds: float,
        address: str,
    ) -> None:
        self.grpc_server = server
        self.health = health_servicer
        self.telemetry = telemetry
        self.address = address
        self._closers = closers
        self._grace = grace_seconds
        self._stopped = False

    async def stop(self, grace: float | None = None) -> None:
        """Reports NOT_SERVING to health watchers, drains calls, then closes resources."""
        if self._stopped:
            return
        self._stopped = True
        await self.health.enter_graceful_shutdown()
        await self.grpc_server.stop(self._grace if grace is None else grace)
        for close in self._closers:
            await close()
        self.telemetry.shutdown()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


def server_options(config: Config) -> list[tuple[str, int]]:
    options = [
        *channel_options(config.server),
        ("grpc.http2.min_ping_interval_without_data_ms", config.server.keepalive_min_client_ping_ms),
        # Two servers must never silently share a port.
        ("grpc.so_reuseport", 0),
    ]
    if config.server.max_connection_idle_ms > 0:
        options.append(("grpc.max_connection_idle_ms", config.server.max_connection_idle_ms))
    return options


async def build_server(
    config: Config,
    modules: Sequence[ServiceModule],
    *,
    process_name: str,
    identity_address: str | None,
    telemetry: Telemetry | None = None,
) -> tuple[ParleyServer, int]:
    """Creates, binds and starts a server; returns it with the bound port.

    `identity_address` is where verification keys come from; None means this
    very server (all-in-one, or the identity process itself).
    """
    telemetry = telemetry or setup_telemetry(config.telemetry, f"parley-{process_name}")
    described = [s for m in modules for s in m.services]
    methods = MethodTable(described)
    key_source = RemoteKeySource(config.server, identity_address or "")
    verifier = TokenVerifier(config.auth, key_source)
    server = grpc.aio.server(
        options=server_options(config),
        interceptors=[
            HookInterceptor(methods, RpcTelemetryHook(telemetry)),
            HookInterceptor(methods, translate_errors),
            HookInterceptor(methods, AuthHook(verifier)),
            DecodingInterceptor(),
        ],
    )
    for module in modules:
        module.register(server)
        if module.generic_handlers:
            server.add_generic_rpc_handlers(tuple(module.generic_handlers))
    health_servicer = add_health_servicer(server)
    reflection.enable_server_reflection(
        [s.full_name for s in described] + [health.SERVICE_NAME, reflection.SERVICE_NAME], server
    )
    port = server.add_insecure_port(f"{config.server.host}:{config.server.port}")
    if port == 0:
        raise OSError(f"cannot bind {config.server.host}:{config.server.port}")
    if identity_address is None:
        key_source.address = f"{_dialable(config.server.host)}:{port}"
    await server.start()
    for name in ["", *(s.full_name for s in described)]:
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    closers: list[Closer] = [m.close for m in modules if m.close is not None]
    closers.append(key_source.close)
    address = f"{config.server.host}:{port}"
    log.info("serving", extra={"server": process_name, "address": address})
    return ParleyServer(server, health_servicer, telemetry, closers, config.server.grace_seconds, address), port


def _dialable(host: str) -> str:
    return "localhost" if host in ("", "0.0.0.0", "::", "[::]") else host
