"""Checks a file's shares and decodes stripes from k intact ones.

A share is first checked cheaply, by reading its start: it is there, of the
right size, its header is the file's, and its header and block hashes match its
address. Its blocks are then checked against those hashes: each as it is read,
or all at once (`ShareFile.intact`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, TypeVar

from services.file.share_coding import Block, StripeCoder
from services.file.share_format import (
    ShareHeader,
    block_hash,
    blocks_start,
    share_address,
    share_file_bytes,
    share_path,
)
from services.file.share_layout import HASH_BYTES, FileLayout, SharesLostError

T = TypeVar("T")
# Shares at least this long are checked each in a thread of its own; shorter ones in turn.
PARALLEL_CHECK_BYTES = 1024 * 1024


class ShareFile:
    """One share of a file, open, its header and block hashes matching its address."""

    def __init__(self, number: int, file: BinaryIO, layout: FileLayout, block_hashes: bytes) -> None:
        self.number = number
        self._file = file
        self._layout = layout
        self._block_hashes = block_hashes
        self._blocks_start = blocks_start(layout)
        # How many blocks from the first have been checked: all of them, and the whole share is.
        self._checked = 0

    @property
    def fully_checked(self) -> bool:
        return self._checked == self._layout.stripe_count

    def block(self, stripe: int) -> bytes | None:
        """Block `stripe`, if it matches its hash (None if not, or if it cannot be read)."""
        size = self._layout.stripe_block_bytes(stripe)
        try:
            self._file.seek(self._blocks_start + stripe * self._layout.block_bytes)
            block = self._file.read(size)
        except (OSError, ValueError):  # ValueError: closed meanwhile
            return None
        if (
            len(block) != size
            or block_hash(block) != self._block_hashes[stripe * HASH_BYTES : (stripe + 1) * HASH_BYTES]
        ):
            return None
        if stripe == self._checked:
            self._checked += 1
        return block

    def intact(self) -> bool:
        """Checks every block not checked yet."""
        return all(self.block(stripe) is not None for stripe in range(self._checked, self._layout.stripe_count))

    def close(self) -> None:
        self._file.close()


class OpenShares:
    """The shares a read uses: k of them read, the other intact-looking ones in reserve.

    Every block is checked against its hash as it is read; a share whose block
    fails joins `damaged` and is swapped for one in reserve (SharesLostError when
    none is left). The open files are the ones checked when this object was
    made: a share replaced on disk later (by a repair) does not change what it reads.
    """

    def __init__(
        self, layout: FileLayout, reading: list[ShareFile], reserve: list[ShareFile], damaged: list[int]
    ) -> None:
        self.layout = layout
        self.damaged = damaged
        self._reading = reading
        self._reserve = reserve
        # Never changed: read from another thread while a read goes on, it is always whole.
        self._opened = (*reading, *reserve)

    @property
    def unchecked(self) -> list[int]:
        """The shares not found damaged whose blocks were not all checked."""
        damaged = self.damaged
        return sorted(share.number for share in self._opened if not share.fully_checked and share.number not in damaged)

    def stripes(self, first: int = 0) -> Iterator[list[Block]]:
        """The k primary blocks of each stripe from stripe number `first`, the last stripe's padding included."""
        coder = StripeCoder(self.layout.data_shares, self.layout.total_shares)
        for stripe in range(first, self.layout.stripe_count):
            blocks = self._blocks_of(stripe)
            numbers = sorted(blocks)
            yield coder.decode([blocks[number] for number in numbers], numbers)

    def close(self) -> None:
        for share in self._opened:
            share.close()

    def __enter__(self) -> OpenShares:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _blocks_of(self, stripe: int) -> dict[int, bytes]:
        blocks: dict[int, bytes] = {}
        for share in list(self._reading):
            block = share.block(stripe)
            while block is None:
                share = self._replace(share)
                block = share.block(stripe)
            blocks[share.number] = block
        return blocks

    def _replace(self, damaged: ShareFile) -> ShareFile:
        damaged.close()
        self._reading.remove(damaged)
        self.damaged = sorted([*self.damaged, damaged.number])
        if not self._reserve:
            layout = self.layout
            raise SharesLostError(layout.file_id, len(self._reading), layout.total_shares, layout.data_shares)
        replacement = self._reserve.pop(0)
        self._reading.append(replacement)
        return replacement


