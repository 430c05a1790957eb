"""The Node/TypeScript client example (clients/node: @grpc/grpc-js with protobuf-es stubs
generated from protos/) against a real server over a socket: the values, typed values and
snapshot_hash it reads equal the Python harness's, it decodes a refusal's rich error
details, applies its deadline, and reads GetStatus."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp_server.server import FeatureServer
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import BASE_US, HOUR_US, TOPIC, generate, keys_request

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CLIENT_DIR = REPO / "clients" / "node"
REFUSED = 2  # the client's exit status for a refused call
Served = tuple[FeatureServer, pb_grpc.FeatureServiceStub, list[str]]


@pytest.fixture(scope="module")
def node_client() -> Path:
    """Builds the client as `make` does (npm ci, stub generation, tsc): fast once built."""
    build = subprocess.run(["nice", "-n", "19", "bash", str(CLIENT_DIR / "build.sh")],
                           capture_output=True, text=True, timeout=900)
    assert build.returncode == 0, build.stdout + build.stderr
    return CLIENT_DIR / "dist" / "src" / "main.js"


@pytest.fixture
async def served(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[Served]:
    stream = generate(61, n_events=150, n_keys=4, n_partitions=2, noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root) as (server, stub):
        yield server, stub, stream.keys


async def run_client(main_js: Path, port: int, *args: str) -> tuple[int, dict[str, Any]]:
    proc = await asyncio.create_subprocess_exec(
        "node", str(main_js), f"127.0.0.1:{port}", *args,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode in (0, REFUSED), err.decode()
    doc: dict[str, Any] = json.loads(out)
    return proc.returncode, doc


async def test_node_client_reads_the_same_values_typed_values_and_hash_as_python(
    node_client: Path, served: Served
) -> None:
    server, stub, keys = served
    doc = keys_request("A", [*keys[:3], "424242"], BASE_US + 8 * 24 * HOUR_US)
    doc["request_id"] = "node-1"
    expected = await get_features(stub, doc)
    code, out = await run_client(node_client, server.port, "get-features", json.dumps(doc),
                                 "--deadline-ms", "5000")
    assert code == 0, out
    got = out["response"]
    # The whole proto JSON agrees, but for the two wall-clock instants.
    for answer in (got, expected):
        answer.pop("served_at_utc")
        answer["snapshot"].pop("created_at_utc")
    assert got == expected
    assert got["request_id"] == "node-1"
    features = expected["snapshot"]["features"]
    assert sorted(features) == [f"flow_id:{k}" for k in sorted(keys[:3])]

    # The hash: the same as the Python client's, and recomputed in TypeScript.
    served_hash = expected["snapshot"]["snapshot_hash"]
    assert out["snapshot_hash"] == {
        "served": served_hash, "recomputed": served_hash, "verified": True}

    # Typed values read through the generated oneof equal the snapshot's JSON values.
    cells = {cell["key"]: cell for cell in out["typed_cells"]}
    assert list(cells) == [f"flow_id:{k['key_id']}" for k in doc["feature_keys"]]
    kinds: set[str] = set()
    for key, group_values in features.items():
        cell, values = cells[key], group_values["core_features"]
        assert cell["present"] is True and cell["group"] == "core_features:v1"
        assert cell["last_event_time"] == values["last_event_ts_utc"]
        assert {name: v["value"] for name, v in cell["values"].items()} == values
        for name, v in cell["values"].items():
            kinds.add(v["kind"])
            if name.startswith("event_count_"):
                assert v["kind"] == "int64Value" and isinstance(v["value"], int)
            if name.startswith("amount_sum_"):
                assert v["kind"] == "decimalValue" and isinstance(v["value"], str)
    assert {"int64Value", "decimalValue", "timestampValue"} <= kinds
    assert any(v["value"] > 0 and v["status"] == "VALUE_STATUS_PRESENT"
               for c in out["typed_cells"] if c["present"]
               for v in c["values"].values() if v["kind"] == "int64Value")
    missing = cells["flow_id:424242"]
    assert missing["present"] is False and missing["values"] == {}
    assert missing["last_event_time"] is None
    assert expected["snapshot"]["freshness"]["missing_feature_keys"] == ["flow_id:424242"]


async def test_node_client_decodes_the_error_details_when_a_group_does_not_exist(
    node_client: Path, served: Served
) -> None:
    server, _, keys = served
    doc = keys_request("A", keys[:1], BASE_US + 8 * 24 * HOUR_US)
    doc["feature_groups"] = [{"name": "no_such_group", "version": "v1"}]
    doc["request_id"] = "node-refused"
    code, out = await run_client(node_client, server.port, "get-features", json.dumps(doc))
    assert code == REFUSED
    answered = server.service.metrics.registry.get_sample_value(
        "ofp_grpc_requests_total",
        {"method": "GetFeatures", "code": "INVALID_REQUEST", "grpc_code": "INVALID_ARGUMENT"})
    assert answered == 1  # not retryable: asked once
    refusal = out["refusal"]
    assert refusal["grpc_code"] == "INVALID_ARGUMENT"
    error = refusal["error_response"]
    assert error["status"] == "ERROR" and error["code"] == "INVALID_REQUEST"
    assert error.get("retryable", False) is False  # proto JSON may omit an unset bool
    assert error["detail"] == refusal["message"] and "no_such_group" in error["detail"]
    assert error["request_id"] == "node-refused"
    info = refusal["error_info"]
    assert info["reason"] == "INVALID_REQUEST" and info["domain"] == "ofp.feature_plane"
    assert info["metadata"]["retryable"] == "false"


async def test_node_client_retries_only_while_the_server_says_retryable(
    node_client: Path, pool: asyncpg.Pool, bus_root: Path
) -> None:
    # Nothing projected yet: the server refuses with UNAVAILABLE, retryable.
    async with running_server(pool, bus_root) as (server, _):
        doc = keys_request("A", ["1"], BASE_US + 8 * 24 * HOUR_US)
        code, out = await run_client(node_client, server.port, "get-features", json.dumps(doc))
        answered = server.service.metrics.registry.get_sample_value(
            "ofp_grpc_requests_total",
            {"method": "GetFeatures", "code": "UNAVAILABLE", "grpc_code": "UNAVAILABLE"})
    assert code == REFUSED
    refusal = out["refusal"]
    assert refusal["grpc_code"] == "UNAVAILABLE"
    assert refusal["error_response"]["code"] == "UNAVAILABLE"
    assert refusal["error_response"]["retryable"] is True
    assert refusal["error_info"]["metadata"]["retryable"] == "true"
    assert answered == 3  # the client's three attempts; a non-retryable refusal gets one


async def test_node_client_gives_up_at_its_deadline_when_the_deadline_has_passed(
    node_client: Path, served: Served
) -> None:
    server, _, keys = served
    doc = keys_request("A", keys[:1], BASE_US + 8 * 24 * HOUR_US)
    code, out = await run_client(node_client, server.port, "get-features", json.dumps(doc),
                                 "--deadline-ms", "0")
    assert code == REFUSED
    # The client's own deadline: no server answer, so no contract details to decode.
    assert out["refusal"]["grpc_code"] == "DEADLINE_EXCEEDED"
    assert out["refusal"]["error_response"] is None and out["refusal"]["error_info"] is None


async def test_node_client_reads_the_status_health_and_partitions(
    node_client: Path, served: Served
) -> None:
    server, _, _ = served
    code, out = await run_client(node_client, server.port, "get-status", "--request-id", "node-s")
    assert code == 0, out
    status = out["response"]
    assert status["status"] == "OK" and status["request_id"] == "node-s"
    assert status["stream"] == TOPIC
    assert out["health_state"] in {"GREEN", "AMBER", "RED"}
    assert out["health_state"] == status["health"]["state"]
    assert [p["partition"] for p in out["partitions"]] == [0, 1]
    assert all(p["offset_kind"] == "file_line" and int(p["next_offset"]) > 0
               for p in out["partitions"])
