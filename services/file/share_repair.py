"""Rebuilds a file's missing or corrupt shares from k intact ones."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from services.file.share_coding import StripeCoder
from services.file.share_format import ShareHeader
from services.file.share_layout import FileLayout
from services.file.share_partial import PartialShares
from services.file.share_verification import check_shares


class ShareRebuildError(Exception):
    """A rebuilt share does not match its recorded hash: the layout does not describe these shares."""


def repair_shares(stores: Sequence[Path], layout: FileLayout) -> list[int]:
    """Checks every share, re-encodes the damaged ones and puts them back at their content addresses.

    Returns the share numbers rebuilt; SharesLostError when fewer than k are intact.
    """
    with check_shares(stores, layout) as shares:
        damaged = shares.damaged
        if not damaged:
            return []
        coder = StripeCoder(layout.data_shares, layout.total_shares)
        headers = [ShareHeader.for_layout(layout, number).pack() for number in damaged]
        partial = PartialShares([stores[number] for number in damaged], headers, layout.stripe_count)
        try:
            for primary in shares.stripes():
                partial.write_blocks(coder.encode_blocks(primary, damaged))
            digests = partial.seal()
            expected = [layout.share_hashes[number] for number in damaged]
            if digests != expected:
                mismatched = [number for number, a, b in zip(damaged, digests, expected, strict=True) if a != b]
                raise ShareRebuildError(f"file {layout.file_id!r}: rebuilt shares {mismatched} differ from the layout")
            partial.publish(digests)
        except BaseException:
            partial.discard()
            raise
    return damaged
