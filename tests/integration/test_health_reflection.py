"""Health and server reflection (SPEC 4.6), probed the way operators and tools do.

Health: grpc.health.v1 says SERVING for "" and ofp.v1.FeatureService only when the
database answers and an active policy exists; "liveness" is SERVING while the process
is up. Reflection: grpcurl, `buf curl` and a Python client that knows nothing but the
reflection service can call GetFeatures, and the JSON they show is the contract's JSON
(snake_case names, contract strings, seed as a 64-bit string) whose snapshot_hash
recomputes with `ofp.contracts.hashing.verify_response`.

The CLI tools run as subprocesses through asyncio so that the in-process server keeps
serving on the same event loop while they talk to it; the blocking reflection client
runs in a worker thread for the same reason.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import descriptor_pool, json_format, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from ofp.contracts.hashing import normalize_json_snapshot, verify_response
from ofp.contracts.schemas import GET_FEATURES_RESPONSE, first_error
from ofp.contracts.timefmt import format_micros
from ofp_server.server import FeatureServer, create_server
from tests.support.harness import project_once, running_server
from tests.support.harness import settings as make_settings
from tests.support.streams import BASE_US, HOUR_US, generate, pins

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
GRPCURL = BIN / "grpcurl"
BUF = BIN / "buf"
SERVICE = "ofp.v1.FeatureService"
HEALTH = "grpc.health.v1.Health"
METHOD = f"{SERVICE}/GetFeatures"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
FRESHNESS_STATES = {"GREEN", "AMBER", "RED"}
FRESHNESS_FLAGS = {"STALE_INPUT_BASIS", "MISSING_FEATURE_STATE", "STALE_BY_TTL"}
SNAKE = re.compile(r"^[a-z][a-z0-9_]*$")
TOOL_TIMEOUT_S = 60


def request_doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "pins": pins("A"),
        "as_of_time_utc": format_micros(BASE_US + 5 * 24 * HOUR_US),
        "feature_keys": [
            {"key_type": "flow_id", "key_id": "1"},
            {"key_type": "flow_id", "key_id": "2"},
            {"key_type": "flow_id", "key_id": "999"},
        ],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
        "request_id": "reflect-1",
    }
    doc.update(changes)
    return doc


async def run_tool(*argv: str | Path, stdin: str | None = None) -> tuple[int, str, str]:
    env = {**os.environ, "BUF_CACHE_DIR": str(Path(os.environ.get("TMPDIR", "/tmp")) / "buf")}
    proc = await asyncio.create_subprocess_exec(
        *(str(a) for a in argv),
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    try:
        out, err = await asyncio.wait_for(
            proc.communicate(stdin.encode() if stdin is not None else None), TOOL_TIMEOUT_S
        )
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def walk_keys(value: Any, path: str = "") -> list[tuple[str, str]]:
    """(path, name) of every object key, except inside `features` (keys there are data)."""
    found: list[tuple[str, str]] = []
    if isinstance(value, dict):
        for name, sub in value.items():
            found.append((path, name))
            if name != "features":
                found += walk_keys(sub, f"{path}.{name}")
    elif isinstance(value, list):
        for item in value:
            found += walk_keys(item, f"{path}[]")
    return found


def assert_contract_json(doc: dict[str, Any], tool: str) -> None:
    """The JSON a reflection client shows is the contract's JSON (SPEC 4.2)."""
    assert doc["status"] == "OK", (tool, doc)
    assert doc["request_id"] == "reflect-1"
    bad = [f"{p}.{n}" for p, n in walk_keys(doc) if not SNAKE.fullmatch(n)]
    assert not bad, (tool, bad)
    snap = doc["snapshot"]
    # Read back as numbers (seed, Struct counts), the JSON validates against the schema.
    readable = {**doc, "snapshot": normalize_json_snapshot(snap)}
    problem = first_error(GET_FEATURES_RESPONSE, readable)
    assert problem is None, (tool, problem)
    matches, claimed, recomputed = verify_response(doc)
    assert matches, (tool, claimed, recomputed)
    assert re.fullmatch(r"[0-9a-f]{64}", claimed)
    assert snap["freshness"]["state"] in FRESHNESS_STATES
    assert set(snap["freshness"].get("flags", [])) <= FRESHNESS_FLAGS
    assert snap["freshness"].get("missing_feature_keys") == ["flow_id:999"]
    assert snap["eb_offset_basis"]["offset_kind"] == "file_line"
    assert snap["eb_offset_basis"]["stream"] == "fp.bus.traffic.fraud.v1"
    for offset in snap["eb_offset_basis"]["offsets"]:
        assert isinstance(offset["offset"], str) and offset["offset"].isdigit()
    assert snap["pins"]["seed"] == "0"  # uint64: a JSON string in proto3 JSON
    assert snap["as_of_time_utc"] == request_doc()["as_of_time_utc"]
    assert snap["feature_groups"] == [{"name": "core_features", "version": "v1"}]
    assert set(snap["features"]) <= {"flow_id:1", "flow_id:2"}
    assert snap["features"], "runs A with keys 1 and 2 should have state"


# ------------------------------------------------------------------------- fixtures


@pytest.fixture
async def served(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[FeatureServer]:
    generate(5, n_events=200, n_keys=3, runs=("A", "B")).write(bus_root)
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root) as (server, _stub):
        yield server


async def health_of(port: int, service: str) -> int:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
        return int(reply.status)


# --------------------------------------------------------------------------- health


