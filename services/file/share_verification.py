"""Checks every share of a file against its hash and decodes stripes from k intact ones."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import BinaryIO

from services.file.share_coding import StripeCoder
from services.file.share_format import ShareHeader, hash_share, header_bytes, share_path
from services.file.share_layout import FileLayout, SharesLostError


class VerifiedShares:
    """k intact shares of a file, open; the numbers of those missing or corrupt.

    The open files are the verified ones: a share replaced on disk later (by a
    repair) does not change what this object reads.
    """

    def __init__(self, layout: FileLayout, chosen: dict[int, BinaryIO], damaged: list[int]) -> None:
        self.layout = layout
        self.damaged = damaged
        self._chosen = chosen
        self._body_start = header_bytes(layout.file_id)

    def stripes(self, first: int = 0) -> Iterator[bytes]:
        """The file's bytes stripe by stripe from stripe number `first`, padding removed."""
        layout = self.layout
        numbers = sorted(self._chosen)
        files = [self._chosen[number] for number in numbers]
        for file in files:
            file.seek(self._body_start + first * layout.block_bytes)
        coder = StripeCoder(layout.data_shares, layout.total_shares)
        for stripe in range(first, layout.stripe_count):
            block_bytes = layout.stripe_block_bytes(stripe)
            blocks = [_read_exactly(file, block_bytes) for file in files]
            yield coder.decode(blocks, numbers)[: layout.stripe_data_bytes(stripe)]

    def close(self) -> None:
        for file in self._chosen.values():
            file.close()
        self._chosen.clear()

    def __enter__(self) -> VerifiedShares:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def verify_shares(stores: Sequence[Path], layout: FileLayout) -> VerifiedShares:
    """Hashes all n shares; keeps k intact ones open, preferring data shares (no decoding).

    Raises SharesLostError when fewer than k are intact.
    """
    chosen: dict[int, BinaryIO] = {}
    damaged: list[int] = []
    intact = 0
    for number in range(layout.total_shares):
        file = _open_intact(stores[number], layout, number)
        if file is None:
            damaged.append(number)
            continue
        intact += 1
        if len(chosen) < layout.data_shares:
            chosen[number] = file
        else:
            file.close()
    if intact < layout.data_shares:
        for file in chosen.values():
            file.close()
        raise SharesLostError(layout.file_id, intact, layout.total_shares, layout.data_shares)
    return VerifiedShares(layout, chosen, damaged)


def _open_intact(store: Path, layout: FileLayout, number: int) -> BinaryIO | None:
    try:
        file = share_path(store, layout.share_hashes[number]).open("rb")
    except OSError:
        return None
    try:
        expected_bytes = header_bytes(layout.file_id) + layout.share_body_bytes()
        if (
            os.fstat(file.fileno()).st_size == expected_bytes
            and hash_share(file) == layout.share_hashes[number]
            and _read_header(file) == ShareHeader.for_layout(layout, number)
        ):
            return file
    except OSError:
        pass
    file.close()
    return None


def _read_header(file: BinaryIO) -> ShareHeader | None:
    file.seek(0)
    try:
        return ShareHeader.read(file)
    except ValueError:
        return None


def _read_exactly(file: BinaryIO, size: int) -> bytes:
    data = file.read(size)
    if len(data) != size:
        raise OSError(f"share {file.name!r} ended early: {len(data)} of {size} bytes")
    return data
