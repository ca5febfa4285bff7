"""The few protobuf wire-format pieces needed to build messages by concatenation.

A message's encoding is its fields' encodings in any order, and a repeated
message field is each element behind its tag and length, so pre-encoded parts
can be joined without decoding them.
"""

from __future__ import annotations

VARINT = 0
LENGTH_DELIMITED = 2


# The encodings of 0..127, each its own byte.
_ONE_BYTE = tuple(bytes([value]) for value in range(0x80))


def varint(value: int) -> bytes:
    # Lengths and small numbers first: they take one or two bytes (a hot path of every frame).
    if 0 <= value < 0x4000:
        return _ONE_BYTE[value] if value < 0x80 else bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field_number: int, wire_type: int) -> bytes:
    return varint(field_number << 3 | wire_type)


def length_delimited(field_number: int, body: bytes) -> bytes:
    """One length-delimited field (a message or bytes) with its tag and length."""
    return tag(field_number, LENGTH_DELIMITED) + varint(len(body)) + body


def uint_field(field_number: int, value: int) -> bytes:
    return tag(field_number, VARINT) + varint(value) if value else b""
