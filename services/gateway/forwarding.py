"""Forwards the public RPCs of other services as raw bytes, no re-encoding.

The gateway's own interceptors have already checked the caller's token; the
call goes on with the caller's metadata so the peer checks it again.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Mapping
from typing import Any, cast

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
        self._routes = routes

    def service(self, details: Any) -> Any:
        route = self._routes.get(details.method)
        if route is None:
            return None
        method = route.method
        if method.client_streaming and method.server_streaming:
            return grpc.stream_stream_rpc_method_handler(lambda r, c: _stream_response(route, r, c, True))
        if method.client_streaming:
            return grpc.stream_unary_rpc_method_handler(lambda r, c: _unary_response(route, r, c, True))
        if method.server_streaming:
            return grpc.unary_stream_rpc_method_handler(lambda r, c: _stream_response(route, r, c, False))
        return grpc.unary_unary_rpc_method_handler(lambda r, c: _unary_response(route, r, c, False))


async def _unary_response(route: Route, request: Any, context: Context, streaming: bool) -> bytes:
    channel = route.peer.channel
    name = route.method.full_name
    callable_ = channel.stream_unary(name, None, None) if streaming else channel.unary_unary(name, None, None)
    call = callable_(request, metadata=_forwarded_metadata(context), timeout=context.time_remaining())
    try:
        response: bytes = await call
    except grpc.aio.AioRpcError as exc:
        await _relay_error(route, exc, context)
        raise
    return response


async def _stream_response(route: Route, request: Any, context: Context, streaming: bool) -> AsyncIterator[bytes]:
    channel = route.peer.channel
    name = route.method.full_name
    callable_ = channel.stream_stream(name, None, None) if streaming else channel.unary_stream(name, None, None)
    call = callable_(request, metadata=_forwarded_metadata(context), timeout=context.time_remaining())
    try:
        async for response in call:
            yield response
    except grpc.aio.AioRpcError as exc:
        await _relay_error(route, exc, context)
        raise
    finally:
        call.cancel()


def _forwarded_metadata(context: Context) -> list[tuple[str, str | bytes]]:
    forwarded: list[tuple[str, str | bytes]] = [
        (k, v)
        for k, v in (context.invocation_metadata() or ())
        if not k.startswith(":") and k not in _HOP_HEADERS and k != CLIENT_ADDRESS_HEADER
    ]
    forwarded.append((CLIENT_ADDRESS_HEADER, peer_host(context.peer())))
    return forwarded


async def _relay_error(route: Route, exc: grpc.aio.AioRpcError, context: Context) -> None:
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
