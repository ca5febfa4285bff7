"""The file service as a module of a server, and on its own."""

from __future__ import annotations

from parley.file.v1 import file_pb2, file_pb2_grpc
from services.file.library import open_library
from services.file.servicer import FileServicer
from services.runtime.config import Config
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry

SERVICE = file_pb2.DESCRIPTOR.services_by_name["FileService"]


async def file_module(config: Config) -> ServiceModule:
    module, _ = await file_parts(config)
    return module


async def file_parts(config: Config) -> tuple[ServiceModule, FileServicer]:
    """The module, and its servicer (whose `library.scrub()` checks and repairs every file)."""
    library = await open_library(config)
    servicer = FileServicer(library, config.files)
    module = ServiceModule(
        services=[SERVICE],
        register=lambda server: file_pb2_grpc.add_FileServiceServicer_to_server(servicer, server),
        close=library.close,
    )
    return module, servicer


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The file service alone; verification keys come from `peers.identity`."""
    return await serve_modules(
        config, [file_module], process_name="file", identity_address=config.peers.identity, telemetry=telemetry
    )
