"""`buf curl` (a real external client, learning every type through server reflection)
calls GetStatus and the health service. GetFeatures through `buf curl` is covered in
test_health_reflection.py and not repeated here."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.contracts.schemas import first_error
from ofp_cli.client import _int64_as_numbers
from ofp_server.server import FeatureServer
from tests.integration.test_health_reflection import BUF, run_tool
from tests.support.harness import project_once, running_server
from tests.support.streams import generate

pytestmark = pytest.mark.integration


@pytest.fixture
async def served(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[FeatureServer]:
    generate(41, n_events=100, n_partitions=2).write(bus_root)
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root) as (server, _stub):
        yield server


async def buf_curl(port: int, method: str, body: dict[str, object]) -> dict[str, object]:
    code, out, err = await run_tool(
        BUF, "curl", "--protocol", "grpc", "--http2-prior-knowledge",
        "--data", json.dumps(body), f"http://127.0.0.1:{port}/{method}",
    )
    assert code == 0, err
    doc: dict[str, object] = json.loads(out)
    return doc


async def test_buf_curl_checks_health_through_reflection(served: FeatureServer) -> None:
    for service in ("", "ofp.v1.FeatureService", "liveness"):
        doc = await buf_curl(served.port, "grpc.health.v1.Health/Check", {"service": service})
        assert doc == {"status": "SERVING"}, service


async def test_buf_curl_get_status_shows_the_contract_json(served: FeatureServer) -> None:
    doc = await buf_curl(served.port, "ofp.v1.FeatureService/GetStatus",
                         {"request_id": "buf-1"})
    assert doc["request_id"] == "buf-1" and doc["status"] == "OK"
    assert doc["stream"] == "fp.bus.traffic.fraud.v1"
    health = doc["health"]
    assert isinstance(health, dict) and health["state"] in {"GREEN", "AMBER", "RED"}
    # proto3 JSON renders 64-bit integers as strings; read back as numbers it is the
    # contract's JSON (the only allowed difference, as for GetFeatures' seed).
    readable = _int64_as_numbers(doc, pb.GetStatusResponse.DESCRIPTOR)
    readable.setdefault("partitions", [])
    problem = first_error("get_status_response.schema.yaml", readable)
    assert problem is None, problem
    parts = readable["partitions"]
    assert [p["partition"] for p in parts] == [0, 1]
    assert all(int(p["next_offset"]) > 0 for p in parts)
