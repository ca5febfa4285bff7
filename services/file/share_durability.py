"""Making share files durable: their writeback started early, then every file fsynced at once."""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

# Written bytes per file between two early writebacks.
WRITEBACK_BYTES = 4 * 1024 * 1024
_SYNC_FILE_RANGE_WRITE = 2


def _sync_file_range() -> Callable[[int], object] | None:
    """Linux's sync_file_range(fd, 0, 0, SYNC_FILE_RANGE_WRITE): starts writing a file's dirty pages, no wait."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return lambda descriptor: function(descriptor, 0, 0, _SYNC_FILE_RANGE_WRITE)


_start_writing = _sync_file_range()


def start_writeback(files: Sequence[BinaryIO]) -> None:
    """Lets the disks take what was written so far while more arrives, so the final fsync has less to wait for.

    Only a hint: where it is not available, or fails, the fsync does all the work."""
    if _start_writing is None:
        return
    for file in files:
        file.flush()
        _start_writing(file.fileno())


def fsync_all(files: Sequence[BinaryIO]) -> None:
    """Flushes and fsyncs every file, each in a thread of its own (their disks, or one disk's queue, work together)."""
    for file in files:
        file.flush()
    if len(files) <= 1:
        for file in files:
            os.fsync(file.fileno())
        return
    with ThreadPoolExecutor(max_workers=len(files), thread_name_prefix="fsync") as pool:
        list(pool.map(os.fsync, [file.fileno() for file in files]))
