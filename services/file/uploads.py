"""One upload on its way into the share stores: framed, counted, hashed, written off the event loop."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib

import grpc

from parley.api.v1 import errors_pb2
from services.file.shares import FileLayout, ShareStores, ShareWriter
from services.runtime.errors import ServiceError, invalid_field

MIN_CHUNK_BYTES = 64 * 1024
MAX_CHUNK_BYTES = 256 * 1024


def protocol_violation(message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, errors_pb2.ERROR_REASON_PROTOCOL_VIOLATION, message)


def too_large(message: str, limit: int) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED, errors_pb2.ERROR_REASON_PAYLOAD_TOO_LARGE, message, limit=str(limit)
    )


@dataclasses.dataclass(frozen=True)
class NewFile:
    """What an upload declared, once checked."""

    file_id: str
    uploader_id: str
    media_type: str
    size: int
    # False for services, which the quota does not limit.
    quota_applies: bool


class UploadSession:
    """Takes a file's chunks, checks their framing against the declared size, and stores them.

    Writing is pipelined: chunks are gathered into batches of about a stripe, and
    each batch is handed to a worker thread while the next one is received; a
    full batch (or `finish`) waits for the worker's last one first. `abort` may
    be called at any moment, even while a worker still writes (it waits for it),
    and leaves nothing behind, even after `finish`.
    """

    def __init__(self, stores: ShareStores, writer: ShareWriter, file: NewFile) -> None:
        self.file = file
        self.declared = file.size
        self.received = 0
        self.layout: FileLayout | None = None
        self._stores = stores
        self._writer = writer
        self._hash = hashlib.blake2b(digest_size=32)
        self._batch: list[bytes] = []
        self._batch_bytes = 0
        self._pending: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, stores: ShareStores, file: NewFile) -> UploadSession:
        writer = await asyncio.to_thread(stores.writer, file.file_id, file.size)
        return cls(stores, writer, file)

    async def add(self, chunk: bytes) -> None:
        self._check_frame(len(chunk))
        self.received += len(chunk)
        self._batch.append(chunk)
        self._batch_bytes += len(chunk)
        if self._batch_bytes >= self._stores.stripe_bytes:
            await self._hand_over()

    async def finish(self) -> tuple[FileLayout, bytes]:
        """Stores the shares; the layout and the BLAKE2b-256 of all the bytes."""
        if self.received != self.declared:
            raise invalid_field("start.size", f"{self.declared} bytes were declared but {self.received} arrived")
        if self._batch:
            await self._hand_over()
        await self._settle()
        self._pending = asyncio.ensure_future(asyncio.to_thread(self._seal))
        await self._settle()
        assert self.layout is not None
        return self.layout, self._hash.digest()

    async def abort(self) -> None:
        if self._pending is not None:
            await asyncio.wait([self._pending])
        await asyncio.to_thread(self._forget)

    def _check_frame(self, size: int) -> None:
        if size > MAX_CHUNK_BYTES:
            raise protocol_violation(f"chunk: {size} bytes; a chunk holds at most {MAX_CHUNK_BYTES}")
        if self.received + size > self.declared:
            raise too_large(f"the upload passed its declared size of {self.declared} bytes", self.declared)
        completes = self.received + size == self.declared
        if size == 0 or (size < MIN_CHUNK_BYTES and not completes):
            raise protocol_violation(
                f"chunk: {size} bytes; only the chunk that completes the file may hold fewer than {MIN_CHUNK_BYTES}"
            )

    async def _hand_over(self) -> None:
        """Gives the batch to a worker once the last one is written."""
        await self._settle()
        batch = self._batch
        self._batch, self._batch_bytes = [], 0
        self._pending = asyncio.ensure_future(asyncio.to_thread(self._take, batch))

    async def _settle(self) -> None:
        """Waits for the worker's last step; cancelling the wait does not stop the worker."""
        if self._pending is not None:
            await asyncio.shield(self._pending)
            self._pending = None

    def _take(self, batch: list[bytes]) -> None:
        for chunk in batch:
            self._hash.update(chunk)
            self._writer.write(chunk)

    def _seal(self) -> None:
        self.layout = self._writer.finish()

    def _forget(self) -> None:
        self._writer.abort()
        if self.layout is not None:
            self._stores.delete(self.layout)
