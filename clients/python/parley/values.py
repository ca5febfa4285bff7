"""JSON values to and from their protobuf forms (payloads, meta, subject data)."""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2


def to_value(data: Any) -> struct_pb2.Value:
    """Any JSON-able Python value as a google.protobuf.Value."""
    value = struct_pb2.Value()
    json_format.ParseDict(data, value)
    return value


def to_struct(data: dict[str, Any] | None) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    if data:
        struct.update(data)
    return struct
