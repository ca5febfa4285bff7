"""All services in one process on one port (the embedded default)."""

from __future__ import annotations

from parley.gateway.v1 import gateway_pb2
from services.file.server import file_module
from services.gateway.server import gateway_module
from services.history.server import history_module
from services.identity.server import identity_module
from services.room.server import room_module
from services.runtime.config import Config
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """Identity, room, history, file and gateway on one port, bound and started."""
    factories = [identity_module, room_module, history_module, file_module, all_in_one_gateway_module]
    return await serve_modules(config, factories, process_name="all", identity_address=None, telemetry=telemetry)


async def all_in_one_gateway_module(config: Config) -> ServiceModule:
    return gateway_module(config, gateway_pb2.DEPLOYMENT_MODE_ALL_IN_ONE)
