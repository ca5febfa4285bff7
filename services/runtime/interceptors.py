"""Server interceptors: request decoding, errors, auth, telemetry.

Each wraps the handler's behaviour, so code around a call runs in the same
task as the servicer (context variables such as the principal reach it).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import grpc
from google.protobuf import message

from parley.api.v1 import annotations_pb2, errors_pb2
from services.runtime import errors
from services.runtime.grpc_types import Context, ServerInterceptor
from services.runtime.methods import MethodInfo, MethodTable
from services.runtime.principal import reset_principal, set_principal
from services.runtime.tokens import TokenVerifier

log = logging.getLogger("parley.rpc")

Enter = Callable[[Context], AbstractAsyncContextManager[None]]
CallHook = Callable[[MethodInfo, Context], AbstractAsyncContextManager[None]]


def wrap_handler(handler: Any, enter: Enter) -> Any:
    """Returns a copy of `handler` whose behaviour runs inside `enter(context)`."""
    if handler.unary_unary is not None:
        return handler._replace(unary_unary=_wrap_unary(handler.unary_unary, enter))
    if handler.stream_unary is not None:
        return handler._replace(stream_unary=_wrap_unary(handler.stream_unary, enter))
    if handler.unary_stream is not None:
        return handler._replace(unary_stream=_wrap_streaming(handler.unary_stream, enter))
    return handler._replace(stream_stream=_wrap_streaming(handler.stream_stream, enter))


def _wrap_unary(inner: Callable[..., Awaitable[Any]], enter: Enter) -> Callable[..., Awaitable[Any]]:
    async def behaviour(request: Any, context: Context) -> Any:
        async with enter(context):
            return await inner(request, context)

    return behaviour


def _wrap_streaming(inner: Callable[..., Any], enter: Enter) -> Callable[..., Any]:
    if not inspect.isasyncgenfunction(inner):
        # Writes its responses with context.write() (e.g. Health.Watch).
        return _wrap_unary(inner, enter)

    async def behaviour(request: Any, context: Context) -> AsyncIterator[Any]:
        async with enter(context):
            async for response in inner(request, context):
                yield response

    return behaviour


class HookInterceptor(ServerInterceptor):
    """Runs `hook(method, context)` around every call."""

    def __init__(self, methods: MethodTable, hook: CallHook) -> None:
        self._methods = methods
        self._hook = hook

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None:
            return None
        info = self._methods.lookup(details.method)
        return wrap_handler(handler, lambda context: self._hook(info, context))


@contextlib.asynccontextmanager
async def translate_errors(method: MethodInfo, context: Context) -> AsyncIterator[None]:
    """ServiceError -> rich status; anything unexpected -> logged INTERNAL."""
    try:
        yield
    except errors.ServiceError as exc:
        status = exc.to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)
    except grpc.aio.AbortError:
        raise
    except Exception:
        log.exception("unhandled error", extra={"rpc": method.full_name})
        status = errors.internal().to_status()
        await context.abort(status.code, status.details, status.trailing_metadata)


class AuthHook:
    """Verifies the bearer token against the method's access policy."""

    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    @contextlib.asynccontextmanager
    async def __call__(self, method: MethodInfo, context: Context) -> AsyncIterator[None]:
        if method.access == annotations_pb2.ACCESS_POLICY_PUBLIC:
            yield
            return
        principal = await self._verifier.verify(bearer_token(context))
        if method.access == annotations_pb2.ACCESS_POLICY_SERVICE and not principal.is_service:
            raise errors.permission_denied(
                errors_pb2.ERROR_REASON_SERVICE_ONLY, f"{method.method} needs service credentials"
            )
        if method.access == annotations_pb2.ACCESS_POLICY_USER and principal.is_service:
            raise errors.permission_denied(errors_pb2.ERROR_REASON_USER_ONLY, f"{method.method} needs a user token")
        token = set_principal(principal)
        try:
            yield
        finally:
            reset_principal(token)


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


class DecodingInterceptor(ServerInterceptor):
    """Decodes requests inside the call so malformed bytes get INVALID_ARGUMENT.

    grpc's own deserializer failure surfaces as a bare INTERNAL; parsing here
    lets the error carry reason MALFORMED_REQUEST and the server keep serving.
    """

    async def intercept_service(self, continuation: Any, details: Any) -> Any:
        handler = await continuation(details)
        if handler is None or handler.request_deserializer is None:
            return handler
        parse = handler.request_deserializer
        if handler.request_streaming:
            decode: Callable[[Any], Any] = lambda requests: _decode_stream(requests, parse)  # noqa: E731
        else:
            decode = lambda raw: _decode(raw, parse)  # noqa: E731
        wrapped = _with_decoded_request(handler, decode)
        return wrapped._replace(request_deserializer=None)


def _decode(raw: bytes, parse: Callable[[bytes], Any]) -> Any:
    try:
        return parse(raw)
    except (message.DecodeError, ValueError) as exc:
        raise errors.ServiceError(
            grpc.StatusCode.INVALID_ARGUMENT,
            errors_pb2.ERROR_REASON_MALFORMED_REQUEST,
            f"request is not a valid protobuf message: {exc}",
        ) from exc


async def _decode_stream(requests: AsyncIterator[bytes], parse: Callable[[bytes], Any]) -> AsyncIterator[Any]:
    async for raw in requests:
        yield _decode(raw, parse)


def _with_decoded_request(handler: Any, decode: Callable[[Any], Any]) -> Any:
    for kind in ("unary_unary", "unary_stream", "stream_unary", "stream_stream"):
        inner = getattr(handler, kind)
        if inner is None:
            continue
        if inspect.isasyncgenfunction(inner):

            async def streaming(request: Any, context: Context, inner: Any = inner) -> AsyncIterator[Any]:
                async for response in inner(decode(request), context):
                    yield response

            return handler._replace(**{kind: streaming})

        async def unary(request: Any, context: Context, inner: Any = inner) -> Any:
            return await inner(decode(request), context)

        return handler._replace(**{kind: unary})
    return handler
