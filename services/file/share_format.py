"""A share file on disk: its header, its content address, its hash.

A share file is a header followed by its blocks, stripe after stripe. The header
says, on its own, how to decode the share (all integers big-endian):

    offset  size  field
    0       4     magic b"PSHR"
    4       1     format version (1)
    5       2     share number (0 .. n-1)
    7       2     data shares k
    9       2     total shares n
    11      4     stripe bytes (input bytes per full stripe, a multiple of k)
    15      8     file size in bytes (before padding)
    23      2     length L of the file id
    25      L     file id, UTF-8

The file id makes the shares of two files with identical bytes differ, so
deleting one file never removes the other's shares. A share is stored at
`<store>/<first 2 hex>/<BLAKE2b-256 hex>.share`, the hash of the whole file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from pathlib import Path
from typing import BinaryIO

from services.file.share_layout import FileLayout

MAGIC = b"PSHR"
VERSION = 1
_FIXED = struct.Struct(">4sBHHHIQH")
MAX_FILE_ID_BYTES = 1024
_READ_BYTES = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class ShareHeader:
    share_number: int
    data_shares: int
    total_shares: int
    stripe_bytes: int
    file_size: int
    file_id: str

    @classmethod
    def for_layout(cls, layout: FileLayout, share_number: int) -> ShareHeader:
        return cls(
            share_number, layout.data_shares, layout.total_shares, layout.stripe_bytes, layout.size, layout.file_id
        )

    def pack(self) -> bytes:
        file_id = encode_file_id(self.file_id)
        fixed = _FIXED.pack(
            MAGIC,
            VERSION,
            self.share_number,
            self.data_shares,
            self.total_shares,
            self.stripe_bytes,
            self.file_size,
            len(file_id),
        )
        return fixed + file_id

    @classmethod
    def read(cls, source: BinaryIO) -> ShareHeader:
        """The header at the start of `source`; ValueError if it is not one."""
        fixed = source.read(_FIXED.size)
        if len(fixed) != _FIXED.size:
            raise ValueError("share header truncated")
        magic, version, number, data_shares, total_shares, stripe_bytes, size, id_length = _FIXED.unpack(fixed)
        if magic != MAGIC or version != VERSION:
            raise ValueError(f"not a version {VERSION} share (magic {magic!r}, version {version})")
        file_id = source.read(id_length)
        if len(file_id) != id_length:
            raise ValueError("share header truncated")
        return cls(number, data_shares, total_shares, stripe_bytes, size, file_id.decode())


def encode_file_id(file_id: str) -> bytes:
    encoded = file_id.encode()
    if not encoded or len(encoded) > MAX_FILE_ID_BYTES:
        raise ValueError(f"file id must be 1 to {MAX_FILE_ID_BYTES} UTF-8 bytes, got {len(encoded)}")
    return encoded


def header_bytes(file_id: str) -> int:
    return _FIXED.size + len(encode_file_id(file_id))


def share_path(store: Path, digest: bytes) -> Path:
    name = digest.hex()
    return store / name[:2] / f"{name}.share"


def hash_share(source: BinaryIO) -> bytes:
    """BLAKE2b-256 of everything in `source` from its start."""
    source.seek(0)
    digest = hashlib.blake2b(digest_size=32)
    while chunk := source.read(_READ_BYTES):
        digest.update(chunk)
    return digest.digest()


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
