"""gRPC face of the file service."""

from __future__ import annotations

from collections.abc import AsyncIterator

from parley.file.v1 import file_pb2, file_pb2_grpc
from services.file.downloads import DownloadFrames
from services.file.library import FileLibrary, file_lost, uploader_of
from services.file.metadata import FileRow
from services.file.shares import SharesLostError
from services.file.uploads import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, protocol_violation
from services.runtime.config import FilesConfig
from services.runtime.grpc_types import Context
from services.runtime.principal import current_principal
from services.runtime.timestamps import to_timestamp


def file_info(row: FileRow) -> file_pb2.FileInfo:
    return file_pb2.FileInfo(
        file_id=row.file_id,
        size=row.size,
        media_type=row.media_type,
        uploader_id=row.uploader_id,
        create_time=to_timestamp(row.created_at),
        blake2b_256=row.blake2b,
    )


# Sent once `start` passed every check, before any chunk is read: a client that waits for it sends no bytes
# of an upload the service refuses.
UPLOAD_ACCEPTED = (("parley-upload", "accepted"),)


class FileServicer(file_pb2_grpc.FileServiceServicer):
    def __init__(self, library: FileLibrary, files: FilesConfig) -> None:
        self.library = library
        limits = library.limits
        self._policy = file_pb2.UploadPolicy(
            max_file_bytes=limits.largest,
            media_types=limits.allowed,
            data_shares=files.data_shares,
            total_shares=files.total_shares,
            chunk_bytes=files.chunk_bytes,
            max_image_bytes=files.max_image_bytes,
            max_audio_bytes=files.max_audio_bytes,
            max_video_bytes=files.max_video_bytes,
            max_document_bytes=files.max_document_bytes,
            quota_bytes=library.quota_bytes,
            min_chunk_bytes=MIN_CHUNK_BYTES,
            max_chunk_bytes=MAX_CHUNK_BYTES,
        )

    async def GetUploadPolicy(
        self, request: file_pb2.GetUploadPolicyRequest, context: Context
    ) -> file_pb2.GetUploadPolicyResponse:
        policy = file_pb2.UploadPolicy()
        policy.CopyFrom(self._policy)
        policy.used_bytes = await self.library.used_bytes(uploader_of(current_principal()))
        return file_pb2.GetUploadPolicyResponse(policy=policy)

    async def Upload(
        self, requests: AsyncIterator[file_pb2.UploadRequest], context: Context
    ) -> file_pb2.UploadResponse:
        first = await anext(requests, None)
        if first is None or first.WhichOneof("frame") != "start":
            raise protocol_violation("the first message of an upload must be `start`")
        session = await self.library.begin_upload(current_principal(), first.start.media_type, first.start.size)
        try:
            await context.send_initial_metadata(UPLOAD_ACCEPTED)
            async for request in requests:
                if request.WhichOneof("frame") != "chunk":
                    raise protocol_violation("after `start`, every message of an upload must be a `chunk`")
                await session.add(request.chunk)
        except BaseException:
            await self.library.discard(session)
            raise
        row = await self.library.store(session)
        return file_pb2.UploadResponse(file=file_info(row))

    async def Download(
        self, request: file_pb2.DownloadRequest, context: Context
    ) -> AsyncIterator[file_pb2.DownloadResponse]:
        row = await self.library.find(request.file_id)
        reader = await self.library.open_reader(row, request.offset)
        frames = DownloadFrames(reader)
        try:
            yield file_pb2.DownloadResponse(file=file_info(row))
            async for frame in frames.frames():
                yield file_pb2.DownloadResponse(chunk=frame)
        except SharesLostError as error:  # more shares turned out damaged as they were read
            raise file_lost(error) from error
        finally:
            frames.close()
            self.library.check_after_read(row, reader)

    async def Stat(self, request: file_pb2.StatRequest, context: Context) -> file_pb2.StatResponse:
        return file_pb2.StatResponse(file=file_info(await self.library.find(request.file_id)))

    async def Delete(self, request: file_pb2.DeleteRequest, context: Context) -> file_pb2.DeleteResponse:
        await self.library.delete(request.file_id, current_principal())
        return file_pb2.DeleteResponse()
