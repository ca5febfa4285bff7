"""Typed k-of-n coding of one stripe with zfec (which has no type hints)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import zfec  # type: ignore[import-untyped]

# A block: zfec hands back the very objects it was given for the primary blocks (views stay views).
Block = bytes | memoryview


class StripeCoder:
    """Codes a stripe of k equal blocks into n blocks, and any k of them back."""

    def __init__(self, data_shares: int, total_shares: int) -> None:
        self.data_shares = data_shares
        self.total_shares = total_shares
        self._encoder = zfec.Encoder(data_shares, total_shares)
        self._decoder = zfec.Decoder(data_shares, total_shares)

    def encode(
        self, stripe: bytes | bytearray | memoryview, block_bytes: int, wanted: Sequence[int] | None = None
    ) -> list[Block]:
        """Blocks `wanted` (default: all n, in order) of `stripe`, zero-padded to k × `block_bytes`.

        The primary blocks may be views of `stripe`: use them before changing it."""
        view = memoryview(stripe)
        padded_bytes = self.data_shares * block_bytes
        if len(view) < padded_bytes:
            view = memoryview(bytes(view).ljust(padded_bytes, b"\0"))
        primary = [view[i * block_bytes : (i + 1) * block_bytes] for i in range(self.data_shares)]
        return self.encode_blocks(primary, wanted)

    def encode_blocks(self, primary: Sequence[Block], wanted: Sequence[int] | None = None) -> list[Block]:
        """Blocks `wanted` (default: all n, in order) from the k primary blocks of a stripe."""
        numbers = tuple(range(self.total_shares)) if wanted is None else tuple(wanted)
        return list(cast(list[Block], self._encoder.encode(tuple(primary), numbers)))

    def decode(self, blocks: Sequence[Block], share_numbers: Sequence[int]) -> list[Block]:
        """The k primary blocks of a stripe (padding included) from k blocks and their share numbers."""
        if list(share_numbers) == list(range(self.data_shares)):
            return list(blocks)
        return list(cast(list[Block], self._decoder.decode(tuple(blocks), tuple(share_numbers))))
