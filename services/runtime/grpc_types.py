"""Type names for grpc objects the stubs leave generic or do not cover."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

Context: TypeAlias = grpc.aio.ServicerContext[Any, Any]
ServingStatus: TypeAlias = health_pb2.HealthCheckResponse.ServingStatus.ValueType


class HealthStatus(Protocol):
    """The parts of grpc_health's aio HealthServicer that Parley uses."""

    async def set(self, service: str, status: ServingStatus) -> None: ...

    async def enter_graceful_shutdown(self) -> None: ...


def add_health_servicer(server: grpc.aio.Server) -> HealthStatus:
    """Adds the stock aio health servicer (Check and a streaming Watch)."""
    servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    return cast(HealthStatus, servicer)


# Base classes that the stubs make generic but grpc cannot subscribe at run time.
if TYPE_CHECKING:
    ServerInterceptor: TypeAlias = grpc.aio.ServerInterceptor[Any, Any]
    GenericRpcHandler: TypeAlias = grpc.GenericRpcHandler[Any, Any]
    UnaryUnaryClientInterceptor: TypeAlias = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    UnaryStreamClientInterceptor: TypeAlias = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
    StreamUnaryClientInterceptor: TypeAlias = grpc.aio.StreamUnaryClientInterceptor[Any, Any]
    StreamStreamClientInterceptor: TypeAlias = grpc.aio.StreamStreamClientInterceptor[Any, Any]
else:
    ServerInterceptor = grpc.aio.ServerInterceptor
    GenericRpcHandler = grpc.GenericRpcHandler
    UnaryUnaryClientInterceptor = grpc.aio.UnaryUnaryClientInterceptor
    UnaryStreamClientInterceptor = grpc.aio.UnaryStreamClientInterceptor
    StreamUnaryClientInterceptor = grpc.aio.StreamUnaryClientInterceptor
    StreamStreamClientInterceptor = grpc.aio.StreamStreamClientInterceptor
