"""A stored file's bytes as download frames, read from the shares in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.file.shares import ShareReader

FRAME_BYTES = 256 * 1024
# What one trip to a worker thread reads: about a stripe of the default coding (3 × 256 KiB) and a block more.
BATCH_BYTES = 1024 * 1024


def read_batch(reader: ShareReader, batch_bytes: int = BATCH_BYTES) -> list[bytes]:
    """The reader's next pieces, at least `batch_bytes` of them unless the file ends first; [] at its end."""
    batch: list[bytes] = []
    size = 0
    while size < batch_bytes and (piece := next(reader, None)) is not None:
        batch.append(piece)
        size += len(piece)
    return batch


class DownloadFrames:
    """A share reader's bytes in frames of at most `frame_bytes` (a block of the default coding is one frame).

    The next batch is read in a worker thread while the frames of this one go
    out. `close` closes the reader, once no worker is reading from it.
    """

    def __init__(self, reader: ShareReader, frame_bytes: int = FRAME_BYTES) -> None:
        self._reader = reader
        self._frame_bytes = frame_bytes
        self._pending: asyncio.Future[list[bytes]] | None = None

    async def frames(self) -> AsyncIterator[bytes]:
        self._pending = self._read_next()
        while batch := await asyncio.shield(self._pending):
            self._pending = self._read_next()
            for piece in batch:
                for start in range(0, len(piece), self._frame_bytes):
                    yield piece if len(piece) <= self._frame_bytes else piece[start : start + self._frame_bytes]

    def close(self) -> None:
        if self._pending is None:
            self._reader.close()
        else:
            self._pending.add_done_callback(self._close_after)

    def _read_next(self) -> asyncio.Future[list[bytes]]:
        return asyncio.ensure_future(asyncio.to_thread(read_batch, self._reader))

    def _close_after(self, read: asyncio.Future[list[bytes]]) -> None:
        if not read.cancelled():
            read.exception()  # retrieved here: whoever awaited it has been told, or has gone
        self._reader.close()
