"""The snapshot log (docs/audit.md): every served snapshot recorded off the hot path,
fetched back byte-identical by GetSnapshot and `ofp snapshot get`, sampled, shed
under load by policy (never failing a call), in PostgreSQL or in S3 (moto's server)."""

from __future__ import annotations

import asyncio
import hashlib
import json
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.store.db import create_pool
from ofp.store.snapshot_log import (
    DAY_US,
    PARTITION_PREFIX,
    ensure_partitions,
)
from ofp_server.server import FeatureServer
from tests.integration.test_least_privilege import Deployment, deployment
from tests.support.cli import cli_env, run_ofp
from tests.support.harness import project_once, request_proto, running_server
from tests.support.kinesis import kinesis_endpoint
from tests.support.rich_errors import rich_error
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request

pytestmark = pytest.mark.integration
__all__ = ["deployment", "kinesis_endpoint"]
AS_OF = BASE_US + 5 * 24 * HOUR_US
REPO = Path(__file__).resolve().parents[2]


def request(key: str = "1", as_of_us: int = AS_OF) -> pb.GetFeaturesRequest:
    return request_proto(keys_request("A", [key, "2"], as_of_us))


async def projected(pool: asyncpg.Pool, bus_root: Path) -> None:
    generate(17, n_events=120, n_keys=4, n_partitions=2).write(bus_root)
    await project_once(pool, bus_root)


async def recorded(pool: asyncpg.Pool) -> int:
    return int(await pool.fetchval("SELECT count(*) FROM snapshot_log"))


