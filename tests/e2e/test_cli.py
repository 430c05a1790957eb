"""`ofp` end to end: the quickstart, the client, and verifying answers by hash and by replay."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.contracts.timefmt import format_micros
from tests.support.cli import cli_env, free_port, run_ofp
from tests.support.harness import project_once, running_server
from tests.support.streams import TOPIC, envelope, generate, pins

pytestmark = pytest.mark.integration


def get_features_args(port: int, as_of_us: int, keys: list[str]) -> list[str]:
    args = ["get-features", "--address", f"127.0.0.1:{port}",
            "--pins-json", json.dumps(pins("A")), "--as-of", format_micros(as_of_us),
            "--group", "core_features:v1", "--request-id", "cli-test-1"]
    for key in keys:
        args += ["--key", f"flow_id:{key}"]
    return args


async def test_dev_prints_ok_answer_and_grpcurl_line_when_no_follow(
    fresh_dsn: str, tmp_path: Path
) -> None:
    port = free_port()
    env = cli_env(fresh_dsn, tmp_path / "bus", OFP_GRPC_ADDRESS=f"127.0.0.1:{port}")
    rc, out, err = await run_ofp("dev", "--no-follow", "--events", "200", env=env, cwd=tmp_path)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["status"] == "OK"
    assert doc["snapshot"]["features"], doc
    assert doc["snapshot"]["freshness"]["state"] == "GREEN"
    assert sum(int(o["offset"]) for o in doc["snapshot"]["eb_offset_basis"]["offsets"]) == 200
    grpcurl = [line for line in err.splitlines() if "grpcurl" in line]
    assert grpcurl and f"127.0.0.1:{port} ofp.v1.FeatureService/GetFeatures" in grpcurl[0]
    assert any("buf" in line and " curl " in line for line in err.splitlines())
    # Nothing to write the second time: the topic already has partition files.
    rc, out, err = await run_ofp("dev", "--no-follow", env=env, cwd=tmp_path)
    assert rc == 0, err
    assert "using the existing stream" in err
    assert json.loads(out)["snapshot"]["eb_offset_basis"] == doc["snapshot"]["eb_offset_basis"]


async def test_get_features_answer_verifies_and_tampering_is_detected(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(21, n_events=200, n_partitions=2)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    truth_a = [e for e in stream.truth if e.run == "A"]
    as_of = max(e.ts_us for e in truth_a)
    env = cli_env(fresh_dsn, bus_root)
    async with running_server(pool, bus_root) as (srv, _stub):
        rc, out, err = await run_ofp(
            *get_features_args(srv.port, as_of, [truth_a[0].key, "999999"]), env=env,
            cwd=tmp_path,
        )
        assert rc == 0, err
        doc = json.loads(out)
        assert doc["status"] == "OK" and doc["request_id"] == "cli-test-1"
        assert doc["snapshot"]["freshness"]["missing_feature_keys"] == ["flow_id:999999"]
        assert doc["snapshot"]["freshness"]["missing_groups"] == []  # empty lists printed

        # An unknown group is the contract error, printed as JSON, exit 1.
        bad = get_features_args(srv.port, as_of, ["1"])
        bad[bad.index("core_features:v1")] = "nope:v9"
        rc, bad_out, _ = await run_ofp(*bad, env=env, cwd=tmp_path)
        assert rc == 1
        error = json.loads(bad_out)
        assert error["code"] == "INVALID_REQUEST" and error["retryable"] is False
        assert error["detail"]

    saved = tmp_path / "answer.json"
    saved.write_text(out, encoding="utf-8")
    rc, verdict, err = await run_ofp("verify", str(saved), env=env, cwd=tmp_path)
    assert rc == 0, err
    assert verdict.strip() == f"match {doc['snapshot']['snapshot_hash']}"

    features = doc["snapshot"]["features"][f"flow_id:{truth_a[0].key}"]["core_features"]
    features["event_count_7d"] += 1
    saved.write_text(json.dumps(doc), encoding="utf-8")
    rc, verdict, _ = await run_ofp("verify", str(saved), env=env, cwd=tmp_path)
    assert rc == 1
    assert verdict.startswith(f"mismatch claimed={doc['snapshot']['snapshot_hash']} recomputed=")

    # The server being gone is UNAVAILABLE and retryable, still as JSON.
    rc, gone, _ = await run_ofp(*get_features_args(free_port(), as_of, ["1"]), env=env,
                                cwd=tmp_path)
    assert rc == 1
    assert json.loads(gone)["code"] == "UNAVAILABLE" and json.loads(gone)["retryable"] is True


def append_lines(path: Path, docs: list[dict[str, Any]]) -> None:
    with path.open("a", encoding="utf-8") as f:
        for d in docs:
            f.write(json.dumps(d) + "\n")


async def test_verify_replay_stops_at_the_basis_and_flags_short_partitions(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(22, n_events=250, n_partitions=3)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    truth_a = [e for e in stream.truth if e.run == "A"]
    as_of = max(e.ts_us for e in truth_a)
    key = truth_a[-1].key
    env = cli_env(fresh_dsn, bus_root)
    async with running_server(pool, bus_root) as (srv, _stub):
        rc, out, err = await run_ofp(*get_features_args(srv.port, as_of, [key, "424242"]),
                                     env=env, cwd=tmp_path)
    assert rc == 0, err
    saved = tmp_path / "answer.json"
    saved.write_text(out, encoding="utf-8")
    claimed = json.loads(out)["snapshot"]["snapshot_hash"]

    rc, verdict, err = await run_ofp("verify", "--replay", str(saved), env=env, cwd=tmp_path)
    assert (rc, verdict.strip()) == (0, f"match {claimed}"), err

    # Records beyond the basis (for the very key asked about) must not be replayed.
    part0 = bus_root / TOPIC / "partition=0.jsonl"
    append_lines(part0, [
        envelope(f"{i:032x}", as_of - 10 - i, "A", {"flow_id": key, "amount": "7"})
        for i in range(1, 6)
    ])
    rc, verdict, err = await run_ofp("verify", "--replay", str(saved), env=env, cwd=tmp_path)
    assert (rc, verdict.strip()) == (0, f"match {claimed}"), err

    # A partition shorter than the basis cannot reproduce it.
    lines = part0.read_text(encoding="utf-8").splitlines(keepends=True)
    part0.write_text("".join(lines[:3]), encoding="utf-8")
    rc, verdict, err = await run_ofp("verify", "--replay", str(saved), env=env, cwd=tmp_path)
    assert rc == 3, err
    assert verdict.startswith("uncheckable") and "partition 0" in verdict
