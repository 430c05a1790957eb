"""Process, GC, database-pool and read-statement metrics of both workloads (issue 18)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from ofp.metrics_http import serve_metrics
from ofp_projector.metrics import ProjectorMetrics, start_http
from tests.integration.test_metrics import request, samples, scrape, value
from tests.support.harness import project_once, request_proto, running_server
from tests.support.streams import generate

pytestmark = pytest.mark.integration


async def test_server_exports_process_gc_pool_and_statement_metrics_when_scraped(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(31, n_events=60, n_partitions=1).write(bus_root)
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root) as (server, stub):
        endpoint = await serve_metrics(0, server.metrics.registry, host="127.0.0.1")
        try:
            for _ in range(4):
                await stub.GetFeatures(request_proto(request()), timeout=10)
            _, _, text = await scrape(endpoint.port)
        finally:
            await endpoint.close()
    found = samples(text)
    assert value(found, "process_cpu_seconds_total") > 0
    assert value(found, "process_resident_memory_bytes") > 0
    assert any(name == "python_gc_collections_total" for name, _ in found)
    assert value(found, "ofp_snapshot_statement_duration_seconds_count") == 4
    assert value(found, "ofp_snapshot_statement_duration_seconds_sum") > 0
    assert value(found, "ofp_db_pool_acquire_duration_seconds_count") == 4
    # Sampled by the health check at start: the pool exists, its maximum is known.
    assert value(found, "ofp_db_pool_connections_max") == 8
    assert value(found, "ofp_db_pool_connections") >= 1
    assert 0 <= value(found, "ofp_db_pool_connections_in_use") <= 8


async def test_projector_exports_its_pool_as_read_at_the_scrape(pool: asyncpg.Pool) -> None:
    metrics = ProjectorMetrics()
    metrics.watch_pool(pool)
    endpoint = await start_http(0, metrics, host="127.0.0.1")
    try:
        async with pool.acquire():
            _, _, held = await scrape(endpoint.port)
        _, _, idle = await scrape(endpoint.port)
    finally:
        await endpoint.close()
    during, after = samples(held), samples(idle)
    assert value(during, "ofp_db_pool_connections_in_use") == 1
    assert value(after, "ofp_db_pool_connections_in_use") == 0
    assert value(after, "ofp_db_pool_connections_max") == pool.get_max_size()
    assert value(after, "process_open_fds") > 0
