"""All services in one process on one port (the embedded default)."""

from __future__ import annotations

import copy
import secrets

from parley.gateway.v1 import gateway_pb2
from services.file.server import file_module
from services.gateway.server import gateway_module
from services.history.local import InProcessHistory, InProcessMailbox
from services.history.server import history_parts
from services.history.servicer import HistoryServicer
from services.identity.server import identity_module
from services.room.server import room_module, room_parts
from services.room.servicer import RoomServicer
from services.runtime.bus import Bus
from services.runtime.bus_factory import open_bus
from services.runtime.config import INTERNAL_SERVICE, Config
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry


def with_internal_secret(config: Config) -> Config:
    """A copy of `config` with a secret for Parley's own service, made up unless configured."""
    config = copy.deepcopy(config)
    config.auth.service_credentials.setdefault(INTERNAL_SERVICE, secrets.token_urlsafe(32))
    return config


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """Identity, room, history, file and gateway on one port, bound and started.

    The services still call each other over gRPC (a loopback channel), as Parley's
    own service; without a configured secret for that, this process makes one up.
    """
    config = with_internal_secret(config)
    servicers: list[HistoryServicer] = []
    room_servicers: list[RoomServicer] = []
    # One bus for the process: the history service announces on it, the gateway listens.
    bus = await open_bus(config.bus)

    async def history(config: Config) -> ServiceModule:
        module, servicer = await history_parts(config, bus)
        servicers.append(servicer)
        return module

    async def gateway(config: Config) -> ServiceModule:
        # The publish path appends in process, and joins and leaves are memberships in process.
        in_process = InProcessHistory(servicers[0])
        return gateway_module(
            config,
            gateway_pb2.DEPLOYMENT_MODE_ALL_IN_ONE,
            local_peers=True,
            history=in_process,
            bus=bus,
            owns_bus=True,
            memberships=room_servicers[0],
            mailbox=InProcessMailbox(servicers[0].mailboxes),
        )

    async def room(config: Config) -> ServiceModule:
        # Deleting a room erases its history: over loopback, as in split mode.
        module, servicer = await room_parts(config, history_on_this_server=True, bus=bus)
        room_servicers.append(servicer)
        return module

    factories = [identity_module, room, history, file_module, gateway]
    return await serve_modules(config, factories, process_name="all", identity_address=None, telemetry=telemetry)


async def create_services_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """Identity, room, history and file on one port, for gateways in processes of their own
    (`server.gateway_processes`) that reach them at `peers.*`. `config` names the internal
    secret (`with_internal_secret`) and the bus the gateways listen on."""
    bus: Bus | None = None

    async def shared_bus(config: Config) -> ServiceModule:
        # First in, so last closed: the history and room services announce on it until they close.
        nonlocal bus
        bus = await open_bus(config.bus)
        return ServiceModule(services=[], register=lambda server: None, close=bus.close)

    async def history(config: Config) -> ServiceModule:
        module, _ = await history_parts(config, bus)
        return module

    async def room(config: Config) -> ServiceModule:
        return await room_module(config, history_on_this_server=True, bus=bus)

    factories = [shared_bus, identity_module, room, history, file_module]
    return await serve_modules(config, factories, process_name="services", identity_address=None, telemetry=telemetry)


async def create_services_for_gateways(config: Config) -> tuple[ParleyServer, Config]:
    """`create_services_server` on a loopback port; with the config for gateways that use it."""
    config = with_internal_secret(config)
    own = copy.deepcopy(config)
    own.server.host, own.server.port, own.server.reuse_port = "127.0.0.1", 0, False
    # Only the gateways are meant to call this port: believe the client address they forward (rate limits).
    own.server.trust_forwarded_client = True
    server, port = await create_services_server(own)
    peers = config.peers
    peers.identity = peers.room = peers.history = peers.file = f"127.0.0.1:{port}"
    return server, config