def open_shares(stores: Sequence[Path], layout: FileLayout) -> OpenShares:
    """The file's shares for reading, data shares first (no decoding); only their starts are read now.

    SharesLostError when fewer than k look intact."""
    found, damaged = _open_all(stores, layout)
    if len(found) < layout.data_shares:
        _close_all(found)
        raise SharesLostError(layout.file_id, len(found), layout.total_shares, layout.data_shares)
    return OpenShares(layout, found[: layout.data_shares], found[layout.data_shares :], damaged)


def check_shares(stores: Sequence[Path], layout: FileLayout) -> OpenShares:
    """Checks every block of every share now; the intact ones for reading, SharesLostError if fewer than k."""
    found, damaged = _open_all(stores, layout)
    intact: list[ShareFile] = []
    checks = _each_in_a_thread if layout.share_body_bytes() >= PARALLEL_CHECK_BYTES else _each_in_turn
    for share, whole in zip(found, checks(ShareFile.intact, found), strict=True):
        if whole:
            intact.append(share)
        else:
            damaged.append(share.number)
            share.close()
    if len(intact) < layout.data_shares:
        _close_all(intact)
        raise SharesLostError(layout.file_id, len(intact), layout.total_shares, layout.data_shares)
    return OpenShares(layout, intact[: layout.data_shares], intact[layout.data_shares :], sorted(damaged))


def damaged_shares(stores: Sequence[Path], layout: FileLayout, numbers: Sequence[int]) -> list[int]:
    """Those of shares `numbers` that are missing or corrupt."""
    damaged = []
    for number in numbers:
        share = _open_share(stores[number], layout, number)
        if share is None:
            damaged.append(number)
            continue
        if not share.intact():
            damaged.append(number)
        share.close()
    return damaged


def _open_all(stores: Sequence[Path], layout: FileLayout) -> tuple[list[ShareFile], list[int]]:
    """The shares that look intact, open, by number; the numbers of the others."""
    found: list[ShareFile] = []
    damaged: list[int] = []
    for number in range(layout.total_shares):
        share = _open_share(stores[number], layout, number)
        if share is None:
            damaged.append(number)
        else:
            found.append(share)
    return found, damaged


def _open_share(store: Path, layout: FileLayout, number: int) -> ShareFile | None:
    """The share, open, if it is there, of the right size, and its header and block hashes match its address."""
    try:
        file = share_path(store, layout.share_hashes[number]).open("rb")
    except OSError:
        return None
    try:
        header = ShareHeader.for_layout(layout, number).pack()
        if os.fstat(file.fileno()).st_size == share_file_bytes(layout):
            start = file.read(blocks_start(layout))
            hashes = start[len(header) :]
            if start[: len(header)] == header and share_address(header, hashes) == layout.share_hashes[number]:
                return ShareFile(number, file, layout, hashes)
    except OSError:
        pass
    file.close()
    return None


def _each_in_turn(work: Callable[[ShareFile], T], shares: Sequence[ShareFile]) -> list[T]:
    return [work(share) for share in shares]


def _each_in_a_thread(work: Callable[[ShareFile], T], shares: Sequence[ShareFile]) -> list[T]:
    """`work` on each share, at once (hashing and reading release the GIL)."""
    if len(shares) <= 1:
        return _each_in_turn(work, shares)
    with ThreadPoolExecutor(max_workers=len(shares), thread_name_prefix="share-check") as pool:
        return list(pool.map(work, shares))


def _close_all(shares: Sequence[ShareFile]) -> None:
    for share in shares:
        share.close()
