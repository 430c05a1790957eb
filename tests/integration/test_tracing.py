"""OpenTelemetry tracing of the server (docs/operations.md, "Tracing").

On: a span per RPC that continues the caller's W3C traceparent, with the snapshot
read as its child, exported over OTLP to a collector (here a real OTLP/gRPC
TraceService in the test process, fed by a real `ofp-server`). Off: nothing of
OpenTelemetry is loaded and the handlers and reader are the untraced ones.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from concurrent import futures
from pathlib import Path

import asyncpg
import grpc
import pytest
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.store.coalesce import CoalescingReader
from ofp_server.server import create_server
from ofp_server.tracing import start_tracing, tracing_wanted
from tests.support.cli import cli_env, free_port, process_env
from tests.support.harness import project_once, request_proto, settings
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),)
RPC = "ofp.v1.FeatureService/GetFeatures"


def _request() -> dict[str, object]:
    return keys_request("A", ["1"], BASE_US + 9 * 24 * HOUR_US)


async def test_rpc_span_continues_the_callers_trace_with_a_read_child_when_tracing_is_on(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(95, n_events=20, n_keys=1, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    exporter = InMemorySpanExporter()
    tracer = start_tracing(settings(bus_root), exporter=exporter, batch=False)
    assert tracer is not None
    srv = create_server(settings(bus_root), pool, "127.0.0.1:0", tracer=tracer)
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            stub = pb_grpc.FeatureServiceStub(channel)
            await stub.GetFeatures(request_proto(_request()), metadata=TRACEPARENT, timeout=10)
            bad = {**_request(), "feature_groups": [{"name": "nope", "version": "v1"}]}
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetFeatures(request_proto(bad), timeout=10)
            batch = [pb.GetFeaturesBatchRequest(request=request_proto(_request()))] * 2
            answers = [a async for a in stub.GetFeaturesBatch(iter(batch), timeout=10)]
            assert len(answers) == 2
    finally:
        await srv.stop(0)
        tracer.shutdown()

    spans = exporter.get_finished_spans()
    streamed = [s for s in spans if s.name == "ofp.v1.FeatureService/GetFeaturesBatch"]
    assert len(streamed) == 1 and streamed[0].status.status_code != StatusCode.ERROR
    rpcs = [s for s in spans if s.name == RPC]
    assert len(rpcs) == 2
    ok, refused = rpcs
    assert ok.kind == SpanKind.SERVER
    assert ok.context is not None and ok.parent is not None
    assert f"{ok.context.trace_id:032x}" == TRACE_ID
    assert f"{ok.parent.span_id:016x}" == PARENT_ID
    assert ok.attributes is not None and ok.attributes["rpc.grpc.status_code"] == "OK"
    reads = [s for s in spans if s.name == "snapshot_read" and s.parent is not None
             and s.parent.span_id == ok.context.span_id]
    assert len(reads) == 1
    assert reads[0].context is not None and reads[0].context.trace_id == ok.context.trace_id
    # Without a traceparent the RPC starts a trace of its own; a refusal is an error.
    assert refused.parent is None and refused.context is not None
    assert refused.context.trace_id != ok.context.trace_id
    assert refused.status.status_code == StatusCode.ERROR
    assert refused.attributes is not None
    assert refused.attributes["rpc.grpc.status_code"] == "INVALID_ARGUMENT"


async def test_no_tracer_and_no_wrapping_when_tracing_is_off(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    off = settings(bus_root)
    assert not tracing_wanted(off, {})
    assert tracing_wanted(off, {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert not tracing_wanted(settings(bus_root, tracing="off"),
                              {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4317"})
    assert tracing_wanted(settings(bus_root, tracing="otlp"), {})
    srv = create_server(off, pool, "127.0.0.1:0")
    assert type(srv.service.reader) is CoalescingReader
    # A fresh process, as the workload starts: no tracer, nothing of OpenTelemetry
    # imported, no tracer provider installed.
    probe = (
        "import sys\n"
        "from ofp.config import load_settings\n"
        "import ofp_server.main\n"
        "from ofp_server.tracing import start_tracing\n"
        "assert start_tracing(load_settings()) is None\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))\n"
        "from opentelemetry import trace\n"
        "assert type(trace.get_tracer_provider()).__name__ == 'ProxyTracerProvider'\n"
    )
    env = process_env({})
    env.pop("OTEL_EXPORTER_OTLP_ENDPOINT", None)
    env.pop("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", probe, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 0, err.decode()
    assert out.decode().strip() == "[]"


class _Collector(trace_service_pb2_grpc.TraceServiceServicer):
    """An OTLP/gRPC trace collector that keeps what it is sent."""

    def __init__(self) -> None:
        self.requests: list[trace_service_pb2.ExportTraceServiceRequest] = []

    def Export(self, request: trace_service_pb2.ExportTraceServiceRequest,
               context: grpc.ServicerContext) -> trace_service_pb2.ExportTraceServiceResponse:
        self.requests.append(request)
        return trace_service_pb2.ExportTraceServiceResponse()

    def spans(self) -> list[tuple[str, bytes, bytes, bytes, str]]:
        """(name, trace id, span id, parent span id, service.name) of every span."""
        found: list[tuple[str, bytes, bytes, bytes, str]] = []
        for req in list(self.requests):
            for rs in req.resource_spans:
                service = next((a.value.string_value for a in rs.resource.attributes
                                if a.key == "service.name"), "")
                for ss in rs.scope_spans:
                    found.extend((s.name, s.trace_id, s.span_id, s.parent_span_id, service)
                                 for s in ss.spans)
        return found


async def test_server_exports_spans_over_otlp_when_an_endpoint_is_configured(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    generate(95, n_events=20, n_keys=1, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    collector = _Collector()
    otlp = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    trace_service_pb2_grpc.add_TraceServiceServicer_to_server(collector, otlp)
    otlp_port = otlp.add_insecure_port("127.0.0.1:0")
    otlp.start()
    port = free_port()
    env = process_env(cli_env(
        fresh_dsn, bus_root, OFP_GRPC_ADDRESS=f"127.0.0.1:{port}",
        OTEL_EXPORTER_OTLP_ENDPOINT=f"http://127.0.0.1:{otlp_port}",
        OTEL_EXPORTER_OTLP_INSECURE="true", OTEL_BSP_SCHEDULE_DELAY="100"))
    server = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "ofp-server"), env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FeatureServiceStub(channel)
            await stub.GetFeatures(request_proto(_request()), metadata=TRACEPARENT,
                                   timeout=10, wait_for_ready=True)
        for _ in range(100):  # the batch processor exports every 100 ms
            if any(s[0] == RPC for s in collector.spans()):
                break
            await asyncio.sleep(0.1)
        server.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(server.communicate(), timeout=30)
        assert server.returncode == 0, err.decode()[-2000:]
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
        otlp.stop(0)
    spans = collector.spans()
    rpc = [s for s in spans if s[0] == RPC]
    assert len(rpc) == 1, spans
    _, trace_id, span_id, parent_id, service = rpc[0]
    assert trace_id.hex() == TRACE_ID and parent_id.hex() == PARENT_ID
    assert service == "ofp-server"
    assert [s for s in spans if s[0] == "snapshot_read" and s[3] == span_id]
