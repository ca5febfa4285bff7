"""Reads a stored file back from its shares, from any offset, stripe by stripe."""

from __future__ import annotations

import weakref
from collections.abc import Generator, Iterator

from services.file.share_verification import VerifiedShares


class ShareReader:
    """An iterator of the file's bytes from `offset`, one stripe at a time.

    Every share was checked when the reader was made: `damaged` lists the share
    numbers found missing or corrupt, for the caller to repair. The shares stay
    open until the bytes are all read or `close()` is called.
    """

    def __init__(self, shares: VerifiedShares, offset: int) -> None:
        size = shares.layout.size
        if not 0 <= offset <= size:
            shares.close()
            raise ValueError(f"offset {offset} is outside the file (0 to {size} bytes)")
        self.damaged = list(shares.damaged)
        self._shares = shares
        self._chunks = _chunks_from(shares, offset)
        self._finalizer = weakref.finalize(self, shares.close)

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        return next(self._chunks)

    def close(self) -> None:
        self._chunks.close()
        self._finalizer()

    def __enter__(self) -> ShareReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _chunks_from(shares: VerifiedShares, offset: int) -> Generator[bytes, None, None]:
    stripe_bytes = shares.layout.stripe_bytes
    skip = offset % stripe_bytes
    try:
        for stripe in shares.stripes(offset // stripe_bytes):
            chunk = stripe[skip:]
            skip = 0
            if chunk:
                yield chunk
    finally:
        shares.close()
