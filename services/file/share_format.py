"""A share file on disk: its header, its block hashes, its content address.

A share file is a header, then the BLAKE2b-256 of each of its blocks (32 bytes
each, one block per stripe), then the blocks, stripe after stripe. The header
says, on its own, how to decode the share (all integers big-endian):

    offset  size  field
    0       4     magic b"PSHR"
    4       1     format version (2)
    5       2     share number (0 .. n-1)
    7       2     data shares k
    9       2     total shares n
    11      4     stripe bytes (input bytes per full stripe, a multiple of k)
    15      8     file size in bytes (before padding)
    23      2     length L of the file id
    25      L     file id, UTF-8

A share is stored at `<store>/<first 2 hex>/<address hex>.share`, its address
the BLAKE2b-256 of its header and block hashes together. Checking that small
prefix against the address makes every block hash trustworthy, so each block
can be checked as it is read. The file id makes the shares of two files with
identical bytes differ, so deleting one file never removes the other's shares.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import struct
from pathlib import Path
from typing import BinaryIO

from services.file.share_layout import HASH_BYTES, FileLayout

MAGIC = b"PSHR"
VERSION = 2
_FIXED = struct.Struct(">4sBHHHIQH")
MAX_FILE_ID_BYTES = 1024


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


def blocks_start(layout: FileLayout) -> int:
    """Where a share's first block starts: after its header and block hashes."""
    return header_bytes(layout.file_id) + layout.stripe_count * HASH_BYTES


def share_file_bytes(layout: FileLayout) -> int:
    return blocks_start(layout) + layout.share_body_bytes()


def block_hash(block: bytes | memoryview) -> bytes:
    return hashlib.blake2b(block, digest_size=HASH_BYTES).digest()


def share_address(header: bytes, block_hashes: bytes) -> bytes:
    """BLAKE2b-256 of a share's header and block hashes: its name in its store."""
    return hashlib.blake2b(header + block_hashes, digest_size=HASH_BYTES).digest()


def share_path(store: Path, digest: bytes) -> Path:
    name = digest.hex()
    return store / name[:2] / f"{name}.share"


def fsync_directory(directory: Path) -> None:
    descriptor = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
