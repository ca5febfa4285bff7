"""Domain errors and their rich gRPC form (status + google.rpc.ErrorInfo)."""

from __future__ import annotations

from typing import TypeAlias

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from parley.api.v1 import errors_pb2
from parley.reasons import ERROR_DOMAIN, reason_name

Reason: TypeAlias = errors_pb2.ErrorReason.ValueType


class ServiceError(Exception):
    """Raised by domain code; the error interceptor turns it into a rich status."""

    def __init__(self, code: grpc.StatusCode, reason: Reason, message: str, **metadata: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason_name(reason)
        self.message = message
        self.metadata = metadata

    @classmethod
    def named(cls, code: grpc.StatusCode, reason: str, message: str, **metadata: str) -> ServiceError:
        """An error whose reason is given by name (relayed, or chosen by a hook)."""
        error = cls(code, errors_pb2.ERROR_REASON_UNSPECIFIED, message, **metadata)
        error.reason = reason
        return error

    def to_status(self) -> grpc.Status:
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        status = status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])
        return rpc_status.to_status(status)


def invalid_field(field: str, message: str) -> ServiceError:
    """INVALID_ARGUMENT naming the field, e.g. `username: must be 3–32 characters`."""
    return ServiceError(
        grpc.StatusCode.INVALID_ARGUMENT,
        errors_pb2.ERROR_REASON_VALIDATION_FAILED,
        f"{field}: {message}",
        field=field,
    )


def unauthenticated(reason: Reason, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAUTHENTICATED, reason, message)


def permission_denied(reason: Reason, message: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.PERMISSION_DENIED, reason, message)


def not_found(reason: Reason, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.NOT_FOUND, reason, message, **metadata)


def event_not_found(room_id: str, handle: str, why: str = "") -> ServiceError:
    return not_found(
        errors_pb2.ERROR_REASON_EVENT_NOT_FOUND, f"no event {handle!r} in room {room_id!r}{why}", handle=handle
    )


def not_author() -> ServiceError:
    return permission_denied(errors_pb2.ERROR_REASON_NOT_AUTHOR, "only the sender may change an event")


def already_exists(reason: Reason, message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.ALREADY_EXISTS, reason, message, **metadata)


def rate_limited(message: str, retry_after_seconds: float) -> ServiceError:
    return ServiceError(
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        errors_pb2.ERROR_REASON_RATE_LIMITED,
        message,
        retry_after_seconds=f"{retry_after_seconds:.3f}",
    )


def unavailable(message: str, **metadata: str) -> ServiceError:
    return ServiceError(grpc.StatusCode.UNAVAILABLE, errors_pb2.ERROR_REASON_SERVICE_UNAVAILABLE, message, **metadata)


def internal(message: str = "internal error; the server log has details") -> ServiceError:
    return ServiceError(grpc.StatusCode.INTERNAL, errors_pb2.ERROR_REASON_INTERNAL, message)
