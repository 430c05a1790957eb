"""The grpc.aio feature server: GetFeatures, health, reflection, graceful stop.

`create_server(settings, pool)` returns `(server, port)` without starting the
process-level machinery, so tests bind port 0 in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.config import Settings
from ofp.logs import get_logger

from .servicer import FeatureService, decode_request

_log = get_logger("ofp.server")
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["FeatureService"].full_name
HEALTH_INTERVAL_S = 2.0
LIVENESS_SERVICE = "liveness"


class FeatureServer:
    """A bound, not yet started, server and its health reporter."""

    def __init__(self, server: grpc.aio.Server, port: int, service: FeatureService,
                 health_servicer: Any) -> None:
        self.server = server
        self.port = port
        self.service = service
        self.health = health_servicer
        self._health_task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.server.start()
        await self._refresh_health()
        self._health_task = asyncio.create_task(self._health_loop(), name="health")
        _log.info("server_started", port=self.port)

    async def stop(self, grace_s: float = 5.0) -> None:
        if self._health_task is not None:
            self._health_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health_task
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
        _log.info("server_stopped", port=self.port)

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def _health_loop(self) -> None:
        while True:
            await asyncio.sleep(HEALTH_INTERVAL_S)
            await self._refresh_health()

    async def _refresh_health(self) -> None:
        """SERVING only when the database answers and an active policy exists (SPEC 4.6)."""
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
        for name in ("", SERVICE_NAME):
            await self.health.set(name, status)
        # Liveness says only that the process answers: a database outage must
        # not make Kubernetes restart every replica.
        await self.health.set(LIVENESS_SERVICE, health_pb2.HealthCheckResponse.SERVING)


def create_server(settings: Settings, pool: asyncpg.Pool,
                  address: str | None = None) -> FeatureServer:
    options = [
        ("grpc.max_receive_message_length", settings.max_message_bytes),
        ("grpc.max_send_message_length", 16 * settings.max_message_bytes),
        ("grpc.so_reuseport", 0),
    ]
    server = grpc.aio.server(options=options)
    service = FeatureService(settings, pool)
    # Registered by hand rather than with the generated helper so that bytes
    # which are not a GetFeaturesRequest reach the servicer and get a contract
    # error (INVALID_REQUEST), not grpcio's UNKNOWN naming a Python class.
    handler = grpc.method_handlers_generic_handler(
        SERVICE_NAME,
        {
            "GetFeatures": grpc.unary_unary_rpc_method_handler(
                service.GetFeatures,
                request_deserializer=decode_request,
                response_serializer=pb.GetFeaturesResponse.SerializeToString,
            )
        },
    )
    server.add_generic_rpc_handlers((handler,))
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    port = server.add_insecure_port(address or settings.grpc_address)
    if port == 0:
        raise OSError(f"cannot bind {address or settings.grpc_address}")
    return FeatureServer(server, port, service, health_servicer)
