"""The file service: servicer and module."""

from __future__ import annotations

from parley.file.v1 import file_pb2, file_pb2_grpc
from services.runtime.config import Config, FilesConfig
from services.runtime.grpc_types import Context
from services.runtime.server import ParleyServer, ServiceModule, serve_modules
from services.runtime.telemetry import Telemetry

SERVICE = file_pb2.DESCRIPTOR.services_by_name["FileService"]


class FileServicer(file_pb2_grpc.FileServiceServicer):
    def __init__(self, files: FilesConfig) -> None:
        self._policy = file_pb2.UploadPolicy(
            max_file_bytes=files.max_file_bytes,
            media_types=files.media_types,
            data_shares=files.data_shares,
            total_shares=files.total_shares,
            chunk_bytes=files.chunk_bytes,
        )

    async def GetUploadPolicy(
        self, request: file_pb2.GetUploadPolicyRequest, context: Context
    ) -> file_pb2.GetUploadPolicyResponse:
        return file_pb2.GetUploadPolicyResponse(policy=self._policy)


async def file_module(config: Config) -> ServiceModule:
    servicer = FileServicer(config.files)
    return ServiceModule(
        services=[SERVICE],
        register=lambda server: file_pb2_grpc.add_FileServiceServicer_to_server(servicer, server),
    )


async def create_server(config: Config, telemetry: Telemetry | None = None) -> tuple[ParleyServer, int]:
    """The file service alone; verification keys come from `peers.identity`."""
    return await serve_modules(
        config, [file_module], process_name="file", identity_address=config.peers.identity, telemetry=telemetry
    )
