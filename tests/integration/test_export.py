"""`ofp export` and GetFeaturesBatch: training rows with online parity (docs/training.md).

Every test projects a generated stream with the real projector into a real
PostgreSQL, exports a spine with the real export code, and checks:

- every OK row's values equal the brute-force recomputation from the events
  (tests.support.streams.brute_force), a missing key is reported missing;
- a sample of rows' snapshot_hash equals the real gRPC GetFeatures answer at the
  same as-of on the same state, and each exported snapshot recomputes its hash;
- rows outside retention and rows that cannot be read are reported in their
  place, with a status and a count, never dropped;
- GetFeaturesBatch (the streaming RPC) gives the export's hashes, row by row;
- the output does not depend on the chunk size (property test), and chunking is
  in effect (statements, rows held, row groups).
"""

from __future__ import annotations

import csv
import json
import random
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import asyncpg
import grpc
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.contracts.hashing import verify_response
from ofp.contracts.timefmt import format_micros
from ofp.policy import load_policy
from ofp_cli.export import ExportOptions, ExportSummary, export
from tests.support.harness import (
    get_features,
    project_once,
    request_proto,
    running_server,
)
from tests.support.harness import settings as harness_settings
from tests.support.streams import (
    BASE_US,
    HOUR_US,
    Stream,
    brute_force,
    generate,
    keys_request,
    pins,
)

pytestmark = pytest.mark.integration

DAY_US = 24 * HOUR_US
GROUP = "core_features"


# ------------------------------------------------------------------ helpers


def spine_rows(stream: Stream, n: int, seed: int) -> list[tuple[str, int]]:
    """(key id, as-of) rows of run A: known and unknown keys, as-ofs before, inside
    and after the data, some exactly on an event's time."""
    rng = random.Random(seed)
    truth = [e for e in stream.truth if e.run == "A"]
    keys = [*stream.keys, "404"]
    lo = min(e.ts_us for e in truth) - HOUR_US
    hi = max(e.ts_us for e in truth) + DAY_US
    rows = []
    for _ in range(n):
        if rng.random() < 0.2:
            e = rng.choice(truth)
            rows.append((e.key, e.ts_us + rng.choice((0, -1, HOUR_US))))
        else:
            rows.append((rng.choice(keys), rng.randrange(lo, hi)))
    return rows


def write_csv(path: Path, header: list[str], rows: Iterable[Iterable[Any]]) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def csv_spine(path: Path, rows: list[tuple[str, int]]) -> Path:
    return write_csv(path, ["key", "as_of", "label"],
                     ((f"flow_id:{k}", format_micros(t), i % 2) for i, (k, t) in enumerate(rows)))


async def run_export(pool: asyncpg.Pool, bus_root: Path, spine: Path, out: Path,
                     **options: Any) -> tuple[ExportSummary, list[dict[str, Any]]]:
    async with pool.acquire() as conn:
        summary = await export(cast(asyncpg.Connection, conn), harness_settings(bus_root),
                               ExportOptions(spine=spine, out=out, pins=pins("A"), **options))
    return summary, pq.read_table(out).to_pylist()


def request_of(row: dict[str, Any]) -> dict[str, Any]:
    """The GetFeatures request an exported row answers."""
    key_type, _, key_id = row["key"].partition(":")
    return {
        "pins": pins("A"),
        "as_of_time_utc": row["as_of_time_utc"],
        "feature_keys": [{"key_type": key_type, "key_id": key_id}],
        "feature_groups": [{"name": GROUP, "version": "v1"}],
    }


