"""The storage core of the file service: erasure-coded, content-addressed shares.

`ShareStores` spreads each file over n directories (one share each, any k of
which restore it), checks each block it reads against its BLAKE2b-256 (and the
unread shares' blocks when asked) and rebuilds lost or corrupt shares. It stores the bytes it is
given (ciphertext from the client) and never encrypts or decrypts. Its file I/O
blocks: call it from a worker thread.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

from services.file.share_format import ShareHeader, encode_file_id, share_path
from services.file.share_layout import MAX_SHARES, FileLayout, SharesLostError, check_coding
from services.file.share_partial import PARTIAL_PREFIX
from services.file.share_reader import ShareReader
from services.file.share_repair import ShareRebuildError, repair_shares
from services.file.share_verification import damaged_shares, open_shares
from services.file.share_writer import ShareWriter

__all__ = [
    "FileLayout",
    "ScrubReport",
    "ShareReader",
    "ShareRebuildError",
    "ShareStores",
    "ShareWriter",
    "SharesLostError",
]

DEFAULT_BLOCK_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class ScrubReport:
    checked: int
    # File id -> share numbers rebuilt.
    repaired: dict[str, list[int]]
    # Files with fewer than k intact shares.
    lost: list[str]
    # Leftovers removed (scrub with sweep): shares no file refers to, partial files of uploads that never finished.
    swept: int = 0
    # Why leftovers were not swept although asked, or "".
    sweep_skipped: str = ""


def _file_id_of(path: Path) -> str | None:
    try:
        with path.open("rb") as source:
            return ShareHeader.read(source).file_id
    except (OSError, ValueError, UnicodeDecodeError):
        return None


class ShareStores:
    """n share stores (directories, each may be its own disk); any k shares restore a file.

    Share i of every file lives in `directories[i]`. A stripe holds k ×
    `block_bytes` of the file.
    """

    def __init__(
        self, directories: Sequence[Path], data_shares: int = 3, *, block_bytes: int = DEFAULT_BLOCK_BYTES
    ) -> None:
        self.directories = tuple(Path(directory) for directory in directories)
        if not self.directories:
            raise ValueError("at least one share store directory is needed")
        if len(self.directories) > MAX_SHARES:
            raise ValueError(f"at most {MAX_SHARES} share stores, got {len(self.directories)}")
        check_coding(data_shares, len(self.directories))
        if block_bytes < 1:
            raise ValueError(f"block bytes must be positive, got {block_bytes}")
        for directory in self.directories:
            directory.mkdir(parents=True, exist_ok=True)
        if len({directory.resolve() for directory in self.directories}) != len(self.directories):
            raise ValueError("share store directories must be distinct: two shares in one store protect nothing")
        self.data_shares = data_shares
        self.stripe_bytes = data_shares * block_bytes

    @property
    def total_shares(self) -> int:
        return len(self.directories)

    def writer(self, file_id: str, size: int) -> ShareWriter:
        """Takes the `size` bytes of file `file_id`."""
        encode_file_id(file_id)
        return ShareWriter(self.directories, file_id, self.data_shares, self.stripe_bytes, size)

    def reader(self, layout: FileLayout, offset: int = 0) -> ShareReader:
        """Yields the bytes from `offset`, checking each block as it reads it (SharesLostError now if fewer than
        k shares look intact, or later if they turn out to be).

        The shares whose blocks it did not all check are its `unchecked`: `damaged` checks them."""
        return ShareReader(open_shares(self._stores_of(layout), layout), offset)

    def damaged(self, layout: FileLayout, numbers: Sequence[int]) -> list[int]:
        """Those of shares `numbers` that are missing or corrupt."""
        return damaged_shares(self._stores_of(layout), layout, numbers)

    def repair(self, layout: FileLayout) -> list[int]:
        """Rebuilds missing or corrupt shares; returns their numbers (SharesLostError if fewer than k intact)."""
        return repair_shares(self._stores_of(layout), layout)

    def delete(self, layout: FileLayout) -> None:
        for store, digest in self._shares_of(layout):
            share_path(store, digest).unlink(missing_ok=True)

    def scrub(self, layouts: Iterable[FileLayout]) -> ScrubReport:
        """Checks and repairs every file; OSError from a store that cannot be written stops it."""
        checked = 0
        repaired: dict[str, list[int]] = {}
        lost: list[str] = []
        for layout in layouts:
            checked += 1
            try:
                rebuilt = self.repair(layout)
            except SharesLostError:
                lost.append(layout.file_id)
                continue
            if rebuilt:
                repaired[layout.file_id] = rebuilt
        return ScrubReport(checked, repaired, lost)

    def leftovers(self, referenced: set[bytes], written_before: float) -> list[tuple[Path, str | None]]:
        """Share files (in any store: a swapped disk is still found) whose hash no file refers to, and partial
        files, that nothing has written since `written_before`; each with the file id its header names, None
        for a partial file or an unreadable header."""
        found: list[tuple[Path, str | None]] = []
        for store in self.directories:
            for path in [*store.glob("*/*.share"), *store.glob(f"{PARTIAL_PREFIX}*")]:
                is_share = not path.name.startswith(PARTIAL_PREFIX)
                if is_share and bytes.fromhex(path.stem) in referenced:
                    continue
                try:
                    if path.stat().st_mtime >= written_before:
                        continue
                    found.append((path, _file_id_of(path) if is_share else None))
                except (FileNotFoundError, ValueError):
                    continue  # removed meanwhile, or a name that is not ours
        return found

    def _shares_of(self, layout: FileLayout) -> Iterable[tuple[Path, bytes]]:
        return zip(self._stores_of(layout), layout.share_hashes, strict=True)

    def _stores_of(self, layout: FileLayout) -> tuple[Path, ...]:
        if layout.total_shares > self.total_shares:
            raise ValueError(
                f"file {layout.file_id!r} has {layout.total_shares} shares but only {self.total_shares} stores exist"
            )
        return self.directories[: layout.total_shares]
