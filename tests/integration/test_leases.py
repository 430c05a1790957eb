"""Partition leases in Postgres: acquisition, expiry by the database clock, fencing,
balance between replicas, graceful release, and a replica killed mid-batch (SPEC 6)."""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.store.db import Conn
from ofp.store.leases import LeaseManager
from ofp.store.writes import Fence, LeaseLostError, apply_batch, ensure_partitions
from ofp_projector.projector import Projector
from tests.support.cli import cli_env
from tests.support.harness import default_policy, project_once
from tests.support.harness import settings as make_settings
from tests.support.streams import TOPIC, generate
from tests.support.workloads import projection_state

pytestmark = pytest.mark.integration
PoolFactory = Callable[[], Awaitable[asyncpg.Pool]]


async def test_lease_manager_fences_out_an_expired_owner_when_another_takes_over(
    pool: asyncpg.Pool,
) -> None:
    a = LeaseManager(stream="s", owner="a", ttl_s=1.5)
    b = LeaseManager(stream="s", owner="b", ttl_s=1.5)
    async with pool.acquire() as conn:
        await ensure_partitions(conn, stream="s", offset_kind="file_line", partitions=[0, 1, 2])
        got_a = await a.acquire(conn, [0, 1, 2], 2)
        assert [x.partition for x in got_a] == [0, 1]
        assert await b.acquire(conn, [0, 1, 2], 3) == [b_only := (await _only(conn, "s", 2))]
        assert b_only.partition == 2
        assert await a.renew(conn, got_a) == []  # still held
        # A graceful release hands a lease over at once, with a new token.
        await a.release(conn, [got_a[1]])
        taken = await b.acquire(conn, [1], 1)
        assert [x.partition for x in taken] == [1] and taken[0].token > got_a[1].token
        # Expiry by the database clock: a stops renewing, b takes partition 0.
        await asyncio.sleep(1.7)
        [late] = await b.acquire(conn, [0], 1)
        assert late.token > got_a[0].token
        assert await a.renew(conn, [got_a[0]]) == [got_a[0]]  # lost
        with pytest.raises(LeaseLostError):
            await apply_batch(conn, stream="s", partition=0, start_offset=0, next_offset=0,
                              records=[], group_ids=[], scope_cache={},
                              fence=Fence("a", got_a[0].token))
        await apply_batch(conn, stream="s", partition=0, start_offset=0, next_offset=0,
                          records=[], group_ids=[], scope_cache={}, fence=Fence("b", late.token))
        history = await conn.fetch(
            "SELECT partition, token, owner FROM lease_history ORDER BY token")
        assert [(r["partition"], r["owner"]) for r in history] == [
            (0, "a"), (1, "a"), (2, "b"), (1, "b"), (0, "b")]


async def _only(conn: Conn, stream: str, partition: int) -> Any:
    from ofp.store.leases import Lease

    row = await conn.fetchrow(
        "SELECT token FROM partition_leases WHERE stream = $1 AND partition = $2",
        stream, partition)
    assert row is not None
    return Lease(partition, int(row["token"]))


async def _holdings(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT owner, count(*) AS n FROM partition_leases"
        " WHERE owner IS NOT NULL AND expires_at > now() GROUP BY owner")
    return {r["owner"]: int(r["n"]) for r in rows}


async def _wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if await predicate():
            return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached in time")