def assert_values_are_brute_force(stream: Stream, rows: list[dict[str, Any]]) -> int:
    """Every OK row's values equal the brute-force ones; returns how many were checked."""
    checked = 0
    for r in rows:
        if r["status"] != "OK":
            continue
        key = r["key"].partition(":")[2]
        as_of_us = _micros(r["as_of"])
        assert format_micros(as_of_us) == r["as_of_time_utc"]
        expected = brute_force(stream.truth, "A", key, as_of_us)
        if expected is None:
            assert r[f"{GROUP}__present"] is False, r
            assert r[f"{GROUP}__event_count_1h"] is None
        else:
            assert r[f"{GROUP}__present"] is True, r
            got = {}
            for name in expected:
                v = r[f"{GROUP}__{name}"]
                got[name] = format_micros(_micros(v)) if name == "last_event_ts_utc" else v
            assert got == expected, (key, r["as_of_time_utc"])
        checked += 1
    return checked


def _micros(ts: Any) -> int:
    return int(pa.scalar(ts, pa.timestamp("us", tz="UTC")).cast(pa.int64()).as_py())


@asynccontextmanager
async def projected(pool: asyncpg.Pool, bus_root: Path, stream: Stream,
                    **overrides: Any) -> AsyncIterator[None]:
    stream.write(bus_root)
    await project_once(pool, bus_root, **overrides)
    yield


# ------------------------------------------------------------------ tests


