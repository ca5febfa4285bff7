"""Unambiguous byte encodings for everything Parley signs (see CRYPTO.md).

Every signed structure starts with a purpose label, and every variable field
is length-prefixed (`u32be(len) || bytes`), so no two structures share bytes.
"""

from __future__ import annotations

import base64

from parley.crypto.errors import MalformedInputError

LABEL_PREFIX = "parley/v1/"


def length_prefixed(field: bytes) -> bytes:
    return len(field).to_bytes(4, "big") + field


def labelled(purpose: str, *fields: bytes) -> bytes:
    """`lp("parley/v1/<purpose>") || lp(field) || ...`."""
    parts = [length_prefixed((LABEL_PREFIX + purpose).encode())]
    parts.extend(length_prefixed(f) for f in fields)
    return b"".join(parts)


def read_labelled(purpose: str, data: bytes, field_count: int) -> list[bytes]:
    """The fields of `labelled(purpose, ...)` with exactly `field_count` fields; `MalformedInputError` otherwise."""
    fields: list[bytes] = []
    offset = 0
    while offset < len(data):
        if offset + 4 > len(data):
            raise MalformedInputError("truncated length prefix")
        end = offset + 4 + int.from_bytes(data[offset : offset + 4], "big")
        if end > len(data):
            raise MalformedInputError("truncated field")
        fields.append(data[offset + 4 : end])
        offset = end
    if not fields or fields[0] != (LABEL_PREFIX + purpose).encode():
        raise MalformedInputError(f"not a {LABEL_PREFIX}{purpose} structure")
    if len(fields) != field_count + 1:
        raise MalformedInputError(f"{LABEL_PREFIX}{purpose} has {len(fields) - 1} fields, expected {field_count}")
    return fields[1:]


def u32(value: int) -> bytes:
    return value.to_bytes(4, "big")


def read_u32(field: bytes) -> int:
    if len(field) != 4:
        raise MalformedInputError("a u32 field is 4 bytes")
    return int.from_bytes(field, "big")


def b64(data: bytes) -> str:
    """Standard base64 text, as key files, the key store and saved states keep bytes."""
    return base64.b64encode(data).decode()


def unb64(text: str) -> bytes:
    """The bytes of `b64` text; `MalformedInputError` (a ValueError) for anything else."""
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError) as error:
        raise MalformedInputError(f"not base64: {error}") from None
