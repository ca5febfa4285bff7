"""The server interceptor: telemetry, errors, auth and request decoding.

One wrapper per call runs the hooks around the servicer's behaviour, in the
same task (context variables such as the principal reach the servicer), and
parses the request inside them so malformed bytes get a proper error. Keeping
it to one wrapper matters for streams: every response passes through it.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from google.protobuf import message

from parley.api.v1 import annotations_pb2, errors_pb2
from services.runtime import errors
from services.runtime.grpc_types import Context, ServerInterceptor
from services.runtime.methods import MethodInfo, MethodTable
from services.runtime.principal import current_principal, reset_principal, set_principal
from services.runtime.request_checks import MAX_REQUEST_VALUES, check_request
from services.runtime.tokens import TokenVerifier

log = logging.getLogger("parley.rpc")

CallHook = Callable[[MethodInfo, Context], AbstractAsyncContextManager[None]]
Parse = Callable[[bytes], Any]
_KINDS = ("unary_unary", "unary_stream", "stream_unary", "stream_stream")

# Methods whose handler checks each request itself (they are still parsed here): Connect and SendCommand answer
# a bad command with a Reply, where a refusal here would end the whole stream or call. Every other method's
# requests are checked here.
CHECKED_BY_HANDLER = frozenset(
    {"/parley.gateway.v1.GatewayService/Connect", "/parley.gateway.v1.GatewayService/SendCommand"}
)


class CallInterceptor(ServerInterceptor):
    """Runs `hooks` (outermost first) around every call and decodes its request inside them."""

    def __init__(self, methods: MethodTable, hooks: tuple[CallHook, CallHook, CallHook]) -> None:
        self._methods = methods
        self._hooks = hooks

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        return wrap_handler(handler, self._methods.lookup(details.method), self._hooks)


def wrap_handler(handler: Any, method: MethodInfo, hooks: tuple[CallHook, CallHook, CallHook]) -> Any:
    """A copy of `handler` whose behaviour runs inside the hooks and parses its own request."""
    kind = next(k for k in _KINDS if getattr(handler, k) is not None)
    inner = getattr(handler, kind)
    parse: Parse | None = handler.request_deserializer
    streaming_requests = handler.request_streaming
    checked_here = method.full_name not in CHECKED_BY_HANDLER
    outer, middle, innermost = hooks

    def decode(request: Any) -> Any:
        if parse is None:
            return request
        if streaming_requests:
            return _decode_stream(request, parse, checked_here)
        return _decode(request, parse, checked_here)

    if inspect.isasyncgenfunction(inner):

        async def streaming(request: Any, context: Context) -> AsyncIterator[Any]:
            async with outer(method, context), middle(method, context), innermost(method, context):
                async for response in inner(decode(request), context):
                    yield response

        behaviour: Any = streaming
    else:
        # Unary responses, or a stream written with context.write() (Health.Watch).

        async def unary(request: Any, context: Context) -> Any:
            async with outer(method, context), middle(method, context), innermost(method, context):
                return await inner(decode(request), context)

        behaviour = unary
    return handler._replace(**{kind: behaviour, "request_deserializer": None})


class _TranslatedErrors:
    """ServiceError -> rich status; anything unexpected -> logged INTERNAL."""

    __slots__ = ("_context", "_method")

    def __init__(self, method: MethodInfo, context: Context) -> None:
        self._method = method
        self._context = context

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> bool:
        if exc is None or isinstance(exc, grpc.aio.AbortError) or not isinstance(exc, Exception):
            return False
        if isinstance(exc, errors.ServiceError):
            status = exc.to_status()
        else:
            log.error("unhandled error", exc_info=exc, extra={"rpc": self._method.full_name})
            status = errors.internal().to_status()
        await self._context.abort(status.code, status.details, status.trailing_metadata)
        return False


def translate_errors(method: MethodInfo, context: Context) -> _TranslatedErrors:
    return _TranslatedErrors(method, context)


class AuthHook:
    """Verifies the bearer token against the method's access policy."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    def __call__(self, method: MethodInfo, context: Context) -> _Authenticated:
        return _Authenticated(self._verifier, method, context)


class _Authenticated:
    __slots__ = ("_context", "_method", "_token", "_verifier")

    def __init__(self, verifier: TokenVerifier, method: MethodInfo, context: Context) -> None:
        self._verifier = verifier
        self._method = method
        self._context = context
        self._token: Any = None

    async def __aenter__(self) -> None:
        method = self._method
        if method.access == annotations_pb2.ACCESS_POLICY_PUBLIC:
            return
        principal = await self._verifier.verify(bearer_token(self._context))
        if method.access == annotations_pb2.ACCESS_POLICY_SERVICE and not principal.is_service:
            raise errors.permission_denied(
                errors_pb2.ERROR_REASON_SERVICE_ONLY, f"{method.method} needs service credentials"
            )
        if method.access == annotations_pb2.ACCESS_POLICY_USER and principal.is_service:
            raise errors.permission_denied(errors_pb2.ERROR_REASON_USER_ONLY, f"{method.method} needs a user token")
        self._token = set_principal(principal)

    async def __aexit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> bool:
        if self._token is not None:
            # A stream whose task was cancelled is finalised in another context.
            with contextlib.suppress(ValueError):
                reset_principal(self._token)
        return False


def bearer_token(context: Context) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == "authorization":
            scheme, _, token = str(value).partition(" ")
            if scheme.lower() == "bearer" and token:
                return token.strip()
            break
    raise errors.unauthenticated(
        errors_pb2.ERROR_REASON_TOKEN_MISSING, "missing `authorization: Bearer <token>` metadata"
    )


def _decode(raw: bytes, parse: Callable[[bytes], Any], checked_here: bool) -> Any:
    """A unary request, parsed and (unless its handler checks it: CHECKED_BY_HANDLER) held to the rules every
    request obeys."""
    request = _parse(raw, parse)
    if checked_here:
        check_request(request, max_values=_values_allowed())
    return request


def _values_allowed() -> int | None:
    """The JSON values a request may hold: services' requests (a backend's batch, the
    gateway appending a client's publish) may hold all that fits in a message.

    Service calls are trusted: in split mode the history service walks a client's
    publish again, unbounded, when the gateway appends it (the gateway bounded it first)."""
    return None if current_principal().is_service else MAX_REQUEST_VALUES


def _parse(raw: bytes, parse: Callable[[bytes], Any]) -> Any:
    try:
        return parse(raw)
    except (message.DecodeError, ValueError) as exc:
        raise errors.ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_MALFORMED_REQUEST,
            f"request is not a valid protobuf message: {exc}",
        ) from exc


async def _decode_stream(
    requests: AsyncIterator[bytes], parse: Callable[[bytes], Any], checked_here: bool
) -> AsyncIterator[Any]:
    """A stream's requests, parsed, and checked unless its handler checks them (CHECKED_BY_HANDLER)."""
    async for raw in requests:
        request = _parse(raw, parse)
        if checked_here:
            check_request(request, max_values=_values_allowed())
        yield request
