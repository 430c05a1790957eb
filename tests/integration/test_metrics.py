"""Prometheus /metrics of both workloads, scraped over HTTP and parsed (SPEC 6).

No label value may be an id or a hash: label values are closed sets (method, codes,
states, flags, outcomes, reasons) or a partition number.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.metrics_http import serve_metrics
from ofp_projector.metrics import ProjectorMetrics, start_http
from tests.support.harness import project_once, request_proto, running_server
from tests.support.streams import generate, one_key_request

pytestmark = pytest.mark.integration

ID_LIKE = re.compile(r"[0-9a-f]{16,}|:|platform_")


async def scrape(port: int, path: str = "/metrics") -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session, session.get(
        f"http://127.0.0.1:{port}{path}"
    ) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.text()


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return found


def value(found: dict[Any, float], name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def assert_no_id_labels(found: dict[Any, float]) -> None:
    for (_name, labels), _v in found.items():
        for key, label_value in labels:
            if key in ("le", "quantile"):
                continue
            assert not ID_LIKE.search(label_value), (key, label_value)


def request(**changes: Any) -> dict[str, Any]:
    return one_key_request("m-1", **changes)


async def test_server_metrics_count_latency_codes_and_freshness_when_scraped(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(31, n_events=120, n_partitions=2).write(bus_root)
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root) as (server, stub):
        endpoint = await serve_metrics(0, server.metrics.registry, host="127.0.0.1",
                                       ready=lambda: server.serving)
        try:
            for _ in range(3):
                await stub.GetFeatures(request_proto(request()), timeout=10)
            bad = request()
            del bad["pins"]
            with pytest.raises(grpc.aio.AioRpcError):
                await stub.GetFeatures(request_proto(bad), timeout=10)
            await stub.GetStatus(pb.GetStatusRequest(), timeout=10)
            status, content_type, text = await scrape(endpoint.port)
            ready_status, _, _ = await scrape(endpoint.port, "/readyz")
        finally:
            await endpoint.close()

    assert status == 200 and content_type.startswith("text/plain")
    assert ready_status == 200
    found = samples(text)
    assert value(found, "ofp_get_features_duration_seconds_count", code="OK") == 3
    assert value(found, "ofp_get_features_duration_seconds_count", code="MISSING_PINS") == 1
    assert value(found, "ofp_get_features_duration_seconds_bucket", code="OK", le="+Inf") == 3
    assert value(found, "ofp_grpc_requests_total", method="GetFeatures", code="OK",
                 grpc_code="OK") == 3
    assert value(found, "ofp_grpc_requests_total", method="GetFeatures", code="MISSING_PINS",
                 grpc_code="INVALID_ARGUMENT") == 1
    assert value(found, "ofp_grpc_requests_total", method="GetStatus", code="OK",
                 grpc_code="OK") == 1
    states = {s: value(found, "ofp_snapshot_freshness_total", state=s)
              for s in ("GREEN", "AMBER", "RED")}
    assert sum(states.values()) == 3
    assert value(found, "ofp_server_serving") == 1
    assert_no_id_labels(found)


async def test_projector_endpoint_serves_metrics_healthz_and_readyz_when_started() -> None:
    metrics = ProjectorMetrics()
    endpoint = await start_http(0, metrics, host="127.0.0.1")
    try:
        assert (await scrape(endpoint.port, "/healthz"))[0] == 200
        assert (await scrape(endpoint.port, "/readyz"))[0] == 503
        metrics.set_ready(True)
        assert (await scrape(endpoint.port, "/readyz"))[0] == 200

        metrics.batch_applied(
            partition=0,
            outcomes={("APPLIED", ""): 7, ("QUARANTINED", "unparseable"): 2,
                      ("IGNORED", "foreign_run"): 1},
            records=10,
            duration_s=0.02,
        )
        metrics.batch_applied(partition=1, outcomes={("DUPLICATE", ""): 4}, records=4,
                              duration_s=0.01)
        metrics.partition_observed(partition=0, lag_records=12, lag_ms=None,
                                   watermark_age_s=3.5)
        metrics.partition_observed(partition=1, lag_records=None, lag_ms=2500,
                                   watermark_age_s=None)
        metrics.leases_held(2)
        status, _, text = await scrape(endpoint.port)
    finally:
        await endpoint.close()

    assert status == 200
    found = samples(text)
    assert value(found, "ofp_projector_records_total", outcome="APPLIED", reason="") == 7
    assert value(found, "ofp_projector_records_total", outcome="QUARANTINED",
                 reason="unparseable") == 2
    assert value(found, "ofp_projector_records_total", outcome="DUPLICATE", reason="") == 4
    assert value(found, "ofp_projector_batch_records_count") == 2
    assert value(found, "ofp_projector_batch_records_sum") == 14
    assert value(found, "ofp_projector_batch_apply_duration_seconds_count") == 2
    assert value(found, "ofp_projector_lag_records", partition="0") == 12
    assert value(found, "ofp_projector_lag_seconds", partition="1") == 2.5
    assert value(found, "ofp_projector_watermark_age_seconds", partition="0") == 3.5
    assert value(found, "ofp_projector_leases_held") == 2
    assert value(found, "ofp_projector_ready") == 1
    assert_no_id_labels(found)


async def test_each_projector_metrics_instance_has_its_own_registry() -> None:
    a, b = ProjectorMetrics(), ProjectorMetrics()
    a.leases_held(3)
    assert b.registry.get_sample_value("ofp_projector_leases_held") == 0
    assert a.registry.get_sample_value("ofp_projector_leases_held") == 3
