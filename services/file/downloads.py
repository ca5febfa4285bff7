"""A stored file's bytes as download frames, read from the shares in a worker thread."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from services.file.shares import ShareReader

FRAME_BYTES = 256 * 1024


class DownloadFrames:
    """A share reader's bytes in frames of at most `frame_bytes`.

    The next stripe is read in a worker thread while the frames of this one go
    out. `close` closes the reader, once no worker is reading from it.
    """

    def __init__(self, reader: ShareReader, frame_bytes: int = FRAME_BYTES) -> None:
        self._reader = reader
        self._frame_bytes = frame_bytes
        self._pending: asyncio.Future[bytes | None] | None = None

    async def frames(self) -> AsyncIterator[bytes]:
        self._pending = self._read_next()
        while (stripe := await asyncio.shield(self._pending)) is not None:
            self._pending = self._read_next()
            for start in range(0, len(stripe), self._frame_bytes):
                yield stripe[start : start + self._frame_bytes]

    def close(self) -> None:
        if self._pending is None:
            self._reader.close()
        else:
            self._pending.add_done_callback(self._close_after)

    def _read_next(self) -> asyncio.Future[bytes | None]:
        return asyncio.ensure_future(asyncio.to_thread(next, self._reader, None))

    def _close_after(self, read: asyncio.Future[bytes | None]) -> None:
        if not read.cancelled():
            read.exception()  # retrieved here: whoever awaited it has been told, or has gone
        self._reader.close()
