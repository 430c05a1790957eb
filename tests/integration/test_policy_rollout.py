"""Rolling out a revision: stage -> backfill -> activate -> rollback, with the server
answering throughout (docs/features.md, "Rolling out a revision").

The reference for every backfilled value is a second database that projected
the same bus with the new revision from the start (the direct path, whose
values the feature-language oracle tests pin down): backfill + live must give
byte-identical answers and snapshot hashes for every key and as-of.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import random
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.contracts.hashing import verify_response
from ofp.policy import Policy, load_policy
from ofp.store import rollout
from ofp.store.writes import PolicyConflictError
from ofp_projector.backfill import Backfill
from ofp_projector.projector import Projector
from tests.support.cli import cli_env, process_env, run_ofp
from tests.support.harness import get_features, project_once, running_server
from tests.support.harness import settings as make_settings
from tests.support.kinesis import (
    create_stream,
    kinesis_client,
    kinesis_endpoint,
    kinesis_settings,
    put_partitions,
)
from tests.support.streams import BASE_US, HOUR_US, TOPIC, Stream, generate, keys_request

__all__ = ["kinesis_endpoint"]
pytestmark = pytest.mark.integration

PoolFactory = Callable[[], Awaitable[asyncpg.Pool]]
# Streams span 3 days: with 7-day windows, a request must be at or after the
# watermark less 2 minutes (retention is the largest window + 120 s), so every
# as-of below lies after the last event time.
SPAN_US = 3 * 24 * HOUR_US
AS_OF0 = BASE_US + SPAN_US + 17
REPO = Path(__file__).resolve().parents[2]
NEW_GROUP: dict[str, Any] = {
    "name": "flow_stats",
    "version": "v1",
    "key_type": "flow_id",
    "features": [
        {"agg": "count", "window": "1h"},
        {"agg": "sum", "field": "amount", "window": "24h"},
        {"agg": "max", "field": "amount", "window": "7d"},
        {"agg": "mean", "field": "amount", "window": "7d"},
        {"agg": "last", "field": "event_seq", "window": "24h"},
        {"agg": "last_n", "field": "event_seq", "window": "7d", "n": 3},
        {"agg": "distinct_count", "field": "event_seq", "window": "24h"},
        {"agg": "approx_distinct_count", "field": "event_seq", "window": "7d"},
        {"agg": "count", "window": "24h", "name": "flagged_24h",
         "where": {"field": "fraud_flag", "eq": True}},
        {"agg": "seconds_since_last", "window": "7d"},
    ],
}


def write_revision(tmp: Path, revision: str, *, new_group: bool,
                   topic: str = TOPIC) -> tuple[Path, Policy]:
    doc = yaml.safe_load((REPO / "config/features_v0.yaml").read_text())
    doc["revision"] = revision
    doc["source_topic"] = topic
    if new_group:
        doc["feature_groups"].append(NEW_GROUP)
    path = tmp / f"features_{revision}.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path, load_policy(path)


def append(bus_root: Path, lines_by_partition: list[list[str]]) -> None:
    for p, lines in enumerate(lines_by_partition):
        with open(bus_root / TOPIC / f"partition={p}.jsonl", "a", encoding="utf-8") as f:
            f.writelines(line + "\n" for line in lines)


def request(keys: list[str], as_of_us: int, groups: list[tuple[str, str]],
            revision: str | None = None) -> dict[str, Any]:
    doc = keys_request("A", keys, as_of_us)
    doc["feature_groups"] = [{"name": n, "version": v} for n, v in groups]
    if revision is not None:
        doc["policy_revision"] = revision
    return doc


class Traffic:
    """GetFeatures for the active revision's group, back to back, counting failures."""

    def __init__(self, stub: pb_grpc.FeatureServiceStub, keys: list[str]) -> None:
        self.stub, self.keys = stub, keys
        self.ok = 0
        self.failures: list[str] = []
        self.revisions: set[str] = set()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        rng = random.Random(5)
        while True:
            as_of = AS_OF0 + rng.randrange(0, 24) * HOUR_US
            try:
                doc = await get_features(self.stub, request(
                    self.keys, as_of, [("core_features", "v1")]))
                ok, _, _ = verify_response(doc)
                assert ok, "snapshot_hash does not recompute"
                self.revisions.add(doc["snapshot"]["feature_def_policy_rev"]["revision"])
                self.ok += 1
            except (grpc.aio.AioRpcError, AssertionError) as exc:
                self.failures.append(repr(exc)[:300])
            await asyncio.sleep(0.005)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Traffic]:
        self._task = asyncio.create_task(self._run())
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