async def test_two_replicas_balance_three_three_and_a_graceful_stop_hands_over_at_once(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(3, n_events=60, n_partitions=6).write(bus_root)
    # A graceful hand-over takes a control tick or two; an expiry at least the ttl.
    # The ttl leaves a loaded CI machine room between the two.
    ttl = 12
    a = Projector(make_settings(bus_root, lease_ttl_s=ttl), pool, default_policy())
    b = Projector(make_settings(bus_root, lease_ttl_s=ttl), pool, default_policy())
    task_a = asyncio.create_task(a.run())
    try:
        async def a_holds_all() -> bool:
            return (await _holdings(pool)).get(a.owner) == 6

        await _wait_until(a_holds_all, 10)
        task_b = asyncio.create_task(b.run())

        async def balanced() -> bool:
            h = await _holdings(pool)
            return h.get(a.owner) == 3 and h.get(b.owner) == 3

        await _wait_until(balanced, 10)
        assert sorted(a.held_partitions + b.held_partitions) == list(range(6))
        a.stop()
        await asyncio.wait_for(task_a, 10)

        async def b_holds_all() -> bool:
            return (await _holdings(pool)).get(b.owner) == 6

        # Released leases are free at once: well before a ttl would have expired them.
        assert await _wait_until(b_holds_all, ttl) < ttl / 2
        b.stop()
        await asyncio.wait_for(task_b, 10)
        assert await _holdings(pool) == {}
        assert await pool.fetchval("SELECT count(*) FROM projector_members") == 0
    finally:
        a.stop()
        b.stop()


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


async def test_a_replica_killed_mid_batch_is_taken_over_and_no_fenced_owner_ever_commits(
    pool_factory: PoolFactory, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(71, n_events=2400, n_keys=12, n_partitions=6)
    # The bus grows while three replicas follow it: a first fifth now, the rest later.
    topic_dir = bus_root / TOPIC
    topic_dir.mkdir(parents=True)
    cuts = [len(p) // 5 for p in stream.partitions]
    for p, lines in enumerate(stream.partitions):
        (topic_dir / f"partition={p}.jsonl").write_text(
            "".join(line + "\n" for line in lines[: cuts[p]]))
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("OFP_")},
        **cli_env(fresh_dsn, bus_root),
        "OFP_LEASE_TTL_S": "3",
        "OFP_BATCH_SIZE": "4",
        "OFP_POLL_INTERVAL_MS": "20",
    }
    procs = [
        await asyncio.create_subprocess_exec(
            _script("ofp-projector"), env=env, cwd=tmp_path,
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)
        for _ in range(3)
    ]
    pool = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=4)
    assert pool is not None
    try:
        async def three_hold_leases() -> bool:
            try:
                return len(await _holdings(pool)) == 3
            except asyncpg.UndefinedTableError:
                return False

        await _wait_until(three_hold_leases, 60)
        # Feed the rest in slices; kill one replica while it is busy applying batches.
        victim = procs[0]
        rest = [lines[cuts[p]:] for p, lines in enumerate(stream.partitions)]
        for step in range(4):
            for p, lines in enumerate(rest):
                part = lines[len(lines) * step // 4 : len(lines) * (step + 1) // 4]
                with (topic_dir / f"partition={p}.jsonl").open("a") as f:
                    f.write("".join(line + "\n" for line in part))
            if step == 1:
                await asyncio.sleep(0.3)
                victim.send_signal(signal.SIGKILL)
                await victim.wait()
            await asyncio.sleep(0.2)

        totals = [len(p) for p in stream.partitions]

        async def drained() -> bool:
            rows = await pool.fetch("SELECT partition, next_offset FROM checkpoints")
            return sorted((r["partition"], int(r["next_offset"])) for r in rows) == list(
                enumerate(totals))

        await _wait_until(drained, 90)
        for proc in procs[1:]:
            proc.send_signal(signal.SIGTERM)
        for proc in procs[1:]:
            assert await asyncio.wait_for(proc.wait(), 30) == 0
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()

    try:
        victim_owner_suffix = f"-{procs[0].pid}-"
        commits = await pool.fetch(
            "SELECT partition, token, owner, from_offset, next_offset, committed_at"
            " FROM checkpoint_commits ORDER BY partition, committed_at")
        history = await pool.fetch(
            "SELECT partition, token, owner, acquired_at FROM lease_history")
        # The victim committed, and its partitions were committed by others afterwards.
        assert any(victim_owner_suffix in (c["owner"] or "") for c in commits)
        assert len({h["owner"] for h in history}) == 3
        # Every commit's token was the partition's current token when it committed:
        # acquired by the committing owner before, and no newer token acquired before.
        fenced_out = await pool.fetch(
            "SELECT c.* FROM checkpoint_commits c WHERE c.token IS NULL"
            " OR NOT EXISTS (SELECT 1 FROM lease_history h WHERE h.stream = c.stream"
            "   AND h.partition = c.partition AND h.token = c.token AND h.owner = c.owner"
            "   AND h.acquired_at <= c.committed_at)"
            " OR EXISTS (SELECT 1 FROM lease_history h WHERE h.stream = c.stream"
            "   AND h.partition = c.partition AND h.token > c.token"
            "   AND h.acquired_at < c.committed_at)")
        assert fenced_out == []
        # Each partition's commits chain from 0 to its end without gap or overlap.
        for p, total in enumerate(totals):
            chain = [(int(c["from_offset"]), int(c["next_offset"]))
                     for c in commits if c["partition"] == p]
            assert chain[0][0] == 0 and chain[-1][1] == total
            assert all(b[0] == a[1] for a, b in itertools.pairwise(chain))
        # Takeover: the victim's last lease on some partition was followed by another owner's.
        victim_tokens = {h["token"] for h in history if victim_owner_suffix in h["owner"]}
        assert victim_tokens
        assert any(h["token"] > min(victim_tokens) and victim_owner_suffix not in h["owner"]
                   for h in history)

        # Final state equals a single replica's run over the same bus.
        single = await pool_factory()
        stream.write(tmp_path / "single")
        await project_once(single, tmp_path / "single")
        assert await projection_state(pool, stream) == await projection_state(single, stream)
    finally:
        await pool.close()
