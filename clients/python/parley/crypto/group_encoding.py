"""The encodings group structures add to `encoding`: 8-byte counters, UTF-8 text and labelled lists."""

from __future__ import annotations

from parley.crypto.encoding import LABEL_PREFIX, labelled, read_labelled, read_u32, u32
from parley.crypto.errors import MalformedInputError

U64_MAX = 2**64 - 1


def u64(value: int) -> bytes:
    """Big-endian, 8 bytes; `ValueError` outside 0..2**64-1."""
    if not 0 <= value <= U64_MAX:
        raise ValueError(f"{value} does not fit in a u64")
    return value.to_bytes(8, "big")


def read_u64(field: bytes) -> int:
    if len(field) != 8:
        raise MalformedInputError("a u64 field is 8 bytes")
    return int.from_bytes(field, "big")


def text(value: str) -> bytes:
    return value.encode()


def read_text(field: bytes) -> str:
    """The UTF-8 text of a field; `MalformedInputError` when it is not UTF-8."""
    try:
        return field.decode()
    except UnicodeDecodeError as error:
        raise MalformedInputError(f"a text field is not UTF-8: {error}") from error


def labelled_list(purpose: str, items: list[bytes]) -> bytes:
    """`labelled(purpose, u32(count), item, ...)`: a labelled structure with a variable number of items."""
    return labelled(purpose, u32(len(items)), *items)


def read_labelled_list(purpose: str, data: bytes) -> list[bytes]:
    """The items of `labelled_list(purpose, ...)`; `MalformedInputError` for anything else."""
    count_at = 4 + len(LABEL_PREFIX + purpose) + 4
    if len(data) < count_at + 4 or data[count_at - 4 : count_at] != u32(4):
        raise MalformedInputError(f"not a {LABEL_PREFIX}{purpose} list")
    count = read_u32(data[count_at : count_at + 4])
    return read_labelled(purpose, data, count + 1)[1:]
