"""The gateway: GatewayService, and in split mode the forwarding of the
other services' public RPCs to their processes."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from importlib import metadata

from google.protobuf import descriptor

from parley.gateway.v1 import gateway_pb2, gateway_pb2_grpc
from services.file.server import SERVICE as FILE_SERVICE
from services.gateway.forwarding import ForwardingHandler, Peer, routes_for
from services.gateway.peer_health import mirror_peer_health
from services.history.server import SERVICE as HISTORY_SERVICE
from services.identity.server import SERVICE as IDENTITY_SERVICE
from services.room.server import SERVICE as ROOM_SERVICE
from services.runtime.channels import open_channel
from services.runtime.config import Config
from services.runtime.grpc_types import Context, HealthStatus
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry

SERVICE = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"]
# Services whose public RPCs clients reach through the gateway.
PUBLIC_SERVICES = (IDENTITY_SERVICE, ROOM_SERVICE, HISTORY_SERVICE, FILE_SERVICE)


def _version() -> str:
    try:
        return metadata.version("parley")
    except metadata.PackageNotFoundError:
        return "0+unknown"


class GatewayServicer(gateway_pb2_grpc.GatewayServiceServicer):
    def __init__(self, mode: gateway_pb2.DeploymentMode.ValueType, services: Sequence[str], max_bytes: int) -> None:
        self._info = gateway_pb2.GetServerInfoResponse(
            version=_version(), mode=mode, services=sorted(services), max_message_bytes=max_bytes
        )

    async def GetServerInfo(
        self, request: gateway_pb2.GetServerInfoRequest, context: Context
    ) -> gateway_pb2.GetServerInfoResponse:
        return self._info


def gateway_module(config: Config, mode: gateway_pb2.DeploymentMode.ValueType) -> ServiceModule:
    """GatewayService alone (all-in-one mode: the other services are local)."""
    services = [s.full_name for s in (SERVICE, *PUBLIC_SERVICES)]
    servicer = GatewayServicer(mode, services, config.server.max_message_bytes)
    return ServiceModule(
        services=[SERVICE],
        register=lambda server: gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, server),
    )


class PeerConnections:
    """Channels to the peer services and the tasks mirroring their health."""

    def __init__(self, config: Config) -> None:
        addresses = {
            IDENTITY_SERVICE: ("identity", config.peers.identity),
            ROOM_SERVICE: ("room", config.peers.room),
            HISTORY_SERVICE: ("history", config.peers.history),
            FILE_SERVICE: ("file", config.peers.file),
        }
        self.peers: dict[descriptor.ServiceDescriptor, Peer] = {
            service: Peer(name, address, open_channel(address, config.server))
            for service, (name, address) in addresses.items()
        }
        self._tasks: list[asyncio.Task[None]] = []

    def start_health_mirrors(self, health_servicer: HealthStatus) -> None:
        for service, peer in self.peers.items():
            task = asyncio.create_task(mirror_peer_health(peer.channel, service.full_name, health_servicer))
            self._tasks.append(task)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for peer in self.peers.values():
            await peer.channel.close(None)


async def forwarding_module(config: Config) -> ServiceModule:
    """The other services' public RPCs, forwarded to `peers.*`; unhealthy until reached."""
    connections = PeerConnections(config)
    return ServiceModule(
        services=list(PUBLIC_SERVICES),
        register=lambda server: None,
        close=connections.close,
        generic_handlers=[ForwardingHandler(routes_for(connections.peers))],
        initially_serving=False,
        start=connections.start_health_mirrors,
    )


async def split_gateway_module(config: Config) -> ServiceModule:
    return gateway_module(config, gateway_pb2.DEPLOYMENT_MODE_SPLIT)


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The split-mode gateway: forwards to `peers.*`, verifies tokens with `peers.identity`'s keys."""
    return await serve_modules(
        config,
        [split_gateway_module, forwarding_module],
        process_name="gateway",
        identity_address=config.peers.identity,
        telemetry=telemetry,
    )
