"""The room service as a module of a server, and on its own."""

from __future__ import annotations

from pathlib import Path

from parley.room.v1 import room_pb2, room_pb2_grpc
from services.room import definitions, store
from services.room.membership import Membership
from services.room.registry import RoomRegistry
from services.room.servicer import RoomServicer
from services.runtime.config import Config
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.sqlite import SqliteDatabase
from services.runtime.telemetry import Telemetry

SERVICE = room_pb2.DESCRIPTOR.services_by_name["RoomService"]


async def room_module(config: Config) -> ServiceModule:
    declared = [definitions.from_config(d, config.config_dir or Path.cwd()) for d in config.rooms]
    db = SqliteDatabase(config.server.data_dir / "room.sqlite3", store.MIGRATIONS)
    await db.open()
    registry = RoomRegistry(db, declared)
    try:
        await registry.load()
    except BaseException:
        await db.close()
        raise
    servicer = RoomServicer(registry, Membership(), config.room_service.creations_per_hour)
    return ServiceModule(
        services=[SERVICE],
        register=lambda server: room_pb2_grpc.add_RoomServiceServicer_to_server(servicer, server),
        close=db.close,
    )


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The room service alone; verification keys come from `peers.identity`."""
    return await serve_modules(
        config, [room_module], process_name="room", identity_address=config.peers.identity, telemetry=telemetry
    )
