"""The grpc.aio feature server: GetFeatures, GetStatus, health, reflection, graceful stop.

`create_server(settings, pool, address)` returns a bound, not started, `FeatureServer`
(`.port`, `.health_port`), so tests bind port 0 in-process.

Transport security: with `tls_cert_path` + `tls_key_path` the port speaks TLS only;
with `tls_client_ca_path` as well, clients must present a certificate signed by that
CA (mutual TLS). Kubelet's native gRPC probes cannot speak TLS, so `health_port`
opens a second, plaintext listener that serves nothing but grpc.health.v1 (it reads
the same health state); GetFeatures and GetStatus are never reachable on it.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.config import ConfigError, Settings
from ofp.logs import get_logger
from ofp.store.coalesce import CoalescingReader
from ofp.store.replicas import ReadRouter

from .batch import BatchService, decode_batch_request
from .metrics import ServerMetrics
from .servicer import (
    FeatureService,
    decode_request,
    decode_snapshot_request,
    decode_status_request,
)
from .snapshot_log import SnapshotRecorder
from .tracing import RpcTracer, TracedReader, traced_rpc

_log = get_logger("ofp.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FeatureService"].full_name
HEALTH_INTERVAL_S = 2.0
LIVENESS_SERVICE = "liveness"


class FeatureServer:
    """A bound, not yet started, server and its health reporter."""

    def __init__(self, server: grpc.aio.Server, port: int, service: FeatureService,
                 health_servicer: Any, *, tls: str = "off",
                 health_server: grpc.aio.Server | None = None,
                 health_port: int | None = None) -> None:
        self.server = server
        self.port = port
        self.service = service
        self.health = health_servicer
        self.tls = tls  # "off", "tls" or "mtls"
        self.health_server = health_server
        self.health_port = health_port
        self._health_task: asyncio.Task[None] | None = None
        self.serving = False  # what grpc.health last said for "" (database + policy)

    @property
    def metrics(self) -> ServerMetrics:
        return self.service.metrics

    async def start(self) -> None:
        if self.service.replicas is not None:
            await self.service.replicas.start()  # measured before the first request
        if self.service.recorder is not None:
            await self.service.recorder.start()
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()
        await self._refresh_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="health")
        _log.info("server_started", port=self.port, tls=self.tls, health_port=self.health_port)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        if self.service.recorder is not None:
            await self.service.recorder.stop()  # after the last call: writes what is queued
        await self.service.reader.close()
        await self.service.close_watchers()
        await self.service.close_replicas()
        if self.health_server is not None:
            await self.health_server.stop(0)
        _log.info("server_stopped", port=self.port)

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._refresh_health()

    async def _refresh_health(self) -> None:
        """SERVING only when the database answers and an active policy exists (contract 4.6)."""
        serving = False
        try:
            policy = await asyncio.wait_for(
                self.service.policies.load(self.service.pool), timeout=2.0
            )
            serving = policy is not None
        except Exception as exc:  # any failure to reach the store means not serving
            _log.warning("health_check_failed", error=type(exc).__name__)
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        self.serving = serving
        metrics = self.service.metrics
        metrics.serving.set(1 if serving else 0)
        pool = self.service.pool
        metrics.pool_observed(size=pool.get_size(), idle=pool.get_idle_size(),
                              max_size=pool.get_max_size())
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        # Liveness says only that the process answers: a database outage must
        # not make Kubernetes restart every replica.
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)


def _read_pem(setting: str, path: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise ConfigError(f"{setting}: cannot read {path} ({exc.strerror})") from None


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (or mutual TLS) credentials from the configured PEM files; None for plaintext."""
    if settings.tls_cert_path is None or settings.tls_key_path is None:
        return None
    cert = _read_pem("tls_cert_path", settings.tls_cert_path)
    key = _read_pem("tls_key_path", settings.tls_key_path)
    client_ca = (
        None
        if settings.tls_client_ca_path is None
        else _read_pem("tls_client_ca_path", settings.tls_client_ca_path)
    )
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _bind(server: grpc.aio.Server, address: str,
          credentials: grpc.ServerCredentials | None) -> int:
    """Bind `address`; a taken or invalid address is an OSError naming it (grpc says
    RuntimeError or returns port 0, depending on the version)."""
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot bind {address}")
    return port


