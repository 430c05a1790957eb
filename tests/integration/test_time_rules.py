"""Event time against the database clock and the retention floor (SPEC 2.2, 6 as amended).

- an event dated further past the database clock than `max_future_skew_s` is
  quarantined as `ts_in_future` and moves nothing (not the high mark, not the
  watermark, not retention);
- retention's cutoff is capped by the database clock, so no event time can
  make it delete what a request with an as-of near the present needs;
- an event at or below the retention floor is IGNORED `below_retention_floor`,
  never applied again after its dedupe row was pruned.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ofp.contracts.timefmt import format_micros
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import BASE_US, HOUR_US, TOPIC, envelope, keys_request

DAY_US = 24 * HOUR_US


def append(bus_root: Path, partition: int, docs: list[dict[str, Any]]) -> None:
    d = bus_root / TOPIC
    d.mkdir(parents=True, exist_ok=True)
    with (d / f"partition={partition}.jsonl").open("a", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")


async def counters(pool: asyncpg.Pool) -> dict[tuple[str, str], int]:
    rows = await pool.fetch("SELECT outcome, reason, sum(n)::bigint AS n FROM outcome_counters"
                            " GROUP BY outcome, reason")
    return {(r["outcome"], r["reason"]): int(r["n"]) for r in rows}


def now_us() -> int:
    return time.time_ns() // 1000


async def test_a_far_future_event_is_quarantined_and_retention_keeps_everything(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    """The reported instance: one event dated 2099 per partition used to raise the
    watermark to 2099 and let retention delete every row, dedupe rows included."""
    far = BASE_US + 73 * 365 * DAY_US  # 2099
    for p in (0, 1):
        append(bus_root, p, [
            envelope(f"ok{p}" * 16, BASE_US + 10 + p, "A", {"flow_id": 1, "amount": "2"}),
            envelope(f"fx{p}" * 16, far, "A", {"flow_id": 1, "amount": "3"}),
        ])
    await project_once(pool, bus_root, retention_days=8)
    assert await counters(pool) == {("APPLIED", ""): 2, ("QUARANTINED", "ts_in_future"): 2}
    rows = await pool.fetch("SELECT reason, detail, event_id FROM quarantine ORDER BY partition")
    assert [r["reason"] for r in rows] == ["ts_in_future", "ts_in_future"]
    assert "past the database clock" in rows[0]["detail"]
    assert rows[0]["event_id"] == "fx0" * 16
    highs = await pool.fetch("SELECT max_event_us FROM checkpoints ORDER BY partition")
    assert [r["max_event_us"] for r in highs] == [BASE_US + 10, BASE_US + 11]
    # Nothing pruned: the watermark stays at the accepted events (Feb 2026), so
    # the cutoff is 8 days before them.
    assert await pool.fetchval("SELECT count(*) FROM feature_events") == 2
    assert await pool.fetchval("SELECT count(*) FROM event_dedupe") == 2
    async with running_server(pool, bus_root) as (_, stub):
        doc = await get_features(stub, keys_request("A", ["1"], BASE_US + HOUR_US))
    assert doc["snapshot"]["features"]["flow_id:1"]["core_features"]["event_count_1h"] == 2


async def test_retention_cutoff_is_capped_by_the_database_clock(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    """Even with an accepted event just inside the skew, the floor stays at or below
    now - horizon: state a request with an as-of near the present needs is kept."""
    now = now_us()
    recent = now - 2 * DAY_US
    append(bus_root, 0, [
        envelope("r" * 32, recent, "A", {"flow_id": 1, "amount": "1"}),
        envelope("s" * 32, now + 60_000_000, "A", {"flow_id": 1, "amount": "1"}),  # +1 min
    ])
    await project_once(pool, bus_root, retention_days=8)
    assert await counters(pool) == {("APPLIED", ""): 2}
    # Watermark = now + 1 min; cutoff = min(watermark, db clock) - 8 d < recent.
    floor = await pool.fetchval("SELECT retained_from_us FROM retention")
    assert floor is not None and floor <= now_us() - 8 * DAY_US
    assert await pool.fetchval("SELECT count(*) FROM feature_events") == 2


@hsettings(max_examples=15,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(offsets_s=st.lists(st.integers(min_value=-20 * 86_400, max_value=20 * 86_400),
                          min_size=1, max_size=6))
async def test_no_event_time_lets_retention_reach_the_present(
    pool_factory: Any, tmp_path_factory: Any, offsets_s: list[int]
) -> None:
    """Class test: whatever the event times (past, present, inside or beyond the
    skew), after projecting and pruning every accepted event younger than
    now - horizon is still in the store, and every event beyond the skew is
    quarantined ts_in_future."""
    pool = await pool_factory()
    root = tmp_path_factory.mktemp("bus")
    t0 = now_us()
    docs = [
        envelope(f"{i:032x}", t0 + s * 1_000_000, "A", {"flow_id": i % 3, "amount": "1"})
        for i, s in enumerate(offsets_s)
    ]
    append(root, 0, docs)
    try:
        await project_once(pool, root, retention_days=8)
        t1 = now_us()
        kept = {r["event_id"] for r in await pool.fetch("SELECT event_id FROM event_dedupe")}
        future = {r["event_id"] for r in await pool.fetch(
            "SELECT event_id FROM quarantine WHERE reason = 'ts_in_future'")}
    finally:
        await pool.close()  # one example's connections at a time (the database stays)
    for i, s in enumerate(offsets_s):
        eid = f"{i:032x}"
        ts = t0 + s * 1_000_000
        if ts > t1 + 300_000_000:
            assert eid in future
        elif ts <= t0 + 300_000_000 and ts > t1 - 8 * DAY_US:
            # Accepted and younger than now - horizon: never pruned.
            assert eid in kept, (s, eid)


async def test_redelivery_below_the_retention_floor_is_ignored_not_applied(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    old = envelope("o" * 32, BASE_US, "A", {"flow_id": 1, "amount": "5"})
    new = envelope("n" * 32, BASE_US + 20 * DAY_US, "A", {"flow_id": 1, "amount": "7"})
    append(bus_root, 0, [old, new])
    await project_once(pool, bus_root, retention_days=8)
    floor = await pool.fetchval("SELECT retained_from_us FROM retention")
    assert floor == BASE_US + 12 * DAY_US
    assert await pool.fetchval("SELECT count(*) FROM event_dedupe") == 1  # `old` pruned

    # The old event arrives again (a producer retry), and a never-seen one below the floor.
    late = envelope("l" * 32, BASE_US + DAY_US, "A", {"flow_id": 1, "amount": "9"})
    append(bus_root, 0, [old, late])
    await project_once(pool, bus_root, retention_days=8)
    assert await counters(pool) == {
        ("APPLIED", ""): 2, ("IGNORED", "below_retention_floor"): 2,
    }
    assert await pool.fetchval("SELECT count(*) FROM feature_events") == 1
    assert await pool.fetchval("SELECT count(*) FROM event_dedupe") == 1
    assert await pool.fetchval(
        "SELECT next_offset FROM checkpoints WHERE partition = 0") == 4


async def test_the_skew_is_configurable_and_zero_means_not_past_the_clock(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    now = now_us()
    append(bus_root, 0, [
        envelope("a" * 32, now - HOUR_US, "A", {"flow_id": 1, "amount": "1"}),
        envelope("b" * 32, now + 30_000_000, "A", {"flow_id": 1, "amount": "1"}),  # +30 s
    ])
    await project_once(pool, bus_root, max_future_skew_s=0)
    assert await counters(pool) == {("APPLIED", ""): 1, ("QUARANTINED", "ts_in_future"): 1}


async def test_a_prune_and_a_batch_are_ordered_by_the_retention_lock(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path
) -> None:
    """A batch holds the retention lock shared until it commits, so a prune that
    would raise the floor waits for it (and then deletes what it applied)."""
    from ofp.store.writes import prune_retention, retention_lock_key

    append(bus_root, 0, [envelope("a" * 32, BASE_US + 20 * DAY_US, "A",
                                  {"flow_id": 1, "amount": "1"})])
    await project_once(pool, bus_root, retention_days=8)
    holder = await asyncpg.connect(fresh_dsn)
    try:
        tx = holder.transaction()
        await tx.start()
        await holder.execute("SELECT pg_advisory_xact_lock_shared(hashtext($1))",
                             retention_lock_key(TOPIC))
        import asyncio

        async with pool.acquire() as conn:
            prune = asyncio.ensure_future(
                prune_retention(conn, stream=TOPIC, horizon_us=DAY_US))
            await asyncio.sleep(0.3)
            assert not prune.done()  # waits for the "batch"
            await tx.commit()
            assert await asyncio.wait_for(prune, 10) == BASE_US + 19 * DAY_US
    finally:
        await holder.close()
    assert format_micros(await pool.fetchval("SELECT retained_from_us FROM retention"))
