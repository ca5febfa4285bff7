"""Share files being written: temporary files that become content addresses, or nothing.

Each share is written to a temporary file in its own store (so the final rename
stays on one disk): its header first, room for its block hashes, then its blocks,
each hashed as it is written; at the end the block hashes fill their room, the
file is fsynced and renamed to its address. Until `publish` returns, `discard`
removes every trace: the temporary files and any address this object created.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from services.file.share_coding import Block
from services.file.share_durability import WRITEBACK_BYTES, fsync_all, start_writeback
from services.file.share_format import block_hash, fsync_directory, share_address, share_path
from services.file.share_layout import HASH_BYTES

PARTIAL_PREFIX = ".partial-"


class PartialShares:
    """Share i goes to `stores[i]`, starts with `headers[i]` and holds `block_count` blocks."""

    def __init__(self, stores: Sequence[Path], headers: Sequence[bytes], block_count: int) -> None:
        if len(stores) != len(headers):
            raise ValueError(f"{len(stores)} stores but {len(headers)} share headers")
        self._stores = list(stores)
        self._headers = list(headers)
        self._block_count = block_count
        self._files: list[BinaryIO] = []
        self._block_hashes: list[list[bytes]] = [[] for _ in headers]
        self._temporary: list[Path] = []
        self._published: list[Path] = []
        self._not_written_back = 0
        try:
            for store, header in zip(self._stores, headers, strict=True):
                descriptor, name = tempfile.mkstemp(dir=store, prefix=PARTIAL_PREFIX, suffix=".share")
                self._temporary.append(Path(name))
                self._files.append(os.fdopen(descriptor, "wb"))
                self._files[-1].write(header + bytes(block_count * HASH_BYTES))
        except BaseException:
            self.discard()
            raise

    def write_blocks(self, blocks: Sequence[Block]) -> None:
        """Appends `blocks[i]` to share file i."""
        if len(self._block_hashes[0]) == self._block_count:
            raise ValueError(f"the shares hold {self._block_count} blocks, all written")
        for file, hashes, block in zip(self._files, self._block_hashes, blocks, strict=True):
            file.write(block)
            hashes.append(block_hash(block))
        self._not_written_back += max((len(block) for block in blocks), default=0)
        if self._not_written_back >= WRITEBACK_BYTES:
            start_writeback(self._files)
            self._not_written_back = 0

    def seal(self) -> list[bytes]:
        """Writes the block hashes, makes the files durable; returns their addresses."""
        addresses = []
        for file, header, hashes in zip(self._files, self._headers, self._block_hashes, strict=True):
            if len(hashes) != self._block_count:
                raise ValueError(f"{len(hashes)} blocks were written of the shares' {self._block_count}")
            file.seek(len(header))
            file.write(b"".join(hashes))
            addresses.append(share_address(header, b"".join(hashes)))
        fsync_all(self._files)
        return addresses

    def publish(self, digests: Sequence[bytes]) -> None:
        """Renames each sealed file to its content address in its store."""
        self._close_files()
        pending = list(zip(self._stores, self._temporary, digests, strict=True))
        for store, temporary, digest in pending:
            address = share_path(store, digest)
            if not address.parent.is_dir():
                address.parent.mkdir(exist_ok=True)
                fsync_directory(store)
            # An identical share already there belongs to an earlier upload of the same file: not ours to remove.
            existed = address.exists()
            os.replace(temporary, address)
            # Forgotten at once: another writer may now be given the same temporary name.
            self._temporary.remove(temporary)
            if not existed:
                self._published.append(address)
            fsync_directory(address.parent)
        self._published.clear()

    def discard(self) -> None:
        self._close_files()
        for path in [*self._temporary, *self._published]:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self._temporary.clear()
        self._published.clear()

    def _close_files(self) -> None:
        for file in self._files:
            file.close()
        self._files.clear()
