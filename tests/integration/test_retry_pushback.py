"""A client whose retry policy retries UNAVAILABLE (as docs/clients.md configures)
retries what the server marks retryable and never what it does not: a refusal
marked not retryable carries `grpc-retry-pushback-ms: -1`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path

import asyncpg
import grpc
import pytest

from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from tests.support.harness import project_once, request_proto, running_server
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request

pytestmark = pytest.mark.integration
PoolFactory = Callable[[], Awaitable[asyncpg.Pool]]

RETRYING = json.dumps({"methodConfig": [{
    "name": [{"service": "ofp.v1.FeatureService"}],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.01s", "maxBackoff": "0.05s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


async def attempts(pool: asyncpg.Pool, bus_root: Path, doc: dict[str, object]) -> float:
    """Server-side attempts of one call made through a channel that retries UNAVAILABLE."""
    async with running_server(pool, bus_root) as (srv, _):
        async with grpc.aio.insecure_channel(
            f"127.0.0.1:{srv.port}", options=[("grpc.service_config", RETRYING),
                                              ("grpc.enable_retries", 1)]) as channel:
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await pb_grpc.FeatureServiceStub(channel).GetFeatures(
                    request_proto(doc), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
        value = srv.service.metrics.registry.get_sample_value(
            "ofp_grpc_requests_total",
            {"method": "GetFeatures", "code": "UNAVAILABLE", "grpc_code": "UNAVAILABLE"})
        return value or 0.0


async def test_a_not_retryable_refusal_is_not_retried_and_a_retryable_one_is(
    pool_factory: PoolFactory, bus_root: Path
) -> None:
    doc = keys_request("A", ["1"], BASE_US + 9 * 24 * HOUR_US)
    # Retryable UNAVAILABLE: nothing is active yet in an empty database.
    assert await attempts(await pool_factory(), bus_root, doc) == 4.0
    # Not retryable UNAVAILABLE: an identity graph source that does not exist.
    generate(93, n_events=20, n_keys=1, n_partitions=1, noise=False).write(bus_root)
    pool = await pool_factory()
    await project_once(pool, bus_root)
    assert await attempts(pool, bus_root, {**doc, "graph_resolution_mode": "require_ieg"}) == 1.0