async def test_health_is_not_serving_until_a_policy_is_recorded_then_serving(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    async with running_server(pool, bus_root) as (server, _stub):
        for name in ("", SERVICE):
            assert await health_of(server.port, name) == NOT_SERVING, name
        assert await health_of(server.port, "liveness") == SERVING

        await project_once(pool, bus_root)  # empty bus: records the policy only
        await server._refresh_health()
        for name in ("", SERVICE, "liveness"):
            assert await health_of(server.port, name) == SERVING, name


async def test_health_becomes_serving_without_help_when_the_refresh_loop_runs(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    async with running_server(pool, bus_root) as (server, _stub):
        assert await health_of(server.port, SERVICE) == NOT_SERVING
        await project_once(pool, bus_root)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while await health_of(server.port, SERVICE) != SERVING:
            assert loop.time() < deadline, "health did not turn SERVING within 5 s"
            await asyncio.sleep(0.1)


async def test_health_is_not_serving_but_alive_when_the_database_is_unreachable(
    bus_root: Path,
) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dead_pool = await asyncpg.create_pool(
        f"postgresql://u:p@127.0.0.1:{port}/d", min_size=0, max_size=1, timeout=2
    )
    assert dead_pool is not None
    server = create_server(make_settings(bus_root), dead_pool, "127.0.0.1:0")
    await server.start()
    try:
        for name in ("", SERVICE):
            assert await health_of(server.port, name) == NOT_SERVING, name
        assert await health_of(server.port, "liveness") == SERVING
    finally:
        await server.stop(0)
        await dead_pool.close()


async def test_health_check_through_grpcurl_reports_serving(served: FeatureServer) -> None:
    for service in (SERVICE, "liveness"):
        code, out, err = await run_tool(
            GRPCURL,
            "-plaintext",
            "-d",
            json.dumps({"service": service}),
            f"127.0.0.1:{served.port}",
            f"{HEALTH}/Check",
        )
        assert code == 0, err
        assert json.loads(out) == {"status": "SERVING"}


# ----------------------------------------------------------------------- reflection


async def test_grpcurl_lists_the_feature_and_health_services_through_reflection(
    served: FeatureServer,
) -> None:
    code, out, err = await run_tool(GRPCURL, "-plaintext", f"127.0.0.1:{served.port}", "list")
    assert code == 0, err
    services = set(out.split())
    assert {SERVICE, HEALTH} <= services, services
    # Describe by service name: python-protobuf's pool cannot look a *method* symbol up
    # (FindFileContainingSymbol("ofp.v1.FeatureService.GetFeatures") raises KeyError), so
    # `grpcurl describe ofp.v1.FeatureService.GetFeatures` fails against any Python server.
    code, out, err = await run_tool(
        GRPCURL, "-plaintext", f"127.0.0.1:{served.port}", "describe", SERVICE
    )
    assert code == 0, err
    assert "rpc GetFeatures ( .ofp.v1.GetFeaturesRequest )" in out, out


@pytest.mark.parametrize("emit_defaults", [False, True], ids=["plain", "emit-defaults"])
async def test_grpcurl_get_features_shows_contract_json_whose_hash_recomputes(
    served: FeatureServer, emit_defaults: bool
) -> None:
    flags = ["-emit-defaults"] if emit_defaults else []
    code, out, err = await run_tool(
        GRPCURL,
        "-plaintext",
        *flags,
        "-d",
        "@",
        f"127.0.0.1:{served.port}",
        METHOD,
        stdin=json.dumps(request_doc()),
    )
    assert code == 0, err
    assert_contract_json(json.loads(out), "grpcurl")


async def test_grpcurl_reports_invalid_argument_when_pins_are_missing(
    served: FeatureServer,
) -> None:
    doc = request_doc()
    del doc["pins"]
    code, out, err = await run_tool(
        GRPCURL,
        "-plaintext",
        "-d",
        "@",
        f"127.0.0.1:{served.port}",
        METHOD,
        stdin=json.dumps(doc),
    )
    assert code != 0
    text = out + err
    assert "InvalidArgument" in text, text
    assert "pins" in text
    assert "Traceback" not in text and "SELECT" not in text


async def test_buf_curl_get_features_shows_contract_json_whose_hash_recomputes(
    served: FeatureServer,
) -> None:
    code, out, err = await run_tool(
        BUF,
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--data",
        "@-",
        f"http://127.0.0.1:{served.port}/{METHOD}",
        stdin=json.dumps(request_doc()),
    )
    assert code == 0, err
    assert_contract_json(json.loads(out), "buf curl")


def _call_through_reflection_only(port: int, request: dict[str, Any]) -> dict[str, Any]:
    """A client that learns every type from the server's reflection service."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        service = pool.FindServiceByName(SERVICE)
        method = service.FindMethodByName("GetFeatures")
        request_cls = message_factory.GetMessageClass(method.input_type)
        response_cls = message_factory.GetMessageClass(method.output_type)
        assert request_cls.DESCRIPTOR.file.pool is pool
        call = channel.unary_unary(
            f"/{SERVICE}/GetFeatures",
            request_serializer=request_cls.SerializeToString,
            response_deserializer=response_cls.FromString,
        )
        reply = call(json_format.ParseDict(request, request_cls()), timeout=30)
        assert reply.DESCRIPTOR.file.pool is pool
        text = json_format.MessageToJson(reply, preserving_proto_field_name=True)
        doc: dict[str, Any] = json.loads(text)
        return doc


async def test_reflection_only_python_client_decodes_contract_json(
    served: FeatureServer,
) -> None:
    doc = await asyncio.to_thread(_call_through_reflection_only, served.port, request_doc())
    assert_contract_json(doc, "python reflection client")
