"""The Java example client (clients/java) against a real server over a socket.

The client is built from Debian's jars by clients/java/build.sh and run as a separate
JVM; its JSON output must say what the Python harness reads for the same request:
the same features and snapshot hash (recomputed here from what Java received), the
same typed values (read in Java as long, BigDecimal and Timestamp), the rich error of a
refused request, and GetStatus.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.contracts.hashing import verify_response
from ofp.contracts.timefmt import format_micros, parse_as_of
from tests.support.harness import get_features, project_once, response_json, running_server
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request
from tests.support.typed import assert_typed_agrees

pytestmark = pytest.mark.integration
JAVA_DIR = Path(__file__).resolve().parents[2] / "clients" / "java"


@pytest.fixture(scope="module")
def java_jar() -> Path:
    # Installs what is missing, then compiles only when an input changed.
    done = subprocess.run(["nice", "-n", "19", "bash", str(JAVA_DIR / "build.sh")],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    return JAVA_DIR / "build" / "ofp-example.jar"


async def run_java(jar: Path, port: int, request: Path) -> dict[str, Any]:
    proc = await asyncio.create_subprocess_exec(
        "nice", "-n", "19", "java", "-jar", str(jar), f"127.0.0.1:{port}", str(request),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 180)
    assert proc.returncode == 0, err.decode()
    doc: dict[str, Any] = json.loads(out)
    return doc


async def test_java_client_reads_features_typed_values_errors_and_status(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path, java_jar: Path
) -> None:
    stream = generate(93, n_events=150, n_keys=4, n_partitions=2, noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    # Three known keys and one without state (a cell with present=false).
    doc = keys_request("A", [*stream.keys[:3], "999999"], BASE_US + 9 * 24 * HOUR_US)
    request = tmp_path / "request.json"
    request.write_text(json.dumps(doc))
    async with running_server(pool, bus_root) as (srv, stub):
        want = await get_features(stub, doc)
        want_status = response_json(await stub.GetStatus(pb.GetStatusRequest()))
        got = await run_java(java_jar, srv.port, request)

    # Values: what Java received is what the harness reads, and its hash recomputes.
    answer = got["features"]
    assert answer["status"] == "OK"
    assert answer["snapshot"]["features"] == want["snapshot"]["features"]
    assert len(want["snapshot"]["features"]) == 3
    assert answer["snapshot"]["snapshot_hash"] == want["snapshot"]["snapshot_hash"]
    ok, claimed, recomputed = verify_response(answer)
    assert ok, (claimed, recomputed)
    assert answer["typed_features"] == want["typed_features"]
    assert_typed_agrees(answer)

    # Typed values as Java read them: long counts, exact decimals, the cell's timestamp.
    cells = {c["key"]: c for c in got["typed"]}
    assert list(cells) == [f"flow_id:{k['key_id']}" for k in doc["feature_keys"]]
    assert cells["flow_id:999999"]["present"] is False
    assert cells["flow_id:999999"]["values"] == {}
    for key in stream.keys[:3]:
        cell = cells[f"flow_id:{key}"]
        values = want["snapshot"]["features"][f"flow_id:{key}"]["core_features"]
        assert cell["group"] == "core_features:v1" and cell["present"] is True
        count = cell["values"]["event_count_7d"]
        assert isinstance(count, int) and count == values["event_count_7d"] > 0
        total = cell["values"]["amount_sum_7d"]
        assert isinstance(total, str) and total == values["amount_sum_7d"]
        assert cell["statuses"]["event_count_7d"] == "VALUE_STATUS_PRESENT"
        assert format_micros(parse_as_of(cell["last_event_time"])) == values[
            "last_event_ts_utc"]
        assert cell["values"]["last_event_ts_utc"] == cell["last_event_time"]

    # The refusal, decoded from grpc-status-details-bin; not retryable, so tried once.
    refusal = got["refusal"]
    assert refusal["grpc_code"] == "INVALID_ARGUMENT"
    assert refusal["code"] == "INVALID_REQUEST" and refusal["retryable"] is False
    assert refusal["attempts"] == 1
    assert refusal["error"]["status"] == "ERROR" and refusal["error"]["code"] == "INVALID_REQUEST"
    assert refusal["error"]["detail"] == refusal["message"] and "no_such_group" in refusal[
        "message"]
    info = refusal["error_info"]
    assert info["reason"] == "INVALID_REQUEST" and info["domain"] == "ofp.feature_plane"
    assert info["metadata"]["retryable"] == "false"

    # GetStatus: the health state enum and every partition, as the harness reads them.
    status = got["status"]
    assert status["status"] == "OK" and status["request_id"] == "java-example"
    assert status["health"]["state"] in {"GREEN", "AMBER", "RED"}
    assert status["health"]["state"] == want_status["health"]["state"]
    parts = [(p["partition"], p["next_offset"]) for p in status["partitions"]]
    assert parts == [(p["partition"], p["next_offset"]) for p in want_status["partitions"]]
    assert [p for p, _ in parts] == [0, 1] and all(int(o) > 0 for _, o in parts)
