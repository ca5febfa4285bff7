"""OpenTelemetry tracing and metrics for every RPC, and trace propagation.

Tracing is off by default; `telemetry.tracing` / `telemetry.metrics` choose a
console or OTLP exporter. Providers are per server (not global) so several
servers in one process keep their own service names.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Any

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Meter, MeterProvider, NoOpMeterProvider, Observation
from opentelemetry.sdk.metrics import MeterProvider as SdkMeterProvider
from opentelemetry.sdk.metrics.export import (
    ConsoleMetricExporter,
    MetricReader,
    PeriodicExportingMetricReader,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.trace import NoOpTracerProvider, SpanKind, Status, StatusCode, TracerProvider

from services.runtime import grpc_types
from services.runtime.config import TelemetryConfig
from services.runtime.grpc_types import Context
from services.runtime.methods import MethodInfo


@dataclasses.dataclass
class Telemetry:
    tracer_provider: TracerProvider
    meter_provider: MeterProvider
    _console: IO[str] | None = None

    @property
    def tracer(self) -> trace.Tracer:
        return self.tracer_provider.get_tracer("parley")

    @property
    def meter(self) -> Meter:
        return self.meter_provider.get_meter("parley")

    def shutdown(self) -> None:
        for provider in (self.tracer_provider, self.meter_provider):
            closer = getattr(provider, "shutdown", None)
            if closer is not None:
                closer()
        if self._console is not None and self._console is not sys.stdout:
            self._console.close()


def setup_telemetry(
    config: TelemetryConfig,
    service_name: str,
    *,
    span_exporter: SpanExporter | None = None,
    metric_reader: MetricReader | None = None,
) -> Telemetry:
    """Builds providers from config; tests may inject an exporter or reader."""
    resource = Resource.create({"service.name": service_name})
    console: IO[str] | None = None
    if "console" in (config.tracing, config.metrics):
        console = open(config.console_path, "a", buffering=1) if config.console_path else sys.stdout  # noqa: SIM115

    tracer_provider: TracerProvider = NoOpTracerProvider()
    if span_exporter is not None or config.tracing != "off":
        sdk_tracer = SdkTracerProvider(resource=resource)
        if span_exporter is not None:
            sdk_tracer.add_span_processor(SimpleSpanProcessor(span_exporter))
        elif config.tracing == "console":
            exporter = ConsoleSpanExporter(out=console or sys.stdout, formatter=_one_line_span)
            sdk_tracer.add_span_processor(SimpleSpanProcessor(exporter))
        else:
            sdk_tracer.add_span_processor(BatchSpanProcessor(_otlp_span_exporter(config)))
        tracer_provider = sdk_tracer

    readers: list[MetricReader] = []
    if metric_reader is not None:
        readers.append(metric_reader)
    elif config.metrics == "console":
        interval = config.metrics_interval_seconds * 1000
        readers.append(PeriodicExportingMetricReader(ConsoleMetricExporter(out=console or sys.stdout), interval))
    elif config.metrics == "otlp":
        readers.append(
            PeriodicExportingMetricReader(_otlp_metric_exporter(config), config.metrics_interval_seconds * 1000)
        )
    meter_provider: MeterProvider = (
        SdkMeterProvider(resource=resource, metric_readers=readers) if readers else NoOpMeterProvider()
    )
    return Telemetry(tracer_provider, meter_provider, console)


def observe_gauge(meter: Meter, name: str, read: Callable[[], float], *, unit: str, description: str) -> None:
    """An observable gauge whose value is `read()` each time metrics are collected."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(read())]

    meter.create_observable_gauge(name, callbacks=[observe], unit=unit, description=description)


def observe_counter(meter: Meter, name: str, read: Callable[[], float], *, unit: str, description: str) -> None:
    """An observable counter (only ever rising) whose value is `read()` each time metrics are collected."""

    def observe(options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(read())]

    meter.create_observable_counter(name, callbacks=[observe], unit=unit, description=description)


def _one_line_span(span: Any) -> str:
    return str(span.to_json(indent=None)) + "\n"


def _otlp_span_exporter(config: TelemetryConfig) -> SpanExporter:
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=config.otlp_endpoint, insecure=config.otlp_endpoint.startswith("http://"))


