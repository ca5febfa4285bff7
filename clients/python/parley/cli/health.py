"""`parley health`: a container health check over grpc.health.v1."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from parley.errors import error_from_rpc


async def check_health(address: str, service: str, deadline_seconds: float) -> tuple[bool, str]:
    """(serving?, what to print) for one Health.Check.

    Raises ParleyError when there is no answer (no server there, the deadline passed).
    """
    async with grpc.aio.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=deadline_seconds)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                return False, f"NOT_FOUND: {address} does not serve {service!r}"
            raise error_from_rpc(exc) from None
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
    return response.status == health_pb2.HealthCheckResponse.SERVING, status
