"""Writes a file as erasure-coded shares, one stripe at a time, all or nothing."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from services.file.share_coding import StripeCoder
from services.file.share_format import ShareHeader, header_bytes
from services.file.share_layout import FileLayout
from services.file.share_partial import PartialShares


class ShareWriter:
    """Takes a file's bytes in chunks of any size; `finish()` stores them, `abort()` forgets them.

    At most one stripe is buffered. Until `finish()` returns, the shares are
    temporary files that an `abort()`, an error, leaving a `with` block without
    finishing, or the writer being garbage-collected removes.
    """

    def __init__(self, stores: Sequence[Path], file_id: str, data_shares: int, stripe_bytes: int) -> None:
        self._file_id = file_id
        self._stripe_bytes = stripe_bytes
        self._coder = StripeCoder(data_shares, len(stores))
        self._buffer = bytearray()
        self._size = 0
        self._open = True
        self._partial = PartialShares(stores, header_bytes(file_id))
        self._finalizer = weakref.finalize(self, self._partial.discard)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._open:
            raise ValueError("the share writer is finished or aborted")
        try:
            self._take(memoryview(data).cast("B"))
        except BaseException:
            self.abort()
            raise

    def finish(self) -> FileLayout:
        """Stores the file and returns where it is; nothing is left behind if this raises."""
        if not self._open:
            raise ValueError("the share writer is finished or aborted")
        try:
            if self._buffer:
                self._encode(bytes(self._buffer))
                self._buffer.clear()
            k, n = self._coder.data_shares, self._coder.total_shares
            headers = [
                ShareHeader(number, k, n, self._stripe_bytes, self._size, self._file_id).pack() for number in range(n)
            ]
            digests = self._partial.seal(headers)
            layout = FileLayout(self._file_id, self._size, k, n, self._stripe_bytes, tuple(digests))
            self._partial.publish(digests)
        except BaseException:
            self.abort()
            raise
        self._open = False
        self._finalizer.detach()
        return layout

    def abort(self) -> None:
        self._open = False
        self._buffer.clear()
        self._finalizer()

    def __enter__(self) -> ShareWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.abort()

    def _take(self, data: memoryview) -> None:
        self._size += len(data)
        if self._buffer:
            missing = self._stripe_bytes - len(self._buffer)
            self._buffer += data[:missing]
            data = data[missing:]
            if len(self._buffer) < self._stripe_bytes:
                return
            self._encode(bytes(self._buffer))
            self._buffer.clear()
        while len(data) >= self._stripe_bytes:
            self._encode(bytes(data[: self._stripe_bytes]))
            data = data[self._stripe_bytes :]
        self._buffer += data

    def _encode(self, stripe: bytes) -> None:
        block_bytes = -(-len(stripe) // self._coder.data_shares)
        self._partial.write_blocks(self._coder.encode(stripe, block_bytes))
