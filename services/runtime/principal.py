"""Who is calling: set by the auth interceptor, read by servicers."""

from __future__ import annotations

import contextvars
import dataclasses

import grpc

from parley.api.v1 import errors_pb2
from services.runtime.errors import ServiceError


@dataclasses.dataclass(frozen=True)
class Principal:
    """A verified caller: a user's device, or a service."""

    user_id: str = ""
    device_id: str = ""
    issuer: str = ""
    token_id: str = ""
    expires_at: float = 0.0
    service_name: str = ""

    @property
    def is_service(self) -> bool:
        return bool(self.service_name)


ANONYMOUS = Principal()
_current: contextvars.ContextVar[Principal] = contextvars.ContextVar("parley_principal", default=ANONYMOUS)


def current_principal() -> Principal:
    return _current.get()


def set_principal(principal: Principal) -> contextvars.Token[Principal]:
    return _current.set(principal)


def reset_principal(token: contextvars.Token[Principal]) -> None:
    _current.reset(token)


def require_user() -> Principal:
    """The calling user, for RPCs whose access policy admits services too."""
    principal = current_principal()
    if not principal.user_id:
        raise ServiceError(
            grpc.StatusCode.PERMISSION_DENIED,
            errors_pb2.ERROR_REASON_USER_ONLY,
            "this call acts on the caller's own account; it needs a user token",
        )
    return principal