def metric(srv: FeatureServer, name: str, **labels: str) -> float:
    return srv.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_a_served_snapshot_comes_back_byte_identical_with_its_bytes(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    await projected(pool, bus_root)
    async with running_server(pool, bus_root, snapshot_log_flush_ms=10) as (srv, stub):
        served = await stub.GetFeatures(request())
        digest = served.snapshot.snapshot_hash
        assert served.snapshot.snapshot_ref == f"pg:snapshot_log/{digest}"
        for _ in range(100):
            if await recorded(pool):
                break
            await asyncio.sleep(0.02)
        got = await stub.GetSnapshot(pb.GetSnapshotRequest(snapshot_hash=digest))
        # The snapshot message as served, and the exact bytes its hash covers.
        assert (got.snapshot.SerializeToString(deterministic=True)
                == served.snapshot.SerializeToString(deterministic=True))
        assert hashlib.sha256(got.canonical_json.encode("ascii")).hexdigest() == digest
        assert json.loads(got.canonical_json)["as_of_time_utc"] == served.snapshot.as_of_time_utc
        assert [dict(k) for k in got.request["feature_keys"]] == [
            {"key_type": "flow_id", "key_id": "1"}, {"key_type": "flow_id", "key_id": "2"}]
        assert metric(srv, "ofp_snapshot_log_recorded_total") == 1

        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await stub.GetSnapshot(pb.GetSnapshotRequest(snapshot_hash="0" * 64))
        err = rich_error(missing.value)
        assert err.grpc_code == grpc.StatusCode.NOT_FOUND and err.code == "NOT_FOUND"
        assert not err.error.retryable
        with pytest.raises(grpc.aio.AioRpcError) as bad:
            await stub.GetSnapshot(pb.GetSnapshotRequest(snapshot_hash="XYZ"))
        assert rich_error(bad.value).code == "INVALID_REQUEST"


async def test_the_cli_fetches_verifies_and_refuses_a_tampered_snapshot(
    pool: asyncpg.Pool, bus_root: Path, fresh_dsn: str, tmp_path: Path
) -> None:
    await projected(pool, bus_root)
    async with running_server(pool, bus_root, snapshot_log_flush_ms=10) as (srv, stub):
        digest = (await stub.GetFeatures(request())).snapshot.snapshot_hash
        await srv.service.recorder.stop()  # type: ignore[union-attr]  # flushed now
        env = cli_env(fresh_dsn, bus_root)
        address = f"127.0.0.1:{srv.port}"
        code, out, err = await run_ofp("snapshot", "get", digest, "--address", address,
                                       env=env, cwd=REPO)
        assert code == 0, err
        assert f"match {digest}" in err
        doc = json.loads(out)
        assert doc["snapshot"]["snapshot_hash"] == digest
        assert doc["snapshot"]["snapshot_ref"] == f"pg:snapshot_log/{digest}"

        # A stored snapshot that is not what was served fails loudly.
        await pool.execute("UPDATE snapshot_log SET canonical = convert_to(replace("
                           "convert_from(canonical, 'UTF8'), '\"core_features\"',"
                           " '\"core_featureX\"'), 'UTF8')")
        code, _, err = await run_ofp("snapshot", "get", digest, "--address", address,
                                     env=env, cwd=REPO)
        assert code == 1
        assert "MISMATCH" in err and digest in err

        code, out, _ = await run_ofp("snapshot", "get", "1" * 64, "--address", address,
                                     env=env, cwd=REPO)
        assert code == 1 and json.loads(out)["code"] == "NOT_FOUND"


async def test_sampling_records_a_share_and_off_records_nothing(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    await projected(pool, bus_root)
    async with running_server(pool, bus_root, snapshot_log_sample=0.0) as (_, stub):
        answer = await stub.GetFeatures(request())
        assert not answer.snapshot.HasField("snapshot_ref")
    assert await recorded(pool) == 0
    async with running_server(pool, bus_root, snapshot_log="off") as (srv, stub):
        answer = await stub.GetFeatures(request())
        assert not answer.snapshot.HasField("snapshot_ref")
        assert srv.service.recorder is None
    async with running_server(pool, bus_root, snapshot_log_sample=0.5) as (_, stub):
        answers = [await stub.GetFeatures(request(as_of_us=AS_OF + i)) for i in range(200)]
    refs = sum(a.snapshot.HasField("snapshot_ref") for a in answers)
    assert 50 <= refs <= 150  # binomial(200, 0.5): outside this range ~1e-12
    assert await recorded(pool) == refs  # stop() flushed every queued one


async def test_a_full_queue_drops_counts_and_never_fails_a_call(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    await projected(pool, bus_root)
    # One slot, and a drainer that waits 2 s to gather a batch: most calls find it full.
    async with running_server(pool, bus_root, snapshot_log_queue=1,
                              snapshot_log_flush_ms=2000) as (srv, stub):
        answers = await asyncio.gather(
            *(stub.GetFeatures(request(as_of_us=AS_OF + i)) for i in range(30)))
        assert all(a.status == "OK" for a in answers)
        dropped = metric(srv, "ofp_snapshot_log_dropped_total", reason="queue_full")
        refs = sum(a.snapshot.HasField("snapshot_ref") for a in answers)
        assert dropped >= 20 and dropped + refs == 30
        status = await stub.GetStatus(pb.GetStatusRequest())
        reasons = {r.code for r in status.health.reasons}
        assert "SNAPSHOT_LOG_SHEDDING" in reasons
        assert status.health.state != pb.GREEN
    assert await recorded(pool) == refs


async def test_block_policy_waits_for_room_and_records_everything(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    await projected(pool, bus_root)
    async with running_server(pool, bus_root, snapshot_log_queue=1, snapshot_log_flush_ms=5,
                              snapshot_log_overflow="block") as (srv, stub):
        answers = await asyncio.gather(
            *(stub.GetFeatures(request(as_of_us=AS_OF + i)) for i in range(30)))
        assert all(a.snapshot.HasField("snapshot_ref") for a in answers)
        assert metric(srv, "ofp_snapshot_log_dropped_total", reason="queue_full") == 0
        assert metric(srv, "ofp_snapshot_log_blocked_total") > 0
    assert await recorded(pool) == 30


async def test_a_write_failure_is_counted_and_the_server_keeps_serving(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    await projected(pool, bus_root)
    await pool.execute("ALTER TABLE snapshot_log RENAME TO snapshot_log_gone")
    try:
        async with running_server(pool, bus_root, snapshot_log_flush_ms=5) as (srv, stub):
            first = await stub.GetFeatures(request())
            for _ in range(200):
                if metric(srv, "ofp_snapshot_log_dropped_total", reason="write_failed"):
                    break
                await asyncio.sleep(0.01)
            assert metric(srv, "ofp_snapshot_log_dropped_total", reason="write_failed") == 1
            again = await stub.GetFeatures(request())
            assert again.snapshot.snapshot_hash == first.snapshot.snapshot_hash
    finally:
        await pool.execute("ALTER TABLE snapshot_log_gone RENAME TO snapshot_log")


async def test_partitions_are_made_ahead_and_dropped_after_retention(
    pool: asyncpg.Pool,
) -> None:
    def names(rows: list[Any]) -> list[str]:
        return sorted(r[0] for r in rows)

    query = ("SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
             " WHERE i.inhparent = 'snapshot_log'::regclass")
    day0 = BASE_US
    async with pool.acquire() as conn:
        assert await ensure_partitions(conn, day0, retention_days=90) == []
        made = names(await conn.fetch(query))
        assert made == [f"{PARTITION_PREFIX}2026020{d}" for d in (6, 7, 8)]
        await ensure_partitions(conn, day0, retention_days=90)  # idempotent
        assert names(await conn.fetch(query)) == made
        # 92 days later, retention 90: the first days go, new days come.
        dropped = await ensure_partitions(conn, day0 + 92 * DAY_US, retention_days=90)
        assert dropped == [f"{PARTITION_PREFIX}20260206", f"{PARTITION_PREFIX}20260207"]
        left = names(await conn.fetch(query))
        assert f"{PARTITION_PREFIX}20260208" in left and len(left) == 4


async def test_s3_mode_stores_one_object_per_snapshot_and_serves_it_back(
    pool: asyncpg.Pool, bus_root: Path, kinesis_endpoint: str
) -> None:
    from aiobotocore.session import get_session

    await projected(pool, bus_root)
    bucket = "ofp-snapshots"
    async with get_session().create_client("s3", endpoint_url=kinesis_endpoint,
                                           region_name="us-east-1") as s3:
        await s3.create_bucket(Bucket=bucket)
        async with running_server(
            pool, bus_root, snapshot_log="s3", snapshot_log_s3_bucket=bucket,
            snapshot_log_s3_endpoint_url=kinesis_endpoint, snapshot_log_flush_ms=10,
        ) as (srv, stub):
            served = await stub.GetFeatures(request())
            digest = served.snapshot.snapshot_hash
            key = f"snapshots/{digest}.json"
            assert served.snapshot.snapshot_ref == f"s3://{bucket}/{key}"
            for _ in range(200):
                if metric(srv, "ofp_snapshot_log_recorded_total"):
                    break
                await asyncio.sleep(0.02)
            got = await stub.GetSnapshot(pb.GetSnapshotRequest(snapshot_hash=digest))
            assert (got.snapshot.SerializeToString(deterministic=True)
                    == served.snapshot.SerializeToString(deterministic=True))
            assert hashlib.sha256(got.canonical_json.encode()).hexdigest() == digest
        listed = await s3.list_objects_v2(Bucket=bucket)
        assert [o["Key"] for o in listed["Contents"]] == [key]
    assert await recorded(pool) == 0


async def test_the_least_privileged_server_role_records_and_fetches(
    deployment: Deployment,
) -> None:
    """INSERT into the log and its partitions through snapshot_log_maintain: all the
    server role may do (docs/operations.md, "Database roles")."""
    d = deployment
    server_pool = await create_pool(d.dsn[d.roles.server], max_size=4)
    try:
        async with running_server(server_pool, d.bus_root, snapshot_log_flush_ms=5) as (
                srv, stub):
            as_of = max(e.ts_us for e in d.stream.truth)
            served = await stub.GetFeatures(
                request_proto(keys_request("A", d.stream.keys, as_of)))
            await srv.service.recorder.stop()  # type: ignore[union-attr]  # flushed now
            assert metric(srv, "ofp_snapshot_log_dropped_total", reason="write_failed") == 0
            assert metric(srv, "ofp_snapshot_log_recorded_total") == 1
            digest = served.snapshot.snapshot_hash
            got = await stub.GetSnapshot(pb.GetSnapshotRequest(snapshot_hash=digest))
            assert hashlib.sha256(got.canonical_json.encode()).hexdigest() == digest
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await server_pool.execute("DELETE FROM snapshot_log")
    finally:
        await server_pool.close()