def connection_options(settings: Settings) -> list[tuple[str, int]]:
    """How long a client connection lives and how dead peers are found.

    A client (a decision service) holds its channel for hours: without a maximum
    age, replicas the autoscaler adds receive no traffic from it. After
    `grpc_max_connection_age_s` the server sends GOAWAY and lets calls in flight
    finish for the grace period; the client reconnects, through its resolver,
    to whichever replicas exist then. Clients may ping every 10 s at most,
    also with no call in flight (a client's own keepalive would otherwise be
    answered with GOAWAY too_many_pings)."""
    return [
        ("grpc.max_connection_age_ms", settings.grpc_max_connection_age_s * 1000),
        ("grpc.max_connection_age_grace_ms", settings.grpc_max_connection_age_grace_s * 1000),
        ("grpc.keepalive_time_ms", settings.grpc_keepalive_time_s * 1000),
        ("grpc.keepalive_timeout_ms", settings.grpc_keepalive_timeout_s * 1000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        ("grpc.http2.max_pings_without_data", 0),
    ]


def create_server(settings: Settings, pool: asyncpg.Pool,
                  address: str | None = None, *, metrics: ServerMetrics | None = None,
                  health_address: str | None = None,
                  tracer: RpcTracer | None = None,
                  replicas: ReadRouter | None = None) -> FeatureServer:
    """Bind the server (and the plaintext health listener when `health_port` is set).

    `health_address` overrides `<host of address>:<health_port>` (tests pass port 0).
    With a `tracer` (ofp_server.tracing) the RPCs and their snapshot reads are
    spans; without one the handlers are the untraced ones.
    `replicas`: the read replicas GetFeatures reads from (ofp.store.replicas); the
    server measures them from `start()` and closes them at `stop()`.
    """
    # The health listener follows the same choice: processes sharing the gRPC
    # port share the health port too.
    reuseport = ("grpc.so_reuseport", 1 if settings.grpc_reuseport else 0)
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", 16 * settings.max_message_bytes),
        reuseport,
        *connection_options(settings),
    ]
    credentials = server_credentials(settings)
    server = grpc.aio.server(options=options)
    service = FeatureService(settings, pool, metrics, replicas)
    if settings.snapshot_log != "off":
        # Written through `pool`, the primary (replicas only serve reads).
        service.recorder = SnapshotRecorder(settings, pool, service.metrics.registry)
    get_features: Any = service.GetFeatures
    get_status: Any = service.GetStatus
    get_snapshot: Any = service.GetSnapshot
    get_batch: Any = BatchService(service).GetFeaturesBatch
    if tracer is not None:
        get_features = traced_rpc(tracer, "GetFeatures", get_features)
        get_status = traced_rpc(tracer, "GetStatus", get_status)
        get_snapshot = traced_rpc(tracer, "GetSnapshot", get_snapshot)
        get_batch = traced_rpc(tracer, "GetFeaturesBatch", get_batch)
        service.reader = cast(CoalescingReader, TracedReader(service.reader, tracer))
        service._replica_readers = {
            name: cast(CoalescingReader, TracedReader(r, tracer))
            for name, r in service._replica_readers.items()}
    # Registered by hand rather than with the generated helper so that bytes
    # which are not a GetFeaturesRequest reach the servicer and get a contract
    # error (INVALID_REQUEST), not grpcio's UNKNOWN naming a Python class.
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "GetFeatures": grpc.unary_unary_rpc_method_handler(
                get_features,
                request_deserializer=decode_request,
                response_serializer=pb.GetFeaturesResponse.SerializeToString,
            ),
            "GetStatus": grpc.unary_unary_rpc_method_handler(
                get_status,
                request_deserializer=decode_status_request,
                response_serializer=pb.GetStatusResponse.SerializeToString,
            ),
            "GetSnapshot": grpc.unary_unary_rpc_method_handler(
                get_snapshot,
                request_deserializer=decode_snapshot_request,
                response_serializer=pb.GetSnapshotResponse.SerializeToString,
            ),
            "GetFeaturesBatch": grpc.stream_stream_rpc_method_handler(
                get_batch,
                request_deserializer=decode_batch_request,
                response_serializer=pb.GetFeaturesBatchResponse.SerializeToString,
            ),
        },
    )
    server.add_generic_rpc_handlers((handler,))
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    bind = address or settings.grpc_address
    tls = "off" if credentials is None else "mtls" if settings.tls_client_ca_path else "tls"
    port = _bind(server, bind, credentials)
    health_server = None
    health_port = None
    if health_address is None and settings.health_port is not None:
        host = bind.rpartition(":")[0] or "0.0.0.0"
        health_address = f"{host}:{settings.health_port}"
    if health_address is not None:
        health_server = grpc.aio.server(options=[reuseport])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = _bind(health_server, health_address, None)
    return FeatureServer(server, port, service, health_servicer, tls=tls,
                         health_server=health_server, health_port=health_port)
