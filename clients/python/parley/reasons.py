"""Stable error reasons shared by the server and every client.

The wire value of a reason is its `parley.api.v1.ErrorReason` name without the
`ERROR_REASON_` prefix, carried in `google.rpc.ErrorInfo.reason`.
"""

from __future__ import annotations

from parley.api.v1 import errors_pb2

ERROR_DOMAIN = "parley.dev"
_PREFIX = "ERROR_REASON_"

ErrorReason = errors_pb2.ErrorReason


def reason_name(value: errors_pb2.ErrorReason.ValueType) -> str:
    """`ERROR_REASON_ROOM_FULL` (as a number) -> `"ROOM_FULL"`."""
    return errors_pb2.ErrorReason.Name(value).removeprefix(_PREFIX)
