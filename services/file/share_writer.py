"""Writes a file of a size known up front as erasure-coded shares, one stripe at a time, all or nothing."""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from services.file.share_coding import StripeCoder
from services.file.share_format import ShareHeader
from services.file.share_layout import FileLayout
from services.file.share_partial import PartialShares


class ShareWriter:
    """Takes a file's `size` bytes in chunks of any size; `finish()` stores them, `abort()` forgets them.

    The size goes in every share's header and sets its number of blocks, so each
    share is written and hashed from its first byte on. At most one stripe is buffered. Until `finish()`
    returns, the shares are temporary files that an `abort()`, an error, leaving
    a `with` block without finishing, or the writer being garbage-collected removes.
    """

    def __init__(self, stores: Sequence[Path], file_id: str, data_shares: int, stripe_bytes: int, size: int) -> None:
        if size < 0:
            raise ValueError(f"file size must not be negative, got {size}")
        self._file_id = file_id
        self._stripe_bytes = stripe_bytes
        self._size = size
        self._coder = StripeCoder(data_shares, len(stores))
        self._buffer = bytearray()
        self._written = 0
        self._open = True
        headers = [
            ShareHeader(number, data_shares, len(stores), stripe_bytes, size, file_id).pack()
            for number in range(len(stores))
        ]
        self._partial = PartialShares(stores, headers, -(-size // stripe_bytes))
        self._finalizer = weakref.finalize(self, self._partial.discard)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self._open:
            raise ValueError("the share writer is finished or aborted")
        try:
            view = memoryview(data).cast("B")
            if self._written + len(view) > self._size:
                raise ValueError(f"more bytes than the file's size of {self._size}")
            self._take(view)
        except BaseException:
            self.abort()
            raise

    def finish(self) -> FileLayout:
        """Stores the file and returns where it is; nothing is left behind if this raises."""
        if not self._open:
            raise ValueError("the share writer is finished or aborted")
        try:
            if self._written != self._size:
                raise ValueError(f"{self._written} bytes were written of the file's size of {self._size}")
            if self._buffer:
                self._encode(self._buffer)
            digests = self._partial.seal()
            k, n = self._coder.data_shares, self._coder.total_shares
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
        self._buffer = bytearray()
        self._finalizer()

    def __enter__(self) -> ShareWriter:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.abort()

    def _take(self, data: memoryview) -> None:
        """Codes every whole stripe at once, straight from `data` where it can; buffers the rest."""
        self._written += len(data)
        if self._buffer:
            missing = self._stripe_bytes - len(self._buffer)
            self._buffer += data[:missing]
            data = data[missing:]
            if len(self._buffer) < self._stripe_bytes:
                return
            self._encode(self._buffer)
            # A new buffer, not a cleared one: the coded blocks were views of the old.
            self._buffer = bytearray()
        whole = len(data) - len(data) % self._stripe_bytes
        for start in range(0, whole, self._stripe_bytes):
            self._encode(data[start : start + self._stripe_bytes])
        self._buffer += data[whole:]

    def _encode(self, stripe: bytearray | memoryview) -> None:
        block_bytes = -(-len(stripe) // self._coder.data_shares)
        self._partial.write_blocks(self._coder.encode(stripe, block_bytes))
