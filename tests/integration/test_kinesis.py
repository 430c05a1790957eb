"""The Kinesis bus against a real Kinesis-compatible endpoint (moto's server over HTTP).

Same events on the file-bus and on Kinesis give the same values; resharding
keeps every record exactly once and children wait for their parents; injected
throttling and expired iterators lose nothing. See docs/decisions.md for what
moto does differently from AWS (and how the reader copes).
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp_projector.projector import Projector, make_bus
from tests.support.harness import get_features, project_once, running_server
from tests.support.kinesis import assert_brute_force as _assert_brute_force
from tests.support.kinesis import (
    count_records,
    create_stream,
    kinesis_client,
    kinesis_endpoint,
    put_lines,
    put_partitions,
    service_error,
    snapshots,
)
from tests.support.kinesis import feature_requests as _requests
from tests.support.kinesis import kinesis_settings as _kinesis_settings
from tests.support.kinesis import outcome_totals as _outcomes
from tests.support.kinesis import policy_for as _policy_for
from tests.support.kinesis import wait_until as _wait_until
from tests.support.streams import generate

__all__ = ["kinesis_endpoint"]
pytestmark = pytest.mark.integration
PoolFactory = Callable[[], Awaitable[asyncpg.Pool]]


async def test_kinesis_and_file_bus_give_the_same_values_when_the_events_are_the_same(
    pool_factory: PoolFactory, bus_root: Path, kinesis_endpoint: str
) -> None:
    name = f"ofp-t-{uuid.uuid4().hex[:8]}"
    stream = generate(31, n_events=300, n_keys=5, n_partitions=3)
    policy = _policy_for(name)
    stream.write(bus_root, topic=name)
    file_pool = await pool_factory()
    await project_once(file_pool, bus_root, policy=policy)

    async with kinesis_client(kinesis_endpoint) as client:
        await create_stream(client, name, shards=3)
        await put_partitions(client, name, stream.partitions)
    k_pool = await pool_factory()
    settings = _kinesis_settings(kinesis_endpoint, kinesis_get_records_limit=37)
    totals = await Projector(settings, k_pool, policy).run(once=True)
    assert totals.records == sum(len(p) for p in stream.partitions)

    file_snaps = await snapshots(file_pool, stream)
    k_snaps = await snapshots(k_pool, stream)
    for f, k in zip(file_snaps, k_snaps, strict=True):
        # Everything but the basis offsets (and so the digests and hash) is equal.
        for field in ("features", "run_config_digest", "feature_def_policy_rev", "freshness",
                      "pins", "as_of_time_utc", "feature_groups", "graph_version"):
            assert k.get(field) == f.get(field), field
        assert k["eb_offset_basis"]["window_end_utc"] == f["eb_offset_basis"]["window_end_utc"]
        assert f["eb_offset_basis"]["offset_kind"] == "file_line"
        basis = k["eb_offset_basis"]
        assert (basis["stream"], basis["offset_kind"]) == (name, "kinesis_sequence")
        # moto numbers a shard's records 1, 2, ...: exclusive-next = last + 1 = count + 1.
        assert [(o["partition"], o["offset"]) for o in basis["offsets"]] == [
            (p, str(len(lines) + 1)) for p, lines in enumerate(stream.partitions)]
    _assert_brute_force(k_snaps, stream)
    assert await _outcomes(k_pool, name) == {
        k: v for k, v in stream.expected_outcomes.items() if v
    } == await _outcomes(file_pool, name)
    lag = await k_pool.fetch("SELECT lag_ms, lag_observed_at FROM checkpoints")
    assert all(r["lag_ms"] is not None and r["lag_observed_at"] is not None for r in lag)

    # Resuming from the checkpoints (AFTER_SEQUENCE_NUMBER) reads nothing twice.
    again = await Projector(settings, k_pool, policy).run(once=True)
    assert again.records == 0


async def test_resharding_loses_nothing_applies_nothing_twice_and_children_wait_for_parents(
    pool: asyncpg.Pool, kinesis_endpoint: str
) -> None:
    name = f"ofp-t-{uuid.uuid4().hex[:8]}"
    stream = generate(47, n_events=450, n_keys=30, n_partitions=1, noise=False)
    lines = stream.partitions[0]
    thirds = [lines[:150], lines[150:300], lines[300:]]
    policy = _policy_for(name)
    settings = _kinesis_settings(kinesis_endpoint, batch_size=10)
    projector = Projector(settings, pool, policy)
    async with kinesis_client(kinesis_endpoint) as client:
        await create_stream(client, name, shards=3)
        await put_lines(client, name, thirds[0])
        task = asyncio.create_task(projector.run())
        try:
            async def some_applied() -> bool:
                return bool(await pool.fetchval("SELECT count(*) FROM checkpoint_commits"))

            await _wait_until(some_applied, 30)
            await put_lines(client, name, thirds[1] + thirds[2])
            # Split shard 0 (children 3, 4) and merge 1 and 2 (child 5) while the
            # projector is still working through the parents.
            shard0 = (await client.list_shards(StreamName=name))["Shards"][0]
            lo = int(shard0["HashKeyRange"]["StartingHashKey"])
            hi = int(shard0["HashKeyRange"]["EndingHashKey"])
            await client.split_shard(StreamName=name, ShardToSplit=shard0["ShardId"],
                                     NewStartingHashKey=str((lo + hi) // 2))
            await client.merge_shards(StreamName=name, ShardToMerge="shardId-000000000001",
                                      AdjacentShardToMerge="shardId-000000000002")
            in_stream = await count_records(client, name)

            async def all_read() -> bool:
                got = await pool.fetchval(
                    "SELECT coalesce(sum(n), 0) FROM outcome_counters WHERE stream = $1", name)
                return bool(int(got) >= in_stream)

            await _wait_until(all_read, 60)
        finally:
            projector.stop()
            await asyncio.wait_for(task, 30)

    outcomes = await _outcomes(pool, name)
    # moto copies the parents' records into a merge child (AWS does not): those
    # copies are DUPLICATE, never applied a second time.
    assert outcomes.get("APPLIED") == len(lines)
    assert sum(outcomes.values()) == in_stream
    assert set(outcomes) == {"APPLIED", "DUPLICATE"}  # the merge child was read too

    cps = {r["partition"]: r for r in await pool.fetch(
        "SELECT partition, closed, parents FROM checkpoints WHERE stream = $1", name)}
    assert sorted(cps) == [0, 1, 2, 3, 4, 5]
    assert {p: list(r["parents"]) for p, r in cps.items() if r["parents"]} == {
        3: [0], 4: [0], 5: [1, 2]}
    assert all(cps[p]["closed"] for p in (0, 1, 2))
    # A child's first commit comes after its parents' last (closing) commit.
    commits = await pool.fetch(
        "SELECT partition, committed_at FROM checkpoint_commits WHERE stream = $1", name)
    by_p: dict[int, list[Any]] = {}
    for r in commits:
        by_p.setdefault(r["partition"], []).append(r["committed_at"])
    # moto routes writes to the first shard whose hash range matches, closed
    # parents included, so its split children stay empty; its merge child holds
    # copies of both parents (read only after both closed, all DUPLICATE).
    assert {0, 1, 2, 5} <= set(by_p)
    for child, parents in ((3, [0]), (4, [0]), (5, [1, 2])):
        if child in by_p:
            assert all(min(by_p[child]) > max(by_p[parent]) for parent in parents), child
    # The exclusive-next chain of every partition has no gap and no overlap.
    for p in cps:
        chain = await pool.fetch(
            "SELECT from_offset, next_offset FROM checkpoint_commits"
            " WHERE stream = $1 AND partition = $2 ORDER BY committed_at", name, p)
        for a, b in itertools.pairwise(chain):
            assert b["from_offset"] == a["next_offset"]

    async with running_server(pool) as (_, stub):
        snaps = [(await get_features(stub, req))["snapshot"] for req in _requests(stream)]
    _assert_brute_force(snaps, stream)
    assert [o["partition"] for o in snaps[0]["eb_offset_basis"]["offsets"]] == [0, 1, 2, 3, 4, 5]


class _FaultInjector:
    """A botocore `before-call` hook: some GetRecords calls are throttled or see an
    expired iterator, as AWS would answer them; the request never reaches the server."""

    def __init__(self) -> None:
        self.calls = 0
        self.throttled = 0
        self.expired = 0

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call.kinesis.GetRecords", self.hook)

    def hook(self, **_: Any) -> Any:
        self.calls += 1
        if self.calls % 3 == 0:
            self.throttled += 1
            return service_error("ProvisionedThroughputExceededException", 400)
        if self.calls % 7 == 1:
            self.expired += 1
            return service_error("ExpiredIteratorException", 400)
        return None


async def test_injected_throttling_and_expired_iterators_lose_nothing(
    pool: asyncpg.Pool, kinesis_endpoint: str
) -> None:
    name = f"ofp-t-{uuid.uuid4().hex[:8]}"
    stream = generate(53, n_events=200, n_keys=4, n_partitions=2)
    policy = _policy_for(name)
    async with kinesis_client(kinesis_endpoint) as client:
        await create_stream(client, name, shards=2)
        await put_lines(client, name, [line for part in stream.partitions for line in part])
    settings = _kinesis_settings(kinesis_endpoint, kinesis_get_records_limit=25)
    faults = _FaultInjector()
    projector = Projector(settings, pool, policy,
                          bus=make_bus(settings, policy, client_hook=faults.attach))
    totals = await projector.run(once=True)
    assert faults.throttled >= 3 and faults.expired >= 2
    assert totals.records == sum(len(p) for p in stream.partitions)
    assert await _outcomes(pool, name) == {
        k: v for k, v in stream.expected_outcomes.items() if v}
    async with running_server(pool) as (_, stub):
        snaps = [(await get_features(stub, req))["snapshot"] for req in _requests(stream)]
    _assert_brute_force(snaps, stream)


async def test_listing_follows_every_page_of_shards(kinesis_endpoint: str) -> None:
    from ofp_projector.kinesis_bus import KinesisBus

    name = f"ofp-t-{uuid.uuid4().hex[:8]}"
    async with kinesis_client(kinesis_endpoint) as client:
        await create_stream(client, name, shards=7)
    bus = KinesisBus(stream_name=name, region="us-east-1", endpoint_url=kinesis_endpoint,
                     list_page_size=2)
    await bus.start()
    try:
        infos = await bus.discover()
    finally:
        await bus.close()
    assert [i.partition for i in infos] == list(range(7))


async def test_the_console_script_projects_kinesis_and_logs_one_json_line_per_batch(
    fresh_dsn: str, kinesis_endpoint: str, tmp_path: Path
) -> None:
    import json
    import os
    import sys

    from tests.support.harness import POLICY_PATH
    from tests.support.kinesis import AWS_ENV
    from tests.support.streams import TOPIC

    # The default policy's topic is the stream name; a fresh moto stream per test session.
    async with kinesis_client(kinesis_endpoint) as client:
        names = (await client.list_streams())["StreamNames"]
        if TOPIC not in names:
            await create_stream(client, TOPIC, shards=2)
        stream = generate(13, n_events=60, n_partitions=1)
        await put_lines(client, TOPIC, stream.partitions[0])
        in_stream = await count_records(client, TOPIC)
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OFP_")},
        **AWS_ENV,
        "OFP_DATABASE_URL": fresh_dsn,
        "OFP_FEATURES_PATH": str(POLICY_PATH),
        "OFP_BUS_KIND": "kinesis",
        "OFP_KINESIS_ENDPOINT_URL": kinesis_endpoint,
        "OFP_KINESIS_GET_RECORDS_LIMIT": "20",
    }
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).parent / "ofp-projector"), "--once", env=env, cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 90)
    assert proc.returncode == 0, err.decode()[-2000:]
    lines = [json.loads(line) for line in out.decode().splitlines() if line.startswith("{")]
    batches = [x for x in lines if x["event"] == "batch_applied"]
    assert batches and all(x["records"] <= 20 for x in batches)
    assert sum(x["records"] for x in batches) == in_stream
    assert any(x["event"] == "projector_finished" for x in lines)
