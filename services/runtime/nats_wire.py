"""How a bus message looks on NATS: its subject as NATS tokens, its headers in its payload.

Subjects: `<subject_prefix>.<namespace>.<name as one token>`. A name made of
[A-Za-z0-9_:@-] only is kept as it is; any other name (dots, spaces, '*', '>',
non-ASCII, empty) is written `~` + lowercase base32 of its UTF-8 without
padding. A kept name never starts with `~`, so the two forms cannot meet.

Payload: the headers first, then the body as it was published:

    <u32 headers length> (<u16 name length> <u16 value length> <name> <value>)* <body>

(big-endian lengths, UTF-8 names and values). NATS's own headers were measured
slower (bench/bus_bench.py: nats-py builds and parses them in Python, about
5 µs per message received and half the publish rate for 200-byte messages)
and would trim a value's surrounding whitespace; this block carries any
strings exactly.
"""

from __future__ import annotations

import base64
import functools
import re
import struct
from collections.abc import Mapping

_PLAIN = re.compile(r"[A-Za-z0-9_:@-]+")
_TOTAL = struct.Struct(">I")
_PAIR = struct.Struct(">HH")
_MAX_PART = 0xFFFF


def is_plain(token: str) -> bool:
    """Letters, digits and `_:@-`: a NATS token as it is."""
    return _PLAIN.fullmatch(token) is not None


@functools.lru_cache(maxsize=65536)
def encode_name(name: str) -> str:
    """A subject name as one NATS token (injective)."""
    if is_plain(name):
        return name
    return "~" + base64.b32encode(name.encode()).decode().rstrip("=").lower()


def decode_name(token: str) -> str:
    """The name `encode_name` made `token` of; ValueError for a token it cannot have made."""
    if not token.startswith("~"):
        if not is_plain(token):
            raise ValueError(f"not an encoded subject name: {token!r}")
        return token
    body = token[1:].upper()
    try:
        return base64.b32decode(body + "=" * (-len(body) % 8)).decode()
    except ValueError as exc:  # bad base32 or bad UTF-8
        raise ValueError(f"not an encoded subject name: {token!r}") from exc


def check_subject_prefix(prefix: str) -> None:
    """The first token of every NATS subject a deployment uses."""
    if not is_plain(prefix) or ":" in prefix or "@" in prefix:
        raise ValueError(f"a subject prefix is letters, digits, '_' and '-': {prefix!r}")


def split_subject(subject: str) -> tuple[str, str]:
    """(namespace, name) of a bus subject."""
    namespace, dot, name = subject.partition(".")
    if not dot or not is_plain(namespace):
        raise ValueError(f"a bus subject is <namespace>.<name>: {subject!r}")
    return namespace, name


def pack(headers: Mapping[str, str], body: bytes) -> bytes:
    """The NATS payload of a message; ValueError for a header name or value over 65,535 bytes."""
    parts: list[bytes] = []
    for name, value in headers.items():
        name_bytes, value_bytes = name.encode(), value.encode()
        if len(name_bytes) > _MAX_PART or len(value_bytes) > _MAX_PART:
            raise ValueError(f"a bus header name or value is longer than {_MAX_PART} bytes: {name[:40]!r}")
        parts += (_PAIR.pack(len(name_bytes), len(value_bytes)), name_bytes, value_bytes)
    block = b"".join(parts)
    return b"".join((_TOTAL.pack(len(block)), block, body))


def unpack(payload: bytes) -> tuple[dict[str, str], bytes]:
    """(headers, body) of a payload `pack` made; ValueError for one it cannot have made."""
    try:
        (length,) = _TOTAL.unpack_from(payload)
        end = _TOTAL.size + length
        if end > len(payload):
            raise ValueError("the headers run past the payload")
        headers: dict[str, str] = {}
        at = _TOTAL.size
        while at < end:
            name_length, value_length = _PAIR.unpack_from(payload, at)
            at += _PAIR.size
            value_at = at + name_length
            after = value_at + value_length
            if after > end:
                raise ValueError("a header runs past the headers")
            name = payload[at:value_at].decode()
            if name in headers:
                raise ValueError(f"the header {name!r} repeats")
            headers[name] = payload[value_at:after].decode()
            at = after
    except (ValueError, struct.error) as exc:  # bad UTF-8 too
        raise ValueError(f"not a bus message: {exc}") from exc
    return headers, payload[end:]
