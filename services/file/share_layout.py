"""Where a stored file's bytes are: its k-of-n coding, stripes and share hashes.

A file is cut into stripes of `stripe_bytes` (k blocks of `stripe_bytes // k`);
each stripe is coded into n blocks, block i going to share i. The last stripe is
shrunk to the smallest block that holds what is left (`ceil(left / k)`) and
zero-padded to k such blocks, so a small file does not cost k full blocks.
"""

from __future__ import annotations

import dataclasses
from typing import Any

HASH_BYTES = 32
MAX_SHARES = 256


class SharesLostError(Exception):
    """Fewer than k of a file's n shares are intact: the file cannot be rebuilt."""

    def __init__(self, file_id: str, intact: int, total: int, needed: int) -> None:
        super().__init__(
            f"file {file_id!r}: only {intact} of {total} shares intact, {needed} needed to rebuild it; the file is lost"
        )
        self.file_id = file_id
        self.intact = intact
        self.total = total
        self.needed = needed


def check_coding(data_shares: int, total_shares: int) -> None:
    if not 1 <= total_shares <= MAX_SHARES:
        raise ValueError(f"total shares must be between 1 and {MAX_SHARES}, got {total_shares}")
    if not 1 <= data_shares <= total_shares:
        raise ValueError(f"data shares must be between 1 and total shares ({total_shares}), got {data_shares}")


@dataclasses.dataclass(frozen=True)
class FileLayout:
    file_id: str
    size: int
    data_shares: int
    total_shares: int
    stripe_bytes: int
    # Each share's address (BLAKE2b-256 of its header and block hashes, see share_format.py), by share number.
    share_hashes: tuple[bytes, ...]

    def __post_init__(self) -> None:
        check_coding(self.data_shares, self.total_shares)
        if self.size < 0:
            raise ValueError(f"file size must not be negative, got {self.size}")
        if self.stripe_bytes <= 0 or self.stripe_bytes % self.data_shares:
            raise ValueError(
                f"stripe bytes must be a positive multiple of data shares ({self.data_shares}), got {self.stripe_bytes}"
            )
        if len(self.share_hashes) != self.total_shares:
            raise ValueError(f"expected {self.total_shares} share hashes, got {len(self.share_hashes)}")
        if any(len(digest) != HASH_BYTES for digest in self.share_hashes):
            raise ValueError(f"share hashes must be {HASH_BYTES} bytes each")

    @property
    def block_bytes(self) -> int:
        """Bytes of one share's block in a full stripe."""
        return self.stripe_bytes // self.data_shares

    @property
    def stripe_count(self) -> int:
        return -(-self.size // self.stripe_bytes)

    def stripe_data_bytes(self, stripe: int) -> int:
        """Bytes of the file (not padding) in stripe number `stripe`."""
        return min(self.stripe_bytes, self.size - stripe * self.stripe_bytes)

    def stripe_block_bytes(self, stripe: int) -> int:
        return -(-self.stripe_data_bytes(stripe) // self.data_shares)

    def share_body_bytes(self) -> int:
        """Bytes of one share's blocks."""
        if self.stripe_count == 0:
            return 0
        return (self.stripe_count - 1) * self.block_bytes + self.stripe_block_bytes(self.stripe_count - 1)

    def to_dict(self) -> dict[str, Any]:
        return {
            "file_id": self.file_id,
            "size": self.size,
            "data_shares": self.data_shares,
            "total_shares": self.total_shares,
            "stripe_bytes": self.stripe_bytes,
            "share_hashes": [digest.hex() for digest in self.share_hashes],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FileLayout:
        try:
            hashes = tuple(bytes.fromhex(digest) for digest in data["share_hashes"])
            fields = {name: data[name] for name in ("file_id", "size", "data_shares", "total_shares", "stripe_bytes")}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"not a file layout: {error!r}") from error
        if not isinstance(fields["file_id"], str):
            raise ValueError("file layout: file_id must be a string")
        for name in ("size", "data_shares", "total_shares", "stripe_bytes"):
            if type(fields[name]) is not int:
                raise ValueError(f"file layout: {name} must be an integer")
        return cls(share_hashes=hashes, **fields)
