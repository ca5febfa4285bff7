"""The public contract seen by grpcurl: reflection, describe, health."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.support import ServerProcess, grpcurl

PARLEY_SERVICES = [
    "parley.file.v1.FileService",
    "parley.gateway.v1.GatewayService",
    "parley.history.v1.HistoryService",
    "parley.identity.v1.IdentityService",
    "parley.room.v1.ChannelService",
    "parley.room.v1.RoomService",
]


@pytest.fixture
def serve_process(tmp_path: Path) -> Iterator[ServerProcess]:
    """`parley serve` (all-in-one) as a real process, as `make run` starts it."""
    process = ServerProcess(
        ["--port", "0", "--data-dir", str(tmp_path / "data")],
        {"PARLEY_SERVER_GRACE_SECONDS": "2"},
        tmp_path / "serve.log",
    )
    yield process
    process.terminate()


def test_list_shows_parley_health_and_reflection(serve_process: ServerProcess) -> None:
    result = grpcurl(serve_process.address, "list")
    assert result.returncode == 0, result.stderr
    listed = result.stdout.split()
    assert sorted(listed) == sorted(
        [*PARLEY_SERVICES, "grpc.health.v1.Health", "grpc.reflection.v1alpha.ServerReflection"]
    )


def test_describe_works(serve_process: ServerProcess) -> None:
    service = grpcurl(serve_process.address, "describe", "parley.identity.v1.IdentityService")
    assert service.returncode == 0, service.stderr
    assert "rpc Login ( .parley.identity.v1.LoginRequest ) returns ( .parley.identity.v1.LoginResponse )" in (
        service.stdout
    )
    message = grpcurl(serve_process.address, "describe", "parley.identity.v1.DeviceKeys")
    assert message.returncode == 0, message.stderr
    assert "bytes certificate = 3;" in message.stdout


@pytest.mark.parametrize("service", ["", *PARLEY_SERVICES])
def test_health_check_per_service_is_serving(serve_process: ServerProcess, service: str) -> None:
    result = grpcurl(serve_process.address, "grpc.health.v1.Health/Check", data={"service": service})
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"status": "SERVING"}


def test_health_check_unknown_service_is_not_found(serve_process: ServerProcess) -> None:
    result = grpcurl(serve_process.address, "grpc.health.v1.Health/Check", data={"service": "nope.v1.Nope"})
    assert result.returncode != 0
    assert "NotFound" in result.stderr


def test_grpcurl_register_then_error_carries_error_info(serve_process: ServerProcess) -> None:
    result = grpcurl(
        serve_process.address,
        "parley.identity.v1.IdentityService/RegisterUser",
        data={"username": "No Spaces Allowed"},
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert '"reason":"VALIDATION_FAILED"' in result.stderr.replace(" ", "")
    assert "username:" in result.stderr


async def test_watch_sees_not_serving_during_graceful_stop(serve_process: ServerProcess) -> None:
    async with grpc.aio.insecure_channel(serve_process.address) as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(
            health_pb2.HealthCheckRequest(service="parley.identity.v1.IdentityService")
        )
        first = await asyncio.wait_for(watch.read(), 10)
        assert first.status == health_pb2.HealthCheckResponse.SERVING
        serve_process.process.send_signal(signal.SIGTERM)
        update = await asyncio.wait_for(watch.read(), 10)
        assert update.status == health_pb2.HealthCheckResponse.NOT_SERVING
        watch.cancel()
    assert await asyncio.to_thread(serve_process.process.wait, 15) == 0
