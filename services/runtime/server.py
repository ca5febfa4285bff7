"""Builds a Parley gRPC server: interceptors, health, reflection, limits.

Every service (and the all-in-one process) is assembled here from
`ServiceModule`s, so health, reflection, auth, errors and telemetry behave the
same in every mode.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import socket
import sys
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor
from grpc_health.v1 import health, health_pb2
from grpc_reflection.v1alpha import reflection
from opentelemetry.metrics import Meter

from services.runtime import uncancellable
from services.runtime.channels import channel_options
from services.runtime.config import Config, ConfigError
from services.runtime.grpc_types import HealthStatus, add_health_servicer
from services.runtime.hooks import Hooks
from services.runtime.interceptors import AuthHook, CallInterceptor, translate_errors
from services.runtime.keys import RemoteKeySource
from services.runtime.methods import MethodTable
from services.runtime.telemetry import RpcTelemetryHook, Telemetry, setup_telemetry
from services.runtime.tokens import TokenVerifier

log = logging.getLogger("parley.server")
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING

Closer = Callable[[], Awaitable[None]]


@dataclasses.dataclass
class ServiceModule:
    """What one service contributes to a server."""

    # Services it answers for (health status and reflection list them).
    services: Sequence[descriptor.ServiceDescriptor]
    register: Callable[[grpc.aio.Server], None]
    close: Closer | None = None
    # Generic handlers (the gateway's forwarding) added after the servicers.
    generic_handlers: Sequence[grpc.GenericRpcHandler[Any, Any]] = ()
    # False when another process serves these services and health must wait
    # until it has been reached (the gateway's forwarded services).
    initially_serving: bool = True
    # Called once the server is started, with its health servicer and the
    # address it can be dialled at (e.g. to begin mirroring peer health).
    start: Callable[[HealthStatus, str], None] | None = None
    # Called when a stop begins, before in-flight calls are given their grace:
    # ends the module's own long-lived streams and tells its clients to go.
    before_drain: Closer | None = None
    # Given the server's token verifier before it starts (the gateway checks
    # in-band token refreshes with it and tells it of revoked devices).
    use_verifier: Callable[[TokenVerifier], None] | None = None
    # Given the server's meter before it starts, to register the module's own metrics.
    use_meter: Callable[[Meter], None] | None = None


ModuleFactory = Callable[[Config], Awaitable[ServiceModule]]


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
        drainers: Sequence[Closer] = (),
    ) -> None:
        self.grpc_server = server
        self._drainers = drainers
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
        try:
            await self.health.enter_graceful_shutdown()
            await close_all(self._drainers)
            await self.grpc_server.stop(self._grace if grace is None else grace)
            # Appends, announcements and connection endings started by calls that were cut off.
            await uncancellable.drain(self._grace if grace is None else grace)
        finally:
            await close_all(self._closers)
            self.telemetry.shutdown()

    async def wait_for_termination(self) -> None:
        await self.grpc_server.wait_for_termination()


async def close_all(closers: Sequence[Closer]) -> None:
    """Runs every closer, newest first, even when one of them fails."""
    for close in reversed(closers):
        try:
            await close()
        except Exception:
            log.exception("error while closing a resource")


def server_options(config: Config) -> list[tuple[str, int]]:
    options = [
        *channel_options(config.server),
        ("grpc.http2.min_ping_interval_without_data_ms", config.server.keepalive_min_client_ping_ms),
        # Two servers must never silently share a port, unless asked to (a gateway pool).
        ("grpc.so_reuseport", 1 if config.server.reuse_port else 0),
    ]
    if config.server.max_connection_idle_ms > 0:
        options.append(("grpc.max_connection_idle_ms", config.server.max_connection_idle_ms))
    return options


def require_port_sharing() -> None:
    """ConfigError unless processes sharing a port get its connections spread over them.

    Only Linux balances new connections over the sockets bound with SO_REUSEPORT;
    elsewhere one of them would take them all, or the option is missing.
    """
    option = getattr(socket, "SO_REUSEPORT", None)
    if option is None or not sys.platform.startswith("linux"):
        problem = f"this platform ({sys.platform}) does not spread a port's connections over processes"
    else:
        try:
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, option, 1)
            return
        except OSError as exc:
            problem = f"the kernel refuses it ({exc})"
    raise ConfigError(f"server.reuse_port and server.gateway_processes > 1 need SO_REUSEPORT on Linux: {problem}")


async def serve_modules(
    config: Config,
    factories: Sequence[ModuleFactory],
    *,
    process_name: str,
    identity_address: str | None,
    telemetry: Telemetry | None = None,
) -> tuple[ParleyServer, int]:
    """Opens each service module, then builds and starts the server.

    If anything fails on the way, whatever was already opened is closed again.
    """
    opened: list[Closer] = []
    try:
        modules = []
        for factory in factories:
            module = await factory(config)
            if module.close is not None:
                opened.append(module.close)
            modules.append(module)
        return await build_server(
            config, modules, process_name=process_name, identity_address=identity_address, telemetry=telemetry
        )
    except BaseException:
        await close_all(opened)
        raise


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
    very server (all-in-one, or the identity process itself). The server owns
    the modules' resources from here on; on failure the caller still does.
    """
    telemetry = telemetry or setup_telemetry(config.telemetry, f"parley-{process_name}")
    described = [s for m in modules for s in m.services]
    key_source = RemoteKeySource(config.server, identity_address or "")
    hooks = Hooks(config.hooks)
    authenticate = functools.partial(hooks.call, "authenticate") if hooks.has("authenticate") else None
    verifier = TokenVerifier(config.auth, key_source, authenticate=authenticate)
    for module in modules:
        if module.use_verifier is not None:
            module.use_verifier(verifier)
        if module.use_meter is not None:
            module.use_meter(telemetry.meter)
    server = grpc.aio.server(
        options=server_options(config),
        interceptors=_interceptors(MethodTable(described), telemetry, verifier),
    )
    try:
        for module in modules:
            module.register(server)
            if module.generic_handlers:
                server.add_generic_rpc_handlers(tuple(module.generic_handlers))
        health_servicer = add_health_servicer(server)
        reflection.enable_server_reflection(
            [s.full_name for s in described] + [health.SERVICE_NAME, reflection.SERVICE_NAME], server
        )
        port = _bind(server, config.server.host, config.server.port)
        own_address = f"{_dialable(config.server.host)}:{port}"
        if identity_address is None:
            key_source.address = own_address
        await server.start()
        await health_servicer.set("", SERVING)
        for module in modules:
            for service in module.services:
                await health_servicer.set(service.full_name, SERVING if module.initially_serving else NOT_SERVING)
        for module in modules:
            if module.start is not None:
                module.start(health_servicer, own_address)
    except BaseException:
        await server.stop(None)
        await key_source.close()
        telemetry.shutdown()
        raise
    closers: list[Closer] = [key_source.close, *(m.close for m in modules if m.close is not None)]
    address = f"{config.server.host}:{port}"
    log.info("serving", extra={"server": process_name, "address": address})
    drainers = [m.before_drain for m in modules if m.before_drain is not None]
    parley_server = ParleyServer(
        server, health_servicer, telemetry, closers, config.server.grace_seconds, address, drainers
    )
    return parley_server, port


def _interceptors(
    methods: MethodTable, telemetry: Telemetry, verifier: TokenVerifier
) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    # Outermost first: telemetry sees the final status, errors are translated
    # inside it, auth inside error translation; the request is parsed innermost.
    return [CallInterceptor(methods, (RpcTelemetryHook(telemetry), translate_errors, AuthHook(verifier)))]


def _bind(server: grpc.aio.Server, host: str, port: int) -> int:
    try:
        bound = server.add_insecure_port(f"{host}:{port}")
    except RuntimeError as exc:
        raise OSError(f"cannot listen on {host}:{port}: is another server using the port?") from exc
    if bound == 0:
        raise OSError(f"cannot listen on {host}:{port}")
    return bound


def _dialable(host: str) -> str:
    return "localhost" if host in ("", "0.0.0.0", "::", "[::]") else host