@contextlib.asynccontextmanager
async def live_projector(pool: asyncpg.Pool, bus_root: Path, policy: Policy,
                         **overrides: Any) -> AsyncIterator[Projector]:
    projector = Projector(make_settings(bus_root, poll_interval_ms=20, **overrides), pool, policy)
    task = asyncio.create_task(projector.run())
    try:
        yield projector
    finally:
        projector.stop()
        await asyncio.wait_for(task, 30)


async def drained(pool: asyncpg.Pool, bus_root: Path) -> None:
    """Wait until the live projector has applied every line of the bus."""
    want = {p: len((bus_root / TOPIC / f"partition={p}.jsonl").read_text().splitlines())
            for p in range(len(list((bus_root / TOPIC).glob("partition=*.jsonl"))))}
    for _ in range(1500):
        rows = await pool.fetch("SELECT partition, next_offset FROM checkpoints")
        if {int(r[0]): int(r[1]) for r in rows} == want:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"the live projector did not drain the bus: {want}")


async def answers(stub: pb_grpc.FeatureServiceStub, keys: list[str], group: tuple[str, str],
                  revision: str | None = None) -> list[dict[str, Any]]:
    out = []
    for as_of in [AS_OF0 + k * 47 * 60_000_000 for k in range(31)]:
        doc = await get_features(stub, request(keys, as_of, [group], revision))
        assert verify_response(doc)[0]
        out.append(doc["snapshot"])
    return out