async def test_csv_export_equals_brute_force_and_online_hashes(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(21, n_events=300, n_keys=5, n_partitions=2, runs=("A", "B"))
    stream.write(bus_root)
    await project_once(pool, bus_root)
    rows = spine_rows(stream, 300, seed=1)
    summary, out = await run_export(pool, bus_root, csv_spine(tmp_path / "spine.csv", rows),
                                    tmp_path / "features.parquet", chunk_rows=64,
                                    with_snapshot=True)
    assert summary.rows == len(out) == len(rows)
    assert [r["row"] for r in out] == list(range(len(rows)))
    assert summary.statuses == {"OK": len(rows)}
    assert assert_values_are_brute_force(stream, out) == len(rows)
    assert len(summary.basis_digests) == 1
    # Each row's snapshot recomputes its hash, as `ofp verify` does.
    for r in out:
        snap = json.loads(r["snapshot"])
        assert verify_response({"snapshot": snap})[0]
        assert snap["snapshot_hash"] == r["snapshot_hash"]
        assert snap["freshness"]["state"] == r["freshness_state"]
    # A sample of rows, asked through the real gRPC GetFeatures: the same hash.
    sample = random.Random(7).sample(out, 60)
    async with running_server(pool, bus_root) as (_, stub):
        for r in sample:
            doc = await get_features(stub, request_of(r))
            assert doc["snapshot"]["snapshot_hash"] == r["snapshot_hash"], r["row"]
            assert doc["snapshot"]["eb_offset_basis"]["basis_digest"] == r["basis_digest"]


def parquet_spine(path: Path, rows: list[tuple[str, int]]) -> Path:
    """The same rows with a key type column of integers and a timestamp as-of."""
    table = pa.table({
        "flow_id": pa.array([int(k) for k, _ in rows], pa.int64()),
        "as_of": pa.array([t for _, t in rows], pa.timestamp("us", tz="UTC")),
    })
    pq.write_table(table, path)
    return path


async def test_parquet_spine_gives_the_csv_spines_answers(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(22, n_events=200, n_keys=4, n_partitions=2, runs=("A",))
    stream.write(bus_root)
    await project_once(pool, bus_root)
    rows = spine_rows(stream, 150, seed=2)
    _, from_csv = await run_export(pool, bus_root, csv_spine(tmp_path / "s.csv", rows),
                                   tmp_path / "a.parquet")
    summary, from_pq = await run_export(pool, bus_root,
                                        parquet_spine(tmp_path / "s.parquet", rows),
                                        tmp_path / "b.parquet", chunk_rows=33)
    assert summary.statuses == {"OK": len(rows)}
    assert [r["flow_id"] for r in from_pq] == [k for k, _ in rows]
    for a, b in zip(from_csv, from_pq, strict=True):
        assert {k: v for k, v in a.items() if k != "key"} == {
            k: v for k, v in b.items() if k != "flow_id"}
    assert assert_values_are_brute_force(stream, from_csv) == len(rows)


async def test_rows_outside_retention_and_bad_rows_are_reported_in_place(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(41, n_events=200, n_keys=3, n_partitions=1, runs=("A",),
                      span_us=20 * DAY_US, noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root, retention_days=8)
    floor = max(e.ts_us for e in stream.truth) - 8 * DAY_US
    oldest_ok = floor + 7 * DAY_US  # its 7-day window starts at the floor
    ok, old = format_micros(oldest_ok), format_micros(oldest_ok - 1)
    spine = tmp_path / "spine.csv"
    lines = [
        ("flow_id:1", ok, "", "OK"),
        ("flow_id:1", old, "", "OUTSIDE_RETENTION"),
        ("flow_id", ok, "", "BAD_ROW"),  # no key id
        ("flow_id:2", "yesterday", "", "BAD_ROW"),
        ("flow_id:2", "", "", "BAD_ROW"),  # no as-of
        ("flow_id:" + "x" * 300, ok, "", "BAD_ROW"),  # longer than a key id may be
        ("flow_id:2", "2026-02-30T00:00:00Z", "", "BAD_ROW"),  # not on the calendar
        ("flow_id:3", ok, "nope:v1", "BAD_ROW"),  # not an exported group
        ("merchant_id:5", ok, "", "OK"),  # a key type no group has: missing, not bad
        ("flow_id:2", ok.replace(".000000Z", "+00:00"), "core_features:v1", "OK"),
        ("flow_id:3", format_micros(floor - DAY_US), "", "OUTSIDE_RETENTION"),
    ]
    with spine.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["key", "as_of", "groups"])
        for key, as_of, groups, _ in lines[:5]:
            w.writerow([key, as_of, groups])
        f.write("flow_id:1,2026-02-06T00:00:00Z,,surplus field\r\n")  # wrong field count
        for key, as_of, groups, _ in lines[5:]:
            w.writerow([key, as_of, groups])
    expected = [s for *_, s in lines[:5]] + ["BAD_ROW"] + [s for *_, s in lines[5:]]
    summary, out = await run_export(pool, bus_root, spine, tmp_path / "f.parquet",
                                    chunk_rows=4)
    assert [r["status"] for r in out] == expected
    assert [r["row"] for r in out] == list(range(len(expected)))
    assert summary.statuses == {"OK": 3, "OUTSIDE_RETENTION": 2, "BAD_ROW": 7}
    for r in out:
        if r["status"] == "OK":
            assert r["detail"] is None and r["snapshot_hash"]
        else:
            assert r["detail"] and r["snapshot_hash"] is None
            assert r["core_features__present"] is None
    assert "retained" in out[1]["detail"]
    assert out[8]["core_features__present"] is None  # no group of that key type
    assert out[0]["core_features__present"] is True
    # What the export calls outside retention, GetFeatures refuses the same way.
    async with running_server(pool, bus_root) as (_, stub):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetFeatures(request_proto(request_of(out[1])))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        for r in (out[0], out[9]):
            doc = await get_features(stub, request_of(r))
            assert doc["snapshot"]["snapshot_hash"] == r["snapshot_hash"]


def batch_request(doc: dict[str, Any]) -> pb.GetFeaturesBatchRequest:
    return pb.GetFeaturesBatchRequest(request=request_proto(doc))


async def test_streaming_rpc_gives_the_exports_hashes_and_errors_in_their_rows(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(23, n_events=200, n_keys=4, n_partitions=2, runs=("A", "B"))
    stream.write(bus_root)
    await project_once(pool, bus_root)
    rows = spine_rows(stream, 2_500, seed=3)
    _, out = await run_export(pool, bus_root, csv_spine(tmp_path / "s.csv", rows),
                              tmp_path / "f.parquet")
    requests = [request_of(r) for r in out]
    bad = {5: {**requests[5], "as_of_time_utc": "not a time"},
           17: {**requests[17], "feature_groups": [{"name": "nope", "version": "v1"}]},
           40: {**requests[40], "pins": pins("C")}}  # never seen: NOT_FOUND
    sent = [bad.get(i, doc) for i, doc in enumerate(requests)]

    async def stream_requests() -> AsyncIterator[pb.GetFeaturesBatchRequest]:
        for doc in sent:
            yield batch_request(doc)

    async with running_server(pool, bus_root) as (_, stub):
        answers = [a async for a in stub.GetFeaturesBatch(stream_requests())]
        single = await get_features(stub, requests[0])
    assert [a.index for a in answers] == list(range(len(sent)))
    codes = {i: a.error.code for i, a in enumerate(answers) if a.HasField("error")}
    assert codes == {5: pb.INVALID_REQUEST, 17: pb.INVALID_REQUEST, 40: pb.NOT_FOUND}
    for i, (a, r) in enumerate(zip(answers, out, strict=True)):
        if i not in bad:
            assert a.response.snapshot.snapshot_hash == r["snapshot_hash"], i
    assert single["snapshot"]["snapshot_hash"] == out[0]["snapshot_hash"]


@pytest.fixture
async def small_export(pool: asyncpg.Pool, bus_root: Path,
                       tmp_path: Path) -> tuple[Path, list[dict[str, Any]]]:
    """A projected stream and a 40-row spine (some rows bad), exported in one chunk."""
    stream = generate(24, n_events=120, n_keys=3, n_partitions=2, runs=("A",))
    stream.write(bus_root)
    await project_once(pool, bus_root)
    rows = spine_rows(stream, 36, seed=4)
    spine = write_csv(tmp_path / "spine.csv", ["key", "as_of"], [
        *((f"flow_id:{k}", format_micros(t)) for k, t in rows[:20]),
        ("flow_id:1", "never"), ("", format_micros(rows[0][1])),
        *((f"flow_id:{k}", format_micros(t)) for k, t in rows[20:]),
        ("flow_id:2", ""), ("flow_id", "2026-02-07T00:00:00Z")])
    _, reference = await run_export(pool, bus_root, spine, tmp_path / "ref.parquet",
                                    chunk_rows=1_000)
    return spine, reference


@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk_rows=st.integers(1, 41), row_group_rows=st.integers(1, 50))
async def test_output_does_not_depend_on_chunk_size(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path,
    small_export: tuple[Path, list[dict[str, Any]]], chunk_rows: int, row_group_rows: int
) -> None:
    spine, reference = small_export
    summary, out = await run_export(pool, bus_root, spine, tmp_path / "chunked.parquet",
                                    chunk_rows=chunk_rows, row_group_rows=row_group_rows)
    assert out == reference
    assert summary.statuses["BAD_ROW"] == 4
    assert summary.largest_chunk == min(chunk_rows, len(reference))


async def test_chunking_is_in_effect(pool: asyncpg.Pool, bus_root: Path,
                                     tmp_path: Path) -> None:
    """The spine is read chunk by chunk, one statement per chunk, and written a
    row group at a time: the rows held at once never grow with the spine."""
    stream = generate(25, n_events=100, n_keys=3, n_partitions=1, runs=("A",))
    stream.write(bus_root)
    await project_once(pool, bus_root)
    rows = spine_rows(stream, 1_000, seed=5)
    summary, out = await run_export(pool, bus_root, csv_spine(tmp_path / "s.csv", rows),
                                    tmp_path / "f.parquet", chunk_rows=128,
                                    row_group_rows=300)
    assert len(out) == 1_000
    assert summary.statements == 8 and summary.largest_chunk == 128
    meta = pq.ParquetFile(tmp_path / "f.parquet").metadata
    sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
    assert summary.row_groups == len(sizes) == 4 and max(sizes) <= 300 + 128
    assert pq.read_schema(tmp_path / "f.parquet").metadata[b"ofp.revision"] == b"r1"


V1_POLICY = {
    "policy_id": "ofp.features.export_test",
    "revision": "r1",
    "source_topic": "fp.bus.traffic.fraud.v1",
    "feature_groups": [{
        "name": "flow_kinds", "version": "v1", "key_type": "flow_id",
        "features": [
            {"agg": "count", "window": "1h"},
            {"agg": "sum", "field": "amount", "window": "24h"},
            {"agg": "min", "field": "amount", "window": "24h"},
            {"agg": "max", "field": "amount", "window": "24h"},
            {"agg": "mean", "field": "amount", "window": "7d"},
            {"agg": "stddev", "field": "amount", "window": "7d", "scale": 4},
            {"agg": "first", "field": "event_seq", "window": "24h"},
            {"agg": "last", "field": "event_seq", "window": "24h"},
            {"agg": "seconds_since_last", "window": "7d"},
            {"agg": "last_n", "field": "event_seq", "window": "24h", "n": 3},
            {"agg": "distinct_count", "field": "fraud_flag", "window": "7d"},
            {"agg": "approx_distinct_count", "field": "event_seq", "window": "7d"},
        ],
    }],
}


async def test_v1_features_export_with_online_hashes(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    path = tmp_path / "features.yaml"
    path.write_text(yaml.safe_dump(V1_POLICY, sort_keys=False), encoding="utf-8")
    stream = generate(26, n_events=250, n_keys=4, n_partitions=2, runs=("A",), noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root, policy=load_policy(path), features_path=str(path))
    rows = spine_rows(stream, 200, seed=6)
    summary, out = await run_export(pool, bus_root, csv_spine(tmp_path / "s.csv", rows),
                                    tmp_path / "f.parquet", chunk_rows=50,
                                    with_snapshot=True)
    assert summary.statuses == {"OK": len(rows)}
    assert pq.read_schema(tmp_path / "f.parquet").field(
        "flow_kinds__last_n_event_seq_24h").type == pa.list_(pa.string())
    async with running_server(pool, bus_root, features_path=str(path)) as (_, stub):
        for r in random.Random(8).sample(out, 40):
            doc = {**request_of(r), "feature_groups": [{"name": "flow_kinds",
                                                        "version": "v1"}]}
            answer = await get_features(stub, doc)
            assert answer["snapshot"]["snapshot_hash"] == r["snapshot_hash"], r["row"]
    for r in out:  # the typed columns hold the snapshot's values
        snap = json.loads(r["snapshot"])
        values = snap["features"].get(r["key"], {}).get("flow_kinds")
        if values is None:
            assert r["flow_kinds__present"] is False
            continue
        assert r["flow_kinds__count_1h"] == values["count_1h"]
        assert r["flow_kinds__sum_amount_24h"] == values["sum_amount_24h"]
        assert r["flow_kinds__last_n_event_seq_24h"] == values["last_n_event_seq_24h"]


async def test_streaming_rpc_answers_undecodable_and_empty_requests_in_their_rows(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    stream = generate(27, n_events=60, n_keys=2, n_partitions=1, runs=("A",), noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    good = batch_request(keys_request("A", ["1"], BASE_US + 4 * DAY_US)).SerializeToString()
    frames = [good, b"\xff\xff\xff", pb.GetFeaturesBatchRequest().SerializeToString(), good]
    async def raw() -> AsyncIterator[bytes]:
        for f in frames:
            yield f

    async with (running_server(pool, bus_root) as (srv, _),
                grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel):
        call = channel.stream_stream(
            "/ofp.v1.FeatureService/GetFeaturesBatch",
            request_serializer=lambda b: b,
            response_deserializer=pb.GetFeaturesBatchResponse.FromString)
        answers = [a async for a in call(raw())]
    assert [a.index for a in answers] == [0, 1, 2, 3]
    assert [a.WhichOneof("answer") for a in answers] == ["response", "error", "error",
                                                         "response"]
    assert answers[1].error.code == pb.INVALID_REQUEST
    assert "GetFeaturesBatchRequest" in answers[1].error.detail
    assert answers[2].error.detail == "request: required"
    assert answers[0].response.snapshot.snapshot_hash == answers[3].response.snapshot.snapshot_hash
