"""RPC metrics and server spans, read from in-memory exporters of a real server."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from parley.identity.v1 import identity_pb2
from services import allinone
from services.runtime.telemetry import setup_telemetry
from tests.support import identity_stub, make_config, running, wait_until


def data_points(reader: InMemoryMetricReader, name: str) -> list[object]:
    data = reader.get_metrics_data()
    assert data is not None
    return [
        point
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == name
        for point in metric.data.data_points
    ]


async def test_rpc_counts_and_latency_per_method(data_dir: Path) -> None:
    config = make_config(data_dir)
    reader = InMemoryMetricReader()
    telemetry = setup_telemetry(config.telemetry, "parley-test", metric_reader=reader)
    async with running(allinone.create_server, config, telemetry=telemetry) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            stub = identity_stub(channel)
            for _ in range(3):
                await stub.GetVerificationKeys(identity_pb2.GetVerificationKeysRequest())
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.WhoAmI(identity_pb2.WhoAmIRequest())
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
        # A call is counted once its handler is done, which may be just after the client heard its status.
        await wait_until(
            lambda: any(p.attributes["rpc.method"] == "WhoAmI" for p in data_points(reader, "rpc.server.calls")),  # type: ignore[attr-defined]
            within=5,
            interval=0.02,
        )
        calls = {
            (p.attributes["rpc.method"], p.attributes["rpc.grpc.status_code"]): p.value  # type: ignore[attr-defined]
            for p in data_points(reader, "rpc.server.calls")
        }
        durations = {
            p.attributes["rpc.method"]: p.count  # type: ignore[attr-defined]
            for p in data_points(reader, "rpc.server.duration")
        }
    assert calls[("GetVerificationKeys", "OK")] == 3
    assert calls[("WhoAmI", "UNAUTHENTICATED")] == 1
    assert durations["GetVerificationKeys"] == 3


async def test_server_span_per_call_with_status(data_dir: Path) -> None:
    config = make_config(data_dir)
    exporter = InMemorySpanExporter()
    telemetry = setup_telemetry(config.telemetry, "parley-test", span_exporter=exporter)
    async with running(allinone.create_server, config, telemetry=telemetry) as (_, address):
        async with grpc.aio.insecure_channel(address) as channel:
            with pytest.raises(grpc.aio.AioRpcError):
                await identity_stub(channel).WhoAmI(identity_pb2.WhoAmIRequest())
    (span,) = [s for s in exporter.get_finished_spans() if s.name == "parley.identity.v1.IdentityService/WhoAmI"]
    assert span.attributes is not None
    assert span.attributes["rpc.grpc.status_code"] == "UNAUTHENTICATED"
    assert span.attributes["rpc.service"] == "parley.identity.v1.IdentityService"
