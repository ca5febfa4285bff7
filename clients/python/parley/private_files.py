"""Files only their owner may read (key files, the key store): written atomically and durably, mode 0600."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_private(path: Path, data: bytes, *, overwrite: bool = True) -> None:
    """Replaces `path` with `data` in one step (a crash leaves the old file or the new, never a mix).

    With `overwrite=False` an existing file is left alone (FileExistsError).
    """
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)  # fails if `path` exists, atomically
            os.unlink(tmp)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def open_private(path: Path) -> bytes:
    """Reads a private file; refuses one that others can read, as ssh does."""
    with open(path, "rb") as handle:
        mode = os.fstat(handle.fileno()).st_mode
        if mode & 0o077:
            raise PermissionError(f"{path} is readable by others (mode {mode & 0o777:o}); run: chmod 600 {path}")
        return handle.read()


def _fsync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
