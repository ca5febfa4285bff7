"""Conversions between epoch seconds and protobuf Timestamps."""

from __future__ import annotations

from google.protobuf import timestamp_pb2


def to_timestamp(seconds: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(seconds * 1_000_000_000))
    return stamp
