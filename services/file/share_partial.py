"""Share files being written: temporary files that become content addresses, or nothing.

Each share is written to a temporary file in its own store (so the final rename
stays on one disk), then fsynced, hashed and renamed to its content address.
Until `publish` returns, `discard` removes every trace: the temporary files and
any address this object created.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import BinaryIO

from services.file.share_format import fsync_directory, hash_share, share_path

PARTIAL_PREFIX = ".partial-"


class PartialShares:
    def __init__(self, stores: Sequence[Path], header_length: int) -> None:
        self._stores = list(stores)
        self._header_length = header_length
        self._files: list[BinaryIO] = []
        self._temporary: list[Path] = []
        self._published: list[Path] = []
        try:
            for store in self._stores:
                descriptor, name = tempfile.mkstemp(dir=store, prefix=PARTIAL_PREFIX, suffix=".share")
                self._temporary.append(Path(name))
                self._files.append(os.fdopen(descriptor, "w+b"))
                # The header's file size is known only at the end; its place is kept.
                self._files[-1].write(bytes(header_length))
        except BaseException:
            self.discard()
            raise

    def write_blocks(self, blocks: Sequence[bytes]) -> None:
        """Appends `blocks[i]` to share file i."""
        for file, block in zip(self._files, blocks, strict=True):
            file.write(block)

    def seal(self, headers: Sequence[bytes]) -> list[bytes]:
        """Writes the headers, makes the files durable, returns their BLAKE2b-256."""
        digests = []
        for file, header in zip(self._files, headers, strict=True):
            if len(header) != self._header_length:
                raise ValueError(f"share header is {len(header)} bytes, {self._header_length} were reserved")
            file.seek(0)
            file.write(header)
            file.flush()
            os.fsync(file.fileno())
            digests.append(hash_share(file))
        return digests

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
