"""Forwards the public RPCs of other services as raw bytes, no re-encoding.

The gateway's own interceptors have already checked the caller's token; the
call goes on with the caller's metadata so the peer checks it again.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any, NoReturn, cast

import grpc
from google.protobuf import descriptor

from services.runtime.client_address import CLIENT_ADDRESS_HEADER, peer_host
from services.runtime.errors import unavailable
from services.runtime.grpc_types import Context, GenericRpcHandler
from services.runtime.methods import MethodInfo, methods_of

# Set by grpc itself on the outgoing call.
_HOP_HEADERS = {"user-agent", "te", "content-type", "grpc-accept-encoding", "grpc-timeout"}
_PEER_DOWN = {grpc.StatusCode.UNAVAILABLE}


@dataclasses.dataclass(frozen=True)
class Peer:
    name: str  # "identity"
    address: str
    channel: grpc.aio.Channel


@dataclasses.dataclass(frozen=True)
class Route:
    method: MethodInfo
    peer: Peer


def routes_for(peers: Mapping[descriptor.ServiceDescriptor, Peer]) -> dict[str, Route]:
    return {m.full_name: Route(m, peer) for service, peer in peers.items() for m in methods_of(service)}


class ForwardingHandler(GenericRpcHandler):
    def __init__(self, routes: Mapping[str, Route]) -> None:
        self._handlers = {name: _handler_for(route) for name, route in routes.items()}

    def service(self, details: Any) -> Any:
        return self._handlers.get(details.method)


def _handler_for(route: Route) -> Any:
    """A raw-bytes method handler of the route's shape.

    grpc picks how to drive a handler from its function type, so each shape
    gets a real coroutine or async-generator function, not a lambda.
    """
    channel = route.peer.channel
    name = route.method.full_name

    async def unary_response(request: Any, context: Context) -> bytes:
        call_type = channel.stream_unary if route.method.client_streaming else channel.unary_unary
        call = call_type(name, None, None)(
            request, metadata=_forwarded_metadata(context), timeout=context.time_remaining()
        )
        # A client-streaming peer may answer before the response (FileService.Upload accepting `start`).
        relaying = (
            asyncio.ensure_future(_relay_initial_metadata(call, context)) if route.method.client_streaming else None
        )
        try:
            response: bytes = await call
        except grpc.aio.AioRpcError as exc:
            await _relay_error(route, exc, context)
        finally:
            if relaying is not None:
                relaying.cancel()
        return response

    async def stream_response(request: Any, context: Context) -> AsyncIterator[bytes]:
        call_type = channel.stream_stream if route.method.client_streaming else channel.unary_stream
        call = call_type(name, None, None)(
            request, metadata=_forwarded_metadata(context), timeout=context.time_remaining()
        )
        try:
            async for response in call:
                yield response
        except grpc.aio.AioRpcError as exc:
            await _relay_error(route, exc, context)
        finally:
            call.cancel()

    if route.method.client_streaming and route.method.server_streaming:
        return grpc.stream_stream_rpc_method_handler(stream_response)
    if route.method.client_streaming:
        return grpc.stream_unary_rpc_method_handler(unary_response)
    if route.method.server_streaming:
        return grpc.unary_stream_rpc_method_handler(stream_response)
    return grpc.unary_unary_rpc_method_handler(unary_response)


async def _relay_initial_metadata(call: Any, context: Context) -> None:
    metadata = await call.initial_metadata()
    if metadata:
        await context.send_initial_metadata(tuple(metadata))


def _forwarded_metadata(context: Context) -> list[tuple[str, str | bytes]]:
    forwarded: list[tuple[str, str | bytes]] = [
        (k, v)
        for k, v in (context.invocation_metadata() or ())
        if not k.startswith(":") and k not in _HOP_HEADERS and k != CLIENT_ADDRESS_HEADER
    ]
    forwarded.append((CLIENT_ADDRESS_HEADER, peer_host(context.peer())))
    return forwarded


async def _relay_error(route: Route, exc: grpc.aio.AioRpcError, context: Context) -> NoReturn:
    """Passes the peer's status on as it is, or explains that the peer is down."""
    trailers: list[tuple[str, str | bytes]] = list(cast(Any, exc.trailing_metadata()) or ())
    has_details = any(k == "grpc-status-details-bin" for k, _ in trailers)
    if exc.code() in _PEER_DOWN and not has_details:
        raise unavailable(
            f"the {route.peer.name} service at {route.peer.address} is unavailable ({exc.details()}); retry shortly",
            service=route.peer.name,
            address=route.peer.address,
        ) from exc
    await context.abort(exc.code(), exc.details() or "", tuple(trailers))
