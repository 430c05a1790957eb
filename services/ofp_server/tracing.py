"""OpenTelemetry tracing of the feature server's RPCs; off unless configured.

Off (`tracing: off`, or the default without an OTLP endpoint in the environment):
nothing of OpenTelemetry is imported, no tracer provider is installed, and the
RPC handlers and the snapshot reader are the untraced ones: the hot path does
no added work at all.

On (`OFP_TRACING=otlp`, or `OTEL_EXPORTER_OTLP_ENDPOINT` /
`OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` set): an SDK TracerProvider with a batching
OTLP/gRPC exporter, configured by the standard `OTEL_EXPORTER_OTLP_*`,
`OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` variables. Each RPC is a
SERVER span named `ofp.v1.FeatureService/<method>` whose parent is the caller's
W3C `traceparent` / `tracestate` metadata; the snapshot read a GetFeatures
request waited for (its turn and the statement) is a child span,
`snapshot_read`.

The spans are made here with the API rather than by the grpc and asyncpg
instrumentation packages: those wrap every call on every server and connection
(the health checks, the policy reloads) and cannot be switched off per call,
while two handlers chosen at start-up cost nothing when tracing is off.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ofp.config import Settings

if TYPE_CHECKING:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span

SERVICE = "ofp.v1.FeatureService"
_PROPAGATED = ("traceparent", "tracestate")


def tracing_wanted(settings: Settings, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the settings (and the standard OTLP variables) ask for tracing."""
    if settings.tracing == "otlp":
        return True
    if settings.tracing == "off":
        return False
    env = os.environ if environ is None else environ
    return bool(env.get("OTEL_EXPORTER_OTLP_ENDPOINT")
                or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


class RpcTracer:
    """Starts the spans of one server process's RPCs and snapshot reads."""

    def __init__(self, provider: TracerProvider) -> None:
        from opentelemetry import context, trace
        from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

        self.provider = provider
        self._tracer = provider.get_tracer("ofp.server")
        self._propagator = TraceContextTextMapPropagator()
        self._trace = trace
        self._context = context

    def start_rpc(self, method: str, metadata: Any) -> tuple[Span, object]:
        """A SERVER span for the RPC, child of the caller's traceparent when it sent one,
        made current; returns it and the token `end_rpc` detaches."""
        carrier = {k: v for k, v in metadata or () if k in _PROPAGATED and isinstance(v, str)}
        parent = self._propagator.extract(carrier) if carrier else None
        span = self._tracer.start_span(
            f"{SERVICE}/{method}", context=parent, kind=self._trace.SpanKind.SERVER,
            attributes={"rpc.system": "grpc", "rpc.service": SERVICE, "rpc.method": method})
        token = self._context.attach(self._trace.set_span_in_context(span))
        return span, token

    def end_rpc(self, span: Span, token: object, grpc_code: str) -> None:
        span.set_attribute("rpc.grpc.status_code", grpc_code)
        if grpc_code != "OK":
            span.set_status(self._trace.Status(self._trace.StatusCode.ERROR, grpc_code))
        self._context.detach(token)  # type: ignore[arg-type]
        span.end()

    def start_read(self, requests: int | None = None) -> Span:
        """A child of the current span for a snapshot read."""
        attributes: dict[str, Any] = {"db.system": "postgresql",
                                      "db.operation.name": "SELECT",
                                      "db.query.summary": "snapshot read"}
        if requests is not None:
            attributes["ofp.statement_requests"] = requests
        return self._tracer.start_span("snapshot_read", attributes=attributes)

    def shutdown(self) -> None:
        """Export what is buffered and stop (server shutdown)."""
        self.provider.shutdown()


def start_tracing(settings: Settings, *, exporter: SpanExporter | None = None,
                  batch: bool = True) -> RpcTracer | None:
    """The process's tracer, or None when tracing is off.

    `exporter` replaces the OTLP exporter (tests pass an in-memory one, which
    switches tracing on); `batch=False` exports each span as it ends."""
    if exporter is None and not tracing_wanted(settings):
        return None
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor

    if exporter is None:
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        exporter = OTLPSpanExporter()
    # OTEL_SERVICE_NAME, when set, names the service; the given attributes would win.
    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {"service.name": "ofp-server"}
    provider = TracerProvider(resource=Resource.create(attributes))
    provider.add_span_processor(
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter))
    return RpcTracer(provider)


def install_globally(tracer: RpcTracer) -> None:
    """Make the tracer's provider the process's global one (the workload, not tests:
    the global provider can be set once per process)."""
    from opentelemetry import trace

    trace.set_tracer_provider(tracer.provider)


def traced_rpc(tracer: RpcTracer, method: str, handler: Any) -> Any:
    """`handler` (a unary grpc.aio servicer method) inside the RPC's span."""

    async def traced(request: Any, context: Any) -> Any:
        span, token = tracer.start_rpc(method, context.invocation_metadata())
        code = "OK"
        try:
            return await handler(request, context)
        except BaseException as exc:
            code = _status_name(context, exc)
            raise
        finally:
            tracer.end_rpc(span, token, code)

    return traced


def _status_name(context: Any, exc: BaseException) -> str:
    import asyncio

    if isinstance(exc, asyncio.CancelledError):
        return "CANCELLED"
    code = context.code()  # what context.abort set; None for an escaped exception
    return "UNKNOWN" if code is None else str(getattr(code, "name", code))


class TracedReader:
    """A snapshot reader whose reads are child spans of the current (RPC) span."""

    def __init__(self, reader: Any, tracer: RpcTracer) -> None:
        self._reader = reader
        self._tracer = tracer

    async def read(self, **kwargs: Any) -> Any:
        span = self._tracer.start_read()
        try:
            return await self._reader.read(**kwargs)
        except BaseException as exc:
            span.record_exception(exc)
            raise
        finally:
            span.end()

    def __getattr__(self, name: str) -> Any:  # close() and anything else: the reader's
        return getattr(self._reader, name)
