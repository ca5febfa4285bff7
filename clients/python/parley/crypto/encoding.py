"""Unambiguous byte encodings for everything Parley signs (see CRYPTO.md).

Every signed structure starts with a purpose label, and every variable field
is length-prefixed (`u32be(len) || bytes`), so no two structures share bytes.
"""

from __future__ import annotations

LABEL_PREFIX = "parley/v1/"


def length_prefixed(field: bytes) -> bytes:
    return len(field).to_bytes(4, "big") + field


def labelled(purpose: str, *fields: bytes) -> bytes:
    """`lp("parley/v1/<purpose>") || lp(field) || ...`."""
    parts = [length_prefixed((LABEL_PREFIX + purpose).encode())]
    parts.extend(length_prefixed(f) for f in fields)
    return b"".join(parts)
