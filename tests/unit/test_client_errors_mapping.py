"""error_from_rpc: server ServiceError (rich status) -> typed client exception."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, cast

import grpc
import pytest
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from parley.api.v1 import errors_pb2
from parley.errors import (
    AlreadyExistsError,
    NotFoundError,
    ParleyError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitedError,
    RoomFullError,
    UnauthenticatedError,
    UnavailableError,
    ValidationError,
    error_from_rpc,
)
from services.runtime import errors as server_errors
from services.runtime.errors import Reason, ServiceError

Metadata = Sequence[tuple[str, Any]]


class FakeRpcError:
    """Quacks like grpc.aio.AioRpcError for error_from_rpc."""

    def __init__(self, code: grpc.StatusCode, details: str | None, trailing: Metadata | None = ()) -> None:
        self._code = code
        self._details = details
        self._trailing = trailing

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str | None:
        return self._details

    def trailing_metadata(self) -> Metadata | None:
        return self._trailing


def from_service_error(error: ServiceError, extra: Metadata = ()) -> ParleyError:
    status = error.to_status()
    fake = FakeRpcError(status.code, status.details, (*extra, *status.trailing_metadata))
    return error_from_rpc(cast(grpc.aio.AioRpcError, fake))


def from_code(code: grpc.StatusCode, details: str | None = "boom", trailing: Metadata | None = ()) -> ParleyError:
    return error_from_rpc(cast(grpc.aio.AioRpcError, FakeRpcError(code, details, trailing)))


# --- with ErrorInfo details ---------------------------------------------------------


def test_validation_error_names_the_field() -> None:
    error = from_service_error(server_errors.invalid_field("username", "must be 3–32 characters"))
    assert type(error) is ValidationError
    assert error.field == "username"
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert error.reason == "VALIDATION_FAILED"
    assert error.message == "username: must be 3–32 characters"
    assert error.retryable is False
    assert str(error) == "VALIDATION_FAILED: username: must be 3–32 characters"


@pytest.mark.parametrize(
    "reason",
    [errors_pb2.ERROR_REASON_MALFORMED_REQUEST, errors_pb2.ERROR_REASON_BAD_CERTIFICATE],
)
def test_other_validation_reasons(reason: Reason) -> None:
    error = from_service_error(ServiceError(grpc.StatusCode.INVALID_ARGUMENT, reason, "bad", field="certificate"))
    assert type(error) is ValidationError
    assert error.field == "certificate"


def test_not_found() -> None:
    error = from_service_error(
        server_errors.not_found(errors_pb2.ERROR_REASON_USER_NOT_FOUND, "no user bob", username="bob")
    )
    assert type(error) is NotFoundError
    assert error.reason == "USER_NOT_FOUND"
    assert error.metadata == {"username": "bob"}
    assert error.message == "no user bob"


def test_already_exists() -> None:
    error = from_service_error(server_errors.already_exists(errors_pb2.ERROR_REASON_USERNAME_TAKEN, "taken"))
    assert type(error) is AlreadyExistsError
    assert error.reason == "USERNAME_TAKEN"
    assert error.code == grpc.StatusCode.ALREADY_EXISTS


def test_permission_denied() -> None:
    error = from_service_error(server_errors.permission_denied(errors_pb2.ERROR_REASON_NOT_OWNER, "not yours"))
    assert type(error) is PermissionDeniedError
    assert error.reason == "NOT_OWNER"
    assert error.retryable is False


@pytest.mark.parametrize(
    "reason",
    [
        errors_pb2.ERROR_REASON_TOKEN_EXPIRED,
        errors_pb2.ERROR_REASON_TOKEN_INVALID,
        errors_pb2.ERROR_REASON_TOKEN_MISSING,
    ],
)
def test_unauthenticated(reason: Reason) -> None:
    error = from_service_error(server_errors.unauthenticated(reason, "log in again"))
    assert type(error) is UnauthenticatedError
    assert error.code == grpc.StatusCode.UNAUTHENTICATED
    assert error.reason.startswith("TOKEN_")


def test_rate_limited_carries_retry_after() -> None:
    error = from_service_error(server_errors.rate_limited("slow down", 2.5))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 2.5
    assert error.retryable is True
    assert error.reason == "RATE_LIMITED"


def test_rate_limited_retry_after_is_rounded_to_milliseconds() -> None:
    error = from_service_error(server_errors.rate_limited("slow down", 0.0004))
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 0.0


def test_unavailable_is_retryable() -> None:
    error = from_service_error(server_errors.unavailable("identity is down", service="identity"))
    assert type(error) is UnavailableError
    assert error.retryable is True
    assert error.reason == "SERVICE_UNAVAILABLE"
    assert error.metadata == {"service": "identity"}


def test_room_full() -> None:
    error = from_service_error(
        ServiceError(grpc.StatusCode.FAILED_PRECONDITION, errors_pb2.ERROR_REASON_ROOM_FULL, "full", room="lobby")
    )
    assert type(error) is RoomFullError
    assert error.metadata == {"room": "lobby"}


def test_resource_exhausted_with_other_reason_is_not_retryable() -> None:
    # e.g. a payload over the size limit: same status code as rate limiting, not worth retrying.
    error = from_service_error(
        ServiceError(grpc.StatusCode.RESOURCE_EXHAUSTED, errors_pb2.ERROR_REASON_PAYLOAD_TOO_LARGE, "too big")
    )
    assert type(error) is PayloadTooLargeError
    assert not isinstance(error, RateLimitedError)
    assert error.retryable is False
    assert error.reason == "PAYLOAD_TOO_LARGE"


def test_internal_is_plain_parley_error() -> None:
    error = from_service_error(server_errors.internal())
    assert type(error) is ParleyError
    assert error.reason == "INTERNAL"
    assert error.code == grpc.StatusCode.INTERNAL


def test_reason_wins_over_status_code() -> None:
    # A validation reason under an unexpected code still maps by reason.
    error = from_service_error(
        ServiceError(grpc.StatusCode.FAILED_PRECONDITION, errors_pb2.ERROR_REASON_VALIDATION_FAILED, "x", field="f")
    )
    assert type(error) is ValidationError
    assert error.code == grpc.StatusCode.FAILED_PRECONDITION


def test_other_trailers_are_ignored() -> None:
    error = from_service_error(
        server_errors.invalid_field("room_id", "bad"),
        extra=(("x-request-id", "abc"), ("grpc-trace-bin", b"\x00\x01")),
    )
    assert type(error) is ValidationError
    assert error.field == "room_id"


def test_error_info_from_another_domain_is_ignored() -> None:
    info = error_details_pb2.ErrorInfo(reason="RATE_LIMITED", domain="example.com", metadata={"field": "x"})
    detail = any_pb2.Any()
    detail.Pack(info)
    status = status_pb2.Status(code=grpc.StatusCode.NOT_FOUND.value[0], message="nope", details=[detail])
    error = from_code(grpc.StatusCode.NOT_FOUND, "nope", (("grpc-status-details-bin", status.SerializeToString()),))
    assert type(error) is NotFoundError
    assert error.reason == ""
    assert error.metadata == {}


# --- fallback by status code (no details) ---------------------------------------


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, ValidationError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.ALREADY_EXISTS, AlreadyExistsError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthenticatedError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ParleyError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, UnavailableError),
        (grpc.StatusCode.INTERNAL, ParleyError),
        (grpc.StatusCode.UNKNOWN, ParleyError),
        (grpc.StatusCode.FAILED_PRECONDITION, ParleyError),
    ],
)
def test_fallback_by_status_code(code: grpc.StatusCode, kind: type[ParleyError]) -> None:
    error = from_code(code, "boom")
    assert type(error) is kind
    assert error.code == code
    assert error.reason == ""
    assert error.message == "boom"
    assert str(error) == "boom"


def test_oversized_message_is_not_a_retryable_rate_limit() -> None:
    # grpc's own "Received message larger than max" carries no reason.
    error = from_code(grpc.StatusCode.RESOURCE_EXHAUSTED, "Received message larger than max (9 vs. 4)")
    assert type(error) is ParleyError
    assert error.retryable is False


def test_fallback_validation_error_has_empty_field() -> None:
    error = from_code(grpc.StatusCode.INVALID_ARGUMENT)
    assert isinstance(error, ValidationError)
    assert error.field == ""


def test_missing_details_and_trailers() -> None:
    error = from_code(grpc.StatusCode.UNAVAILABLE, details=None, trailing=None)
    assert type(error) is UnavailableError
    assert error.message == "UNAVAILABLE"
    assert error.retryable is True


def test_every_class_is_a_parley_error() -> None:
    for kind in (
        ValidationError,
        NotFoundError,
        AlreadyExistsError,
        PermissionDeniedError,
        UnauthenticatedError,
        RateLimitedError,
        UnavailableError,
        RoomFullError,
    ):
        assert issubclass(kind, ParleyError)
        assert issubclass(kind, Exception)
