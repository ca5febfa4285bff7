"""Typed exceptions for every error a Parley server returns.

The server attaches `google.rpc.ErrorInfo` with a stable `reason`; the client
maps the reason (or, failing that, the status code) to one class here.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.rpc import error_details_pb2, status_pb2

from parley.api.v1 import errors_pb2
from parley.api.v1 import status_pb2 as status_pb2_api
from parley.reasons import ERROR_DOMAIN, reason_name


class ParleyError(Exception):
    """Base of every Parley error.

    Attributes: `code` (grpc.StatusCode), `reason` (e.g. "ROOM_FULL", or "" when
    the server gave none), `message`, `metadata` (extra ErrorInfo fields), and
    `retryable` (True when the same call may succeed later).
    """

    retryable = False

    def __init__(
        self, code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(f"{reason}: {message}" if reason else message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = dict(metadata or {})


class ValidationError(ParleyError):
    """A request field is missing or malformed; `field` names it."""

    @property
    def field(self) -> str:
        return self.metadata.get("field", "")


class NotFoundError(ParleyError):
    """The user, device, room or channel does not exist."""


class AlreadyExistsError(ParleyError):
    """The username (or device, or room) is taken."""


class PermissionDeniedError(ParleyError):
    """The caller is known but not allowed to do this."""


class UnauthenticatedError(ParleyError):
    """Missing, expired, forged or revoked credentials; log in again."""


class RateLimitedError(ParleyError):
    """Too many requests; `retry_after` says how long to wait, in seconds."""

    retryable = True

    @property
    def retry_after(self) -> float:
        return float(self.metadata.get("retry_after_seconds", "1"))


class UnavailableError(ParleyError):
    """The server or a service behind it cannot be reached right now; retry."""

    retryable = True


class RoomFullError(ParleyError):
    """The room is at its `max_size`."""


class SlowConsumerError(ParleyError):
    """The server ended the stream because this client fell too far behind reading it.

    Nothing is lost: the client reconnects by itself and resumes each room from
    the last event it received (with `reconnect=False`, join again to resume).
    """

    retryable = True


class PayloadTooLargeError(ParleyError):
    """A message, event or file over its size limit (`limit` in the metadata, in bytes)."""


class QuotaExceededError(ParleyError):
    """The upload would take the user past their file quota."""


class FileLostError(ParleyError):
    """Fewer of the file's shares are intact than it takes to rebuild it (DATA_LOSS)."""


_BY_REASON: dict[str, type[ParleyError]] = {
    "VALIDATION_FAILED": ValidationError,
    "MALFORMED_REQUEST": ValidationError,
    "BAD_CERTIFICATE": ValidationError,
    "ROOM_FULL": RoomFullError,
    "RATE_LIMITED": RateLimitedError,
    "SLOW_CONSUMER": SlowConsumerError,
    "SERVICE_UNAVAILABLE": UnavailableError,
    "PAYLOAD_TOO_LARGE": PayloadTooLargeError,
    "QUOTA_EXCEEDED": QuotaExceededError,
    "FILE_LOST": FileLostError,
}

_BY_CODE: dict[grpc.StatusCode, type[ParleyError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: ValidationError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: AlreadyExistsError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthenticatedError,
    # RESOURCE_EXHAUSTED is a RateLimitedError only with reason RATE_LIMITED;
    # otherwise (e.g. a message over the size limit) retrying will not help.
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: UnavailableError,
}


# A stream that ended with one of these is not reopened by itself ...
FINAL_ENDINGS = frozenset(
    {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.INVALID_ARGUMENT}
)
# ... but one whose token expired is: a new stream with a fresh token carries on.
TOKEN_EXPIRED = reason_name(errors_pb2.ERROR_REASON_TOKEN_EXPIRED)
# A call that failed with one of these may succeed on a new stream.
TRANSIENT = frozenset({grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED})


def is_final(error: ParleyError | None) -> bool:
    """A stream ending the client does not recover from by opening another one."""
    return error is not None and error.code in FINAL_ENDINGS and error.reason != TOKEN_EXPIRED


def worth_retrying(error: ParleyError) -> bool:
    """A failure that may not happen again on a new stream."""
    return error.code in TRANSIENT or error.retryable


def error_from_rpc(error: grpc.aio.AioRpcError) -> ParleyError:
    """The typed exception for a failed call, read from its ErrorInfo trailer."""
    code: grpc.StatusCode = error.code()
    message = error.details() or code.name
    reason, metadata = error_info(error.trailing_metadata() or ())
    kind = _BY_REASON.get(reason) or _BY_CODE.get(code, ParleyError)
    return kind(code, reason, message, metadata)


def error_from_status(status: status_pb2_api.Status) -> ParleyError:
    """The typed exception for a failed in-stream command (a Reply's status)."""
    code = _CODES.get(status.code, grpc.StatusCode.UNKNOWN)
    kind = _BY_REASON.get(status.reason) or _BY_CODE.get(code, ParleyError)
    return kind(code, status.reason, status.message or code.name, dict(status.metadata))


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def error_info(trailers: object) -> tuple[str, dict[str, str]]:
    """The Parley ErrorInfo reason and metadata in a call's trailers (empty when absent)."""
    for key, value in trailers:  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin":
            continue
        status = status_pb2.Status.FromString(value)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info) and info.domain == ERROR_DOMAIN:
                return info.reason, dict(info.metadata)
    return "", {}
