"""Typed k-of-n coding of one stripe with zfec (which has no type hints)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import zfec  # type: ignore[import-untyped]


class StripeCoder:
    """Codes a stripe of k equal blocks into n blocks, and any k of them back."""

    def __init__(self, data_shares: int, total_shares: int) -> None:
        self.data_shares = data_shares
        self.total_shares = total_shares
        self._encoder = zfec.Encoder(data_shares, total_shares)
        self._decoder = zfec.Decoder(data_shares, total_shares)

    def encode(self, stripe: bytes, block_bytes: int, wanted: Sequence[int] | None = None) -> list[bytes]:
        """Blocks `wanted` (default: all n, in order) of `stripe`, zero-padded to k × `block_bytes`."""
        padded = stripe.ljust(self.data_shares * block_bytes, b"\0")
        primary = tuple(padded[i * block_bytes : (i + 1) * block_bytes] for i in range(self.data_shares))
        numbers = tuple(range(self.total_shares)) if wanted is None else tuple(wanted)
        blocks = self._encoder.encode(primary, numbers)
        return [bytes(block) for block in cast(list[bytes], blocks)]

    def decode(self, blocks: Sequence[bytes], share_numbers: Sequence[int]) -> bytes:
        """The padded stripe from k blocks and their share numbers."""
        if list(share_numbers) == list(range(self.data_shares)):
            return b"".join(blocks)
        primary = self._decoder.decode(tuple(blocks), tuple(share_numbers))
        return b"".join(cast(list[bytes], primary))
