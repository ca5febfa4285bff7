"""Reads a stored file back from its shares, from any offset, block by block."""

from __future__ import annotations

import weakref
from collections.abc import Generator, Iterator

from services.file.share_verification import OpenShares


class ShareReader:
    """An iterator of the file's bytes from `offset`, in pieces of at most one block.

    Each block is checked against its hash as it is read. `damaged` lists the
    share numbers found missing or corrupt so far, `unchecked` those whose blocks
    were not all checked: once the read is done, the caller checks these and
    repairs those. The shares stay open until the bytes are all read or `close()`
    is called.
    """

    def __init__(self, shares: OpenShares, offset: int) -> None:
        size = shares.layout.size
        if not 0 <= offset <= size:
            shares.close()
            raise ValueError(f"offset {offset} is outside the file (0 to {size} bytes)")
        self._shares = shares
        self._pieces = _pieces_from(shares, offset)
        self._finalizer = weakref.finalize(self, shares.close)

    @property
    def damaged(self) -> list[int]:
        return list(self._shares.damaged)

    @property
    def unchecked(self) -> list[int]:
        return self._shares.unchecked

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._pieces)

    def close(self) -> None:
        self._pieces.close()
        self._finalizer()

    def __enter__(self) -> ShareReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _pieces_from(shares: OpenShares, offset: int) -> Generator[bytes, None, None]:
    """Each stripe's blocks cut to the file's bytes in it, the first stripe's also to start at `offset`."""
    layout = shares.layout
    first = offset // layout.stripe_bytes
    try:
        for stripe, blocks in enumerate(shares.stripes(first), start=first):
            start = offset - stripe * layout.stripe_bytes if stripe == first else 0
            end = layout.stripe_data_bytes(stripe)
            position = 0
            for block in blocks:
                piece_start, piece_end = max(start - position, 0), min(end - position, len(block))
                if piece_start < piece_end:
                    whole = (piece_start, piece_end) == (0, len(block))
                    yield bytes(block if whole else block[piece_start:piece_end])
                position += len(block)
    finally:
        shares.close()