def comparable(snaps: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """What two databases that projected the same bus must agree on, byte for byte."""
    return [(s["features"], s["snapshot_hash"], s["eb_offset_basis"]) for s in snaps]


async def reference(pool_factory: PoolFactory, bus_root: Path, policy: Policy,
                    keys: list[str]) -> list[dict[str, Any]]:
    """The same bus projected with `policy` from the start."""
    ref = await pool_factory()
    await project_once(ref, bus_root, policy=policy)
    async with running_server(ref, bus_root) as (_, stub):
        return await answers(stub, keys, ("flow_stats", "v1"))


async def test_stage_backfill_activate_rollback_while_serving(
    pool: asyncpg.Pool, pool_factory: PoolFactory, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(31, n_events=400, n_keys=5, n_partitions=2, span_us=SPAN_US)
    stream.write(bus_root)
    later = generate(32, n_events=120, n_keys=5, n_partitions=2, span_us=SPAN_US)
    r1_path, r1 = write_revision(tmp_path, "r1", new_group=False)
    _, r2 = write_revision(tmp_path, "r2", new_group=True)
    await project_once(pool, bus_root, policy=r1)
    keys = stream.keys
    async with running_server(pool, bus_root) as (_, stub), \
            live_projector(pool, bus_root, r1), \
            Traffic(stub, keys).running() as traffic:
        async with pool.acquire() as conn:
            staged = await rollout.stage_policy(conn, r2, None)
        assert staged.new_groups == ["flow_stats v1"]
        # Not served before it has caught up; the active revision answers meanwhile.
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get_features(stub, request(keys, AS_OF0, [("flow_stats", "v1")], "r2"))
        assert refused.value.code() == grpc.StatusCode.NOT_FOUND
        # Events keep arriving while the backfill runs: the live projector
        # applies them to the new group, the backfill the history before.
        backfill = asyncio.create_task(
            Backfill(make_settings(bus_root, batch_size=37), pool).run(timeout_s=60))
        await asyncio.sleep(0.05)
        append(bus_root, later.partitions)
        progress = await backfill
        assert progress.caught_up and progress.events_applied > 0
        await drained(pool, bus_root)
        # Caught up: a request may name r2 before it is active.
        shadow = await answers(stub, keys, ("flow_stats", "v1"), revision="r2")
        async with pool.acquire() as conn:
            assert await rollout.activate(conn, "r2") == "r1"
        active = await answers(stub, keys, ("flow_stats", "v1"))
        assert {s["feature_def_policy_rev"]["revision"] for s in active} == {"r2"}
        # Rolled back, r1 answers again, and r2 stays maintained and nameable.
        async with pool.acquire() as conn:
            assert await rollout.rollback(conn) == ("r2", "r1")
        with pytest.raises(grpc.aio.AioRpcError) as unknown:
            await get_features(stub, request(keys, AS_OF0, [("flow_stats", "v1")]))
        assert unknown.value.code() in (grpc.StatusCode.INVALID_ARGUMENT,
                                        grpc.StatusCode.NOT_FOUND)
        previous = await answers(stub, keys, ("flow_stats", "v1"), revision="r2")
        async with pool.acquire() as conn:
            await rollout.activate(conn, "r2")  # roll forward again
        await asyncio.sleep(0.2)
    assert traffic.failures == [], traffic.failures[:3]
    assert traffic.ok > 20 and traffic.revisions == {"r1", "r2"}
    expected = comparable(await reference(pool_factory, bus_root, r2, keys))
    for got in (shadow, active, previous):
        assert comparable(got) == expected
    del r1_path


async def test_a_killed_backfill_resumes_to_the_same_answers(
    pool: asyncpg.Pool, fresh_dsn: str, pool_factory: PoolFactory, bus_root: Path,
    tmp_path: Path
) -> None:
    """`ofp policy stage` killed with SIGKILL mid-backfill; `ofp policy backfill`
    resumes from what it committed, and nothing is applied twice."""
    generate(41, n_events=1500, n_keys=6, n_partitions=2, span_us=SPAN_US).write(bus_root)
    _, r1 = write_revision(tmp_path, "r1", new_group=False)
    r2_path, r2 = write_revision(tmp_path, "r2", new_group=True)
    await project_once(pool, bus_root, policy=r1)
    env = cli_env(fresh_dsn, bus_root, OFP_BATCH_SIZE="5")

    async def ofp(*args: str) -> tuple[int, str, str]:
        # run_ofp is asyncio: the live projector runs on this event loop meanwhile.
        return await run_ofp(*args, env=env, cwd=tmp_path)

    async with live_projector(pool, bus_root, r1):
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ofp_cli.main", "policy", "stage", str(r2_path),
            env=process_env(env),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(1000):
            done = await pool.fetchval(
                "SELECT coalesce(sum(reached), 0) FROM backfill_partitions"
                " WHERE to_regclass('backfill_partitions') IS NOT NULL")
            if done and done > 40:
                break
            await asyncio.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        await asyncio.wait_for(proc.wait(), 10)
        status = await pool.fetchval("SELECT caught_up_at FROM staged_policy")
        assert status is None, "the backfill finished before it could be killed"
        code, out, err = await ofp("policy", "backfill", "--timeout", "60")
        assert code == 0, err
        assert "has caught up" in out
        code, out, err = await ofp("policy", "status")
        assert "staged:   r2 (caught up)" in out, out + err
        code, out, err = await ofp("policy", "activate", "r2")
        assert code == 0, err
        code, out, err = await ofp("policy", "activate", "r9")
        assert code == 2 and "neither staged nor the previous" in err, err
    keys = [str(k) for k in range(1, 7)]
    async with running_server(pool, bus_root) as (_, stub):
        got = await answers(stub, keys, ("flow_stats", "v1"))
    assert comparable(got) == comparable(await reference(pool_factory, bus_root, r2, keys))


async def test_an_event_reaches_the_new_groups_once(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """The class of double counting: an event whose copy the live projector
    already applied to the new groups (marked in backfill_seen) is skipped by the
    backfill; a copy whose payload differs from the applied one never counts."""
    stream = generate(51, n_events=60, n_keys=2, n_partitions=1, noise=False, span_us=SPAN_US)
    stream.write(bus_root)
    _, r1 = write_revision(tmp_path, "r1", new_group=False)
    _, r2 = write_revision(tmp_path, "r2", new_group=True)
    await project_once(pool, bus_root, policy=r1)
    async with pool.acquire() as conn:
        await rollout.stage_policy(conn, r2, None)
        # As if the live projector had applied the first event's copy on
        # another partition: it is marked, so the backfill must skip it.
        first = await conn.fetchrow(
            "SELECT scope_id, event_id FROM event_dedupe ORDER BY event_id LIMIT 1")
        assert first is not None
        await conn.execute("INSERT INTO backfill_seen VALUES ($1, $2)", first[0], first[1])
        await conn.execute(
            "INSERT INTO backfill_partitions (stream, partition, live_from)"
            " SELECT stream, partition, next_offset FROM checkpoints")
    progress = await Backfill(make_settings(bus_root), pool).run(timeout_s=30)
    assert progress.caught_up
    applied = await pool.fetchval(
        "SELECT count(DISTINCT event_id) FROM fv_events e JOIN feature_groups g"
        " USING (group_id) WHERE g.name = 'flow_stats'")
    assert applied == len(stream.truth) - 1
    assert not await pool.fetchval(
        "SELECT count(*) FROM fv_events e JOIN feature_groups g USING (group_id)"
        " WHERE g.name = 'flow_stats' AND e.event_id = $1", first[1])


async def test_rollout_refusals_name_what_to_do(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    generate(61, n_events=20, n_keys=2, n_partitions=1, noise=False,
             span_us=SPAN_US).write(bus_root)
    _, r1 = write_revision(tmp_path, "r1", new_group=False)
    _, r2 = write_revision(tmp_path, "r2", new_group=True)
    _, r3 = write_revision(tmp_path, "r3", new_group=True)
    async with pool.acquire() as conn:
        from ofp.store.db import migrate

        await migrate(conn)
        with pytest.raises(PolicyConflictError, match="no revision is active"):
            await rollout.stage_policy(conn, r2, None)
    await project_once(pool, bus_root, policy=r1)
    async with pool.acquire() as conn:
        with pytest.raises(PolicyConflictError, match="already active"):
            await rollout.stage_policy(conn, r1, None)
        with pytest.raises(PolicyConflictError, match="no previous revision"):
            await rollout.rollback(conn)
        await rollout.stage_policy(conn, r2, None)
        again = await rollout.stage_policy(conn, r2, None)  # a repeated stage resumes
        assert again.already and again.new_groups == ["flow_stats v1"]
        with pytest.raises(PolicyConflictError, match="r2 is staged"):
            await rollout.stage_policy(conn, r3, None)
        with pytest.raises(PolicyConflictError, match="still being backfilled"):
            await rollout.activate(conn, "r2")
        with pytest.raises(PolicyConflictError, match="neither staged nor the previous"):
            await rollout.activate(conn, "r3")
        assert await rollout.discard(conn) == "r2"
        # r3 shares flow_stats v1 with the discarded r2: staged afresh, its partial
        # state is cleared and backfilled again.
        staged = await rollout.stage_policy(conn, r3, None)
        assert staged.new_groups == ["flow_stats v1"]


async def test_a_kinesis_backfill_replays_each_shard_from_trim_horizon(
    pool_factory: PoolFactory, bus_root: Path, tmp_path: Path, kinesis_endpoint: str
) -> None:
    """The same rollout over Kinesis (moto's server over HTTP), configured with
    LATEST: the backfill still reads each shard from TRIM_HORIZON. The new group's
    values equal those of the same records projected with the new revision from
    the start on the file-bus."""
    name = f"ofp-t-{uuid.uuid4().hex[:8]}"
    stream = generate(71, n_events=300, n_keys=4, n_partitions=2, span_us=SPAN_US)
    later = generate(72, n_events=80, n_keys=4, n_partitions=2, span_us=SPAN_US)
    _, r1 = write_revision(tmp_path, "r1", new_group=False, topic=name)
    _, r2 = write_revision(tmp_path, "r2", new_group=True, topic=name)
    k_pool = await pool_factory()
    k_settings = kinesis_settings(kinesis_endpoint, kinesis_get_records_limit=53)
    async with kinesis_client(kinesis_endpoint) as client:
        await create_stream(client, name, shards=2)
        await put_partitions(client, name, stream.partitions)
        await Projector(k_settings, k_pool, r1).run(once=True)
        latest = dataclasses.replace(k_settings, kinesis_start_position="LATEST")
        live = Projector(latest, k_pool, r1)
        task = asyncio.create_task(live.run())
        try:
            async with k_pool.acquire() as conn:
                await rollout.stage_policy(conn, r2, None)
            backfill = asyncio.create_task(Backfill(latest, k_pool).run(timeout_s=60))
            await asyncio.sleep(0.2)
            await put_partitions(client, name, later.partitions)
            assert (await backfill).caught_up
            total = sum(len(p) for p in stream.partitions + later.partitions)
            for _ in range(1500):
                done = await k_pool.fetchval(
                    "SELECT coalesce(sum(records), 0) FROM checkpoint_commits")
                if done >= total:
                    break
                await asyncio.sleep(0.02)
            async with k_pool.acquire() as conn:
                await rollout.activate(conn, "r2")
        finally:
            live.stop()
            await asyncio.wait_for(task, 30)
    merged = [a + b for a, b in zip(stream.partitions, later.partitions, strict=True)]
    root = tmp_path / "file-bus"
    for p, lines in enumerate(merged):
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / f"partition={p}.jsonl").write_text("".join(x + "\n" for x in lines))
    keys = stream.keys
    async with running_server(k_pool, bus_root) as (_, stub):
        got = await answers(stub, keys, ("flow_stats", "v1"))
    ref = await pool_factory()
    await project_once(ref, root, policy=r2)
    async with running_server(ref, root) as (_, stub):
        want = await answers(stub, keys, ("flow_stats", "v1"))
    assert [s["features"] for s in got] == [s["features"] for s in want]


# One reference per generated stream is projected afresh: a few examples cover
# the class (stage point, batch sizes, partitions, duplicates across them).
@pytest.mark.timeout(600)
@settings(max_examples=4, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), partitions=st.integers(1, 3),
       staged_after=st.floats(0.0, 1.0), live_batch=st.sampled_from([1, 7, 2000]),
       backfill_batch=st.sampled_from([1, 5, 2000]))
async def test_backfill_plus_live_equals_a_projection_from_the_start(
    pool_factory: PoolFactory, tmp_path: Path, seed: int, partitions: int,
    staged_after: float, live_batch: int, backfill_batch: int
) -> None:
    """Whatever the point at which the revision is staged (some of each partition
    applied before, the rest after), the batch sizes of the live projector and of
    the backfill, and the partitioning (duplicates land on other partitions), the
    new group's answers and hashes equal a projection with the new revision from
    the start."""
    root = Path(tempfile.mkdtemp(dir=tmp_path))
    stream = generate(seed, n_events=120, n_keys=3, n_partitions=partitions, span_us=SPAN_US)
    cut = [int(len(p) * staged_after) for p in stream.partitions]
    Stream([p[:c] for p, c in zip(stream.partitions, cut, strict=True)], []).write(root)
    r_dir = Path(tempfile.mkdtemp(dir=tmp_path))
    _, r1 = write_revision(r_dir, "r1", new_group=False)
    _, r2 = write_revision(r_dir, "r2", new_group=True)
    pool = await pool_factory()
    await project_once(pool, root, policy=r1, batch_size=live_batch)
    async with pool.acquire() as conn:
        await rollout.stage_policy(conn, r2, None)
    async with live_projector(pool, root, r1, batch_size=live_batch):
        backfill = asyncio.create_task(
            Backfill(make_settings(root, batch_size=backfill_batch), pool).run(timeout_s=60))
        append(root, [p[c:] for p, c in zip(stream.partitions, cut, strict=True)])
        assert (await backfill).caught_up
        await drained(pool, root)
    keys = stream.keys
    async with running_server(pool, root) as (_, stub):
        got = await answers(stub, keys, ("flow_stats", "v1"), revision="r2")
    assert comparable(got) == comparable(await reference(pool_factory, root, r2, keys))