def _otlp_metric_exporter(config: TelemetryConfig) -> Any:
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter(endpoint=config.otlp_endpoint, insecure=config.otlp_endpoint.startswith("http://"))


class RpcTelemetryHook:
    """A server span per call (child of the caller's trace) and RPC metrics.

    With tracing off no span is made, and nothing is attached to the call's context.
    """

    def __init__(self, telemetry: Telemetry) -> None:
        self._tracer = telemetry.tracer
        self._tracing = not isinstance(telemetry.tracer_provider, NoOpTracerProvider)
        meter = telemetry.meter
        self._calls = meter.create_counter("rpc.server.calls", unit="{call}", description="RPCs handled")
        self._duration = meter.create_histogram("rpc.server.duration", unit="ms", description="Time to handle an RPC")

    def __call__(self, method: MethodInfo, context: Context) -> _CallTelemetry:
        return _CallTelemetry(self, method, context)

    def finish(self, method: MethodInfo, started: float, span: trace.Span | None, code: str) -> None:
        if span is not None:
            span.set_attribute("rpc.grpc.status_code", code)
            if code != "OK":
                span.set_status(Status(StatusCode.ERROR, code))
            span.end()
        attributes = {"rpc.service": method.service, "rpc.method": method.method, "rpc.grpc.status_code": code}
        self._calls.add(1, attributes)
        self._duration.record((time.perf_counter() - started) * 1000, attributes)

    def _start_span(self, method: MethodInfo, context: Context) -> trace.Span:
        carrier = {str(k): str(v) for k, v in (context.invocation_metadata() or ()) if not k.endswith("-bin")}
        return self._tracer.start_span(
            method.full_name.lstrip("/"),
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            record_exception=False,
            attributes={"rpc.system": "grpc", "rpc.service": method.service, "rpc.method": method.method},
        )


class _CallTelemetry:
    __slots__ = ("_context", "_current", "_hook", "_method", "_span", "_started")

    def __init__(self, hook: RpcTelemetryHook, method: MethodInfo, context: Context) -> None:
        self._hook = hook
        self._method = method
        self._context = context
        self._started = time.perf_counter()
        self._span: trace.Span | None = None
        self._current: Any = None

    async def __aenter__(self) -> None:
        if self._hook._tracing:
            self._span = self._hook._start_span(self._method, self._context)
            self._current = _current(self._span)
            self._current.__enter__()

    async def __aexit__(self, kind: Any, exc: BaseException | None, traceback: Any) -> bool:
        if self._current is not None:
            self._current.__exit__(kind, exc, traceback)
        code = _code_name(self._context.code()) or ("OK" if exc is None else "UNKNOWN")
        self._hook.finish(self._method, self._started, self._span, code)
        return False


@contextlib.contextmanager
def _current(span: trace.Span | None) -> Iterator[None]:
    """Makes `span` current for the call (outgoing calls carry it on) and restores the context after.

    A stream cut off by a cancellation is finalised in another task, whose
    context never had the span: there is nothing to restore there.
    """
    if span is None:
        yield
        return
    task = asyncio.current_task()
    token = otel_context.attach(trace.set_span_in_context(span))
    try:
        yield
    finally:
        if asyncio.current_task() is task:
            otel_context.detach(token)


def _code_name(code: Any) -> str | None:
    if isinstance(code, grpc.StatusCode):
        return str(code.name)
    return None


class TracePropagationInterceptor(
    grpc_types.UnaryUnaryClientInterceptor,
    grpc_types.UnaryStreamClientInterceptor,
    grpc_types.StreamUnaryClientInterceptor,
    grpc_types.StreamStreamClientInterceptor,
):
    """Adds the current trace context (W3C traceparent) to outgoing calls."""

    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_trace_context(details), request)

    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(_with_trace_context(details), request)

    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_trace_context(details), requests)

    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(_with_trace_context(details), requests)


def _with_trace_context(details: Any) -> Any:
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    if not carrier:
        return details
    kept = [(k, v) for k, v in (details.metadata or ()) if k not in carrier]
    metadata = grpc.aio.Metadata(*kept, *carrier.items())
    return details._replace(metadata=metadata)
