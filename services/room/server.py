"""The room service as a module of a server, and on its own."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import grpc

from parley.room.v1 import channel_pb2, channel_pb2_grpc, room_pb2, room_pb2_grpc
from services.room import definitions
from services.room.allowance import SchemaAllowance
from services.room.channels import ChannelServicer
from services.room.history_client import HistoryLogs
from services.room.keeper import Keeper
from services.room.leases import GatewayLeases
from services.room.members import RoomMembers
from services.room.membership import Membership
from services.room.registry import RoomRegistry
from services.room.servicer import RoomServicer
from services.room.storage import open_room_storage
from services.runtime.bus import Bus
from services.runtime.bus_factory import open_bus
from services.runtime.config import Config
from services.runtime.errors import ServiceError
from services.runtime.grpc_types import HealthStatus
from services.runtime.peer_client import internal_secret
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry

SERVICE = room_pb2.DESCRIPTOR.services_by_name["RoomService"]
CHANNEL_SERVICE = channel_pb2.DESCRIPTOR.services_by_name["ChannelService"]
REOPEN_RETRY_SECONDS = 1.0
log = logging.getLogger("parley.room")


async def room_module(config: Config, history_on_this_server: bool = False, bus: Bus | None = None) -> ServiceModule:
    """RoomService. It calls the history service at `peers.history`, or over a loopback
    channel when the history service is on this same server (all-in-one). Lapsed gateway
    leases are announced on `bus` (without one, on the bus `bus.url` names)."""
    module, _ = await room_parts(config, history_on_this_server, bus)
    return module


async def room_parts(
    config: Config, history_on_this_server: bool = False, bus: Bus | None = None
) -> tuple[ServiceModule, RoomServicer]:
    """The module, and its servicer for an in-process gateway (all-in-one: memberships without a round trip)."""
    declared = [definitions.from_config(d, config.config_dir or Path.cwd()) for d in config.rooms]
    await definitions.compile_declared(declared)
    history = HistoryLogs(
        config.server, internal_secret(config), "" if history_on_this_server else config.peers.history
    )
    storage = await open_room_storage(config)
    registry = RoomRegistry(storage, declared, history, SchemaAllowance(config.room_service.max_schema_bytes_per_user))
    members = RoomMembers(storage, history)
    try:
        await registry.load()
        await members.load()
    except BaseException:
        await storage.close()
        raise
    membership = Membership()
    servicer = RoomServicer(
        registry,
        membership,
        members,
        config.room_service.creations_per_hour,
        config.room_service.max_schema_bytes_per_room,
    )
    owns_bus = bus is None
    if bus is None:
        bus = await open_bus(config.bus)
    leases = servicer.leases = GatewayLeases(membership, bus)

    reopening: list[asyncio.Task[None]] = []

    def start(health: HealthStatus, own_address: str) -> None:
        if history_on_this_server:  # all in one: the history and identity services are on this server
            history.address = keeper.address = own_address
        if declared:
            reopening.append(asyncio.create_task(_reopen_declared_logs(registry)))
        reopening.append(asyncio.create_task(leases.run()))
        reopening.append(asyncio.create_task(_reconcile_channels(channels)))

    async def close() -> None:
        for task in reopening:
            task.cancel()
        await asyncio.gather(*reopening, return_exceptions=True)
        await history.close()
        await keeper.close()
        await storage.close()
        if owns_bus:
            await bus.close()

    keeper = Keeper(config.server.data_dir / "keeper.json")
    keeper.address = "" if history_on_this_server else config.peers.identity
    channels = ChannelServicer(storage, registry, members, membership, keeper)

    def register(server: grpc.aio.Server) -> None:
        room_pb2_grpc.add_RoomServiceServicer_to_server(servicer, server)
        channel_pb2_grpc.add_ChannelServiceServicer_to_server(channels, server)

    module = ServiceModule(
        services=[SERVICE, CHANNEL_SERVICE],
        register=register,
        close=close,
        start=start,
    )
    return module, servicer


async def _reopen_declared_logs(registry: RoomRegistry) -> None:
    """A config room may take the id of a deleted run-time room, whose log was left closed."""
    while True:
        try:
            await registry.reopen_declared_logs()
            return
        except ServiceError as error:
            log.warning("could not open the config rooms' logs; trying again", extra={"error": error.message})
            await asyncio.sleep(REOPEN_RETRY_SECONDS)


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The room service alone; verification keys come from `peers.identity`, history is at `peers.history`."""
    return await serve_modules(
        config, [room_module], process_name="room", identity_address=config.peers.identity, telemetry=telemetry
    )


async def _reconcile_channels(channels: ChannelServicer) -> None:
    """Channels' room members follow their rosters; retried while the history service cannot be reached."""
    while True:
        try:
            await channels.reconcile()
            return
        except ServiceError as error:
            log.warning("could not reconcile channel members; trying again", extra={"error": error.message})
            await asyncio.sleep(REOPEN_RETRY_SECONDS)
