"""The Go example client (clients/go) against a real server over a socket.

clients/go/build.sh generates the stubs with the repository's buf.gen.yaml (Go, Java and
C#, into clients/go/build/buf) and builds the example against Debian's Go packages; the
binary runs as a separate process. Its JSON output must say what the Python harness
reads for the same request: the same features, the snapshot hash (recomputed in Go), the
same typed values (read in Go as int64, decimal text and Timestamp), the rich error of a
refused request (google.rpc.Status details), and GetStatus.
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
from tests.support.harness import get_features, project_once, response_json, running_server
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request
from tests.support.typed import assert_typed_agrees

pytestmark = pytest.mark.integration
GO_DIR = Path(__file__).resolve().parents[2] / "clients" / "go"


@pytest.fixture(scope="module")
def go_binary() -> Path:
    # Installs what is missing, then regenerates and relinks only when an input changed.
    done = subprocess.run(["nice", "-n", "19", "bash", str(GO_DIR / "build.sh")],
                          capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, done.stdout + done.stderr
    return GO_DIR / "build" / "ofp-example"


async def run_go(binary: Path, *args: str, stdin: str = "") -> tuple[int, dict[str, Any], str]:
    # The server runs in this event loop: the client must not block it.
    proc = await asyncio.create_subprocess_exec(
        "nice", "-n", "19", str(binary), *args,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(stdin.encode()), 60)
    assert proc.returncode is not None
    doc: dict[str, Any] = json.loads(out) if out.strip() else {}
    return proc.returncode, doc, err.decode()


def without_empty_lists(value: Any) -> Any:
    """Python's harness prints empty repeated fields, Go's protojson leaves them out."""
    if isinstance(value, dict):
        return {k: without_empty_lists(v) for k, v in value.items() if v != []}
    if isinstance(value, list):
        return [without_empty_lists(v) for v in value]
    return value


def test_buf_gen_yaml_generates_go_java_and_csharp(go_binary: Path) -> None:
    out = GO_DIR / "build" / "buf" / "clients"
    assert (out / "go/gen/src/github.com/ofp-dev/ofp/clients/go/ofpv1/feature_service_grpc.pb.go"
            ).is_file()
    java = out / "java/gen/dev/ofp/api/v1"
    assert (java / "FeatureServiceGrpc.java").is_file()
    assert (java / "TypedValue.java").is_file()  # java_multiple_files
    assert "namespace Ofp.Api.V1" in (out / "csharp/gen/FeatureService.cs").read_text()


async def test_go_client_reads_features_typed_values_errors_and_status(
    pool: asyncpg.Pool, bus_root: Path, go_binary: Path
) -> None:
    stream = generate(94, n_events=150, n_keys=4, n_partitions=2, noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    # Three known keys and one without state (a cell with present=false).
    doc = {**keys_request("A", [*stream.keys[:3], "999999"], BASE_US + 9 * 24 * HOUR_US),
           "request_id": "go-1"}
    refused = {**doc, "feature_groups": [{"name": "no_such_group", "version": "v1"}]}
    async with running_server(pool, bus_root) as (srv, stub):
        want = await get_features(stub, doc)
        want_status = response_json(await stub.GetStatus(pb.GetStatusRequest()))
        # dns:/// with round_robin, as a client in front of several replicas dials.
        code, got, err = await run_go(go_binary, "-addr", f"dns:///localhost:{srv.port}",
                                      "features", "-", stdin=json.dumps(doc))
        assert code == 0, err
        no_code, no, no_err = await run_go(go_binary, "-addr", f"127.0.0.1:{srv.port}",
                                           "features", "-", stdin=json.dumps(refused))
        st_code, status, st_err = await run_go(go_binary, "-addr", f"127.0.0.1:{srv.port}",
                                               "status")

    # Values: what Go received is what the harness reads.
    answer = got["response"]
    assert answer["status"] == "OK" and answer["request_id"] == "go-1"
    assert answer["snapshot"]["features"] == want["snapshot"]["features"]
    assert len(want["snapshot"]["features"]) == 3
    assert answer["typed_features"] == without_empty_lists(want["typed_features"])
    assert_typed_agrees(answer)
    # The hash: Go recomputed the server's, and so does Python from Go's copy.
    server_hash = want["snapshot"]["snapshot_hash"]
    assert got["snapshot_hash"] == {"server": server_hash, "recomputed": server_hash,
                                    "verified": True}
    assert verify_response(answer)[0]

    # Typed values as Go read them: int64 counts, exact decimal text, the cell's time.
    cells = {c["key"]: c for c in got["typed"]}
    assert list(cells) == [f"flow_id:{k['key_id']}" for k in doc["feature_keys"]]
    assert cells["flow_id:999999"] == {"key": "flow_id:999999", "group": "core_features:v1",
                                       "present": False, "last_event_time": None,
                                       "features": {}}
    for key in [f"flow_id:{k}" for k in stream.keys[:3]]:
        values = want["snapshot"]["features"][key]["core_features"]
        cell = cells[key]
        assert cell["present"] is True
        assert cell["last_event_time"] == values["last_event_ts_utc"]
        counts = {n: v for n, v in cell["features"].items() if n.startswith("event_count_")}
        sums = {n: v for n, v in cell["features"].items() if n.startswith("amount_sum_")}
        assert counts and sums
        for name, v in counts.items():
            assert type(v["int64"]) is int and v["int64"] == values[name], name
            assert v["status"].startswith("VALUE_STATUS_")
        for name, v in sums.items():
            assert v["decimal"] == values[name], name
        assert cell["features"]["last_event_ts_utc"]["timestamp"] == values["last_event_ts_utc"]
    assert any(v["int64"] > 0 for c in cells.values() for n, v in c["features"].items()
               if n.startswith("event_count_"))

    # A refusal: exit 1 and the contract error from the status details.
    assert no_code == 1, no_err
    assert no == {"error": {
        "grpc_code": "InvalidArgument", "message": no["error"]["message"],
        "code": "INVALID_REQUEST", "retryable": False, "detail": no["error"]["message"],
        "request_id": "go-1", "reason": "INVALID_REQUEST", "domain": "ofp.feature_plane",
        "metadata": {"retryable": "false"},
    }}
    assert "no_such_group" in no["error"]["detail"]

    # GetStatus: the health ladder's state as an enum name, and every partition.
    assert st_code == 0, st_err
    assert status["response"]["stream"] == want_status["stream"] == "fp.bus.traffic.fraud.v1"
    assert status["health_state"] == want_status["health"]["state"]
    assert status["health_state"] in {"GREEN", "AMBER", "RED"}
    assert status["reasons"] == [r["code"] for r in want_status["health"].get("reasons", [])]
    assert [p["partition"] for p in status["partitions"]] == [0, 1]
    assert [p["next_offset"] for p in status["partitions"]] == [
        p["next_offset"] for p in want_status["partitions"]]
    assert all(int(p["next_offset"]) > 0 and p["offset_kind"] == "file_line"
               for p in status["partitions"])
