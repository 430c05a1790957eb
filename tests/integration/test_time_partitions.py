"""Time-partitioned state (migration 0009, ofp.store.timeparts).

- answers stay exact at every partition edge: events exactly on, just before
  and just after period edges, as-of on the edges, both feature languages
  against their brute-force oracles, with some periods' rows caught by the
  default partition and after they are moved into their period;
- retention drops whole periods (pg_inherits / pg_class) and never deletes a
  row from these tables (a trigger refuses every DELETE; n_tup_del stays 0);
- concurrent projectors and concurrent maintenance create partitions without
  failing, each period once; partition DDL behind a long read waits at most
  lock_timeout per attempt and is retried later;
- dedupe stays exact across partitions: one event id at two times, applied
  concurrently from two bus partitions, is applied once and quarantined once.
"""

from __future__ import annotations

import asyncio
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ofp.policy import Policy
from ofp.store.timeparts import (
    PERIOD_US,
    create_period,
    ensure_periods,
    list_partitions,
    maintain,
    period_start,
    periods_in_defaults,
)
from ofp_projector.projector import Projector
from tests.integration.test_feature_language import (
    KINDS,
    assert_no_problems,
    edges,
    lines,
    oracle_problems,
    request,
    txn,
    write_partitions,
    write_policy,
)
from tests.support.harness import (
    default_policy,
    get_features,
    project_once,
    request_proto,
    running_server,
    settings,
)
from tests.support.streams import (
    BASE_US,
    HOUR_US,
    TOPIC,
    TruthEvent,
    brute_force,
    envelope,
    generate,
    keys_request,
)

pytestmark = pytest.mark.integration

SEC = 1_000_000
MIN = 60 * SEC
DAY = 24 * HOUR_US
TABLES = ("feature_events", "feature_tiles", "event_dedupe", "fv_events", "fv_tiles",
          "fv_distinct", "fv_sketches")
# Partition edges the edge events sit on (weeks from Thursday 00:00 UTC).
BOUNDARIES = [period_start(BASE_US) + k * PERIOD_US for k in (1, 2, 3)]
OFFSETS = [-HOUR_US, -MIN, -1, 0, 1, MIN, HOUR_US - 1]


async def _project(pool: asyncpg.Pool, root: Path, policy: Policy) -> None:
    await Projector(settings(root, batch_size=7), pool, policy).run(once=True)


async def _into_default(pool: asyncpg.Pool, periods: set[int]) -> None:
    """Put these periods' rows in the default partitions, as when their
    partitions could not be created in time (detached, their rows routed again)."""
    async with pool.acquire() as conn, conn.transaction():
        for p in await list_partitions(conn):
            if p.lo_us in periods:
                await conn.execute(f"ALTER TABLE {p.parent} DETACH PARTITION {p.name}")
                await conn.execute(f"INSERT INTO {p.parent} SELECT * FROM {p.name}")
                await conn.execute(f"DROP TABLE {p.name}")


async def _default_rows(pool: asyncpg.Pool) -> int:
    return sum([int(await pool.fetchval(f"SELECT count(*) FROM {t}_default")) for t in TABLES])


async def _periods(pool: asyncpg.Pool) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {t: [] for t in TABLES}
    async with pool.acquire() as conn:
        for p in await list_partitions(conn):
            assert p.hi_us - p.lo_us == PERIOD_US and p.lo_us % PERIOD_US == 0
            out[p.parent].append(p.lo_us)
    return out


def _edge_events() -> list[Any]:
    rng = random.Random(9)
    out = []
    for b, boundary in enumerate(BOUNDARIES):
        for o, offset in enumerate(OFFSETS):
            key = ["c1", "c2"][(b + o) % 2]
            out.append(txn(f"e{b}-{o}", boundary + offset, key,
                           amount=Decimal(rng.randrange(-500, 5000)) / 100,
                           merchant={"id": f"m{rng.randrange(4)}"}))
    out.append(txn("late", BOUNDARIES[0] + 2 * HOUR_US, "c1", amount=3,
                   merchant={"id": "late"}))
    return out


async def test_v1_answers_are_exact_at_every_partition_edge_default_included(
    pool_factory: Any, tmp_path: Path
) -> None:
    policy, parsed = write_policy(tmp_path, KINDS)
    group = parsed["feature_groups"][0]
    events = _edge_events()
    root = tmp_path / "bus"
    # Two bus partitions: the events of one period reach the store in two orders.
    write_partitions(root, [lines(events[::2]), lines(events[1::2])])
    pool = await pool_factory()
    caught = {BOUNDARIES[1], BOUNDARIES[0]}  # these periods land in the defaults
    await _project(pool, root, policy)
    await _into_default(pool, caught)
    periods = await _periods(pool)
    assert all(d not in periods["fv_events"] for d in caught)
    assert {period_start(e.ts_us) for e in events} - caught <= set(periods["fv_events"])
    assert await _default_rows(pool) > 0
    as_ofs = edges(events, ["1h", "7d"]) | {b + o for b in BOUNDARIES for o in (-1, 0, 1)}
    keys = ["c1", "c2", "none"]
    async with running_server(pool, root) as (_, stub):
        assert_no_problems(await oracle_problems(stub, events, group, keys, as_ofs))
        before = [await get_features(stub, _request(group, keys, t)) for t in BOUNDARIES]
    # Maintenance moves the caught rows into their periods: same answers and hashes.
    async with pool.acquire() as conn:
        done = await maintain(conn)
        assert sorted(done.moved) == sorted(caught)
        assert await periods_in_defaults(conn) == []
    assert await _default_rows(pool) == 0
    assert caught <= set((await _periods(pool))["fv_sketches"])
    async with running_server(pool, root) as (_, stub):
        after = [await get_features(stub, _request(group, keys, t)) for t in BOUNDARIES]
        assert_no_problems(await oracle_problems(stub, events, group, keys,
                                                 sorted(as_ofs)[::5]))
    assert [a["snapshot"]["snapshot_hash"] for a in after] == [
        b["snapshot"]["snapshot_hash"] for b in before]
    await pool.close()


def _request(group: dict[str, Any], keys: list[str], as_of: int) -> dict[str, Any]:
    return request(group["key_type"], keys, [group], as_of)


def _v0_edge_stream(root: Path) -> list[TruthEvent]:
    """v0 events on, just before and just after period edges, in two partitions."""
    truth: list[TruthEvent] = []
    parts: list[list[str]] = [[], []]
    i = 0
    for boundary in BOUNDARIES:
        for offset in [*OFFSETS, -DAY + 1, 7 * DAY - 1]:
            for key in ("1", "2"):
                i += 1
                amount = Decimal(i * 7 % 23) / 4
                env = envelope(f"{i:032x}", boundary + offset, "A",
                               {"flow_id": int(key), "amount": str(amount)})
                parts[i % 2].append(json.dumps(env))
                truth.append(TruthEvent("A", key, boundary + offset, amount))
    d = root / TOPIC
    d.mkdir(parents=True, exist_ok=True)
    for p, part in enumerate(parts):
        (d / f"partition={p}.jsonl").write_text("".join(x + "\n" for x in part))
    return truth


async def test_v0_answers_are_exact_at_every_partition_edge_default_included(
    pool_factory: Any, tmp_path: Path
) -> None:
    root = tmp_path / "bus"
    truth = _v0_edge_stream(root)
    pool = await pool_factory()
    caught = {BOUNDARIES[2]}
    await _project(pool, root, default_policy())
    await _into_default(pool, caught)
    assert int(await pool.fetchval("SELECT count(*) FROM feature_events_default")) > 0
    as_ofs = sorted({t + d + o for t in {e.ts_us for e in truth}
                     for d in (0, HOUR_US, DAY, 7 * DAY) for o in (-1, 0, 1)}
                    | {b + o for b in BOUNDARIES for o in (-1, 0, 1)})

    async def problems(sample: list[int]) -> list[str]:
        found = []
        async with running_server(pool, root) as (_, stub):
            for as_of in sample:
                doc = await get_features(stub, keys_request("A", ["1", "2"], as_of))
                found += _answers_problems(doc, truth, ["1", "2"], as_of)
        return found

    assert_no_problems(await problems(as_ofs))
    async with pool.acquire() as conn:
        await maintain(conn)
    assert await _default_rows(pool) == 0
    assert_no_problems(await problems(as_ofs[::3]))
    await pool.close()


_REFUSE_DELETE = """
CREATE FUNCTION test_refuse_delete() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN RAISE EXCEPTION 'row DELETE on %', TG_TABLE_NAME; END $$;
""" + "".join(
    f"CREATE TRIGGER test_no_delete BEFORE DELETE ON {t}"
    " FOR EACH ROW EXECUTE FUNCTION test_refuse_delete();\n" for t in TABLES)


async def test_retention_drops_whole_periods_and_never_deletes_a_row(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    stream = generate(43, n_events=400, n_keys=3, n_partitions=1, runs=("A",),
                      span_us=20 * DAY, noise=False)
    watermark = max(e.ts_us for e in stream.truth)
    floor = watermark - 8 * DAY
    # Events on the floor and just after it, inside the floor's own period.
    for i, ts in enumerate((floor, floor + 1)):
        stream.partitions[0].append(json.dumps(envelope(
            f"f{i:031x}", ts, "A", {"flow_id": 1, "amount": "2.5"})))
        stream.truth.append(TruthEvent("A", "1", ts, Decimal("2.5")))
    stream.write(bus_root)
    await pool.execute(_REFUSE_DELETE)  # any row DELETE on these tables now fails
    await project_once(pool, bus_root, retention_days=8, batch_size=50)
    assert await pool.fetchval("SELECT retained_from_us FROM retention") == floor

    days = await _periods(pool)
    floor_day = period_start(floor)
    first_day = period_start(min(e.ts_us for e in stream.truth))
    for table in TABLES:
        # Every period ending at or below the floor is gone, the floor's stays.
        assert all(d + PERIOD_US > floor + 1 for d in days[table]), table
        assert floor_day in days[table], table
    assert first_day + PERIOD_US <= floor + 1  # the first period was droppable
    assert not await pool.fetchval(
        "SELECT count(*) FROM unnest($1::text[]) t"
        " WHERE to_regclass(ofp_time_partition_name(t, $2)) IS NOT NULL", list(TABLES), first_day)
    # Rows at or below the floor in the floor's period were not deleted: they
    # stay unread until their period is dropped.
    assert await pool.fetchval("SELECT count(*) FROM feature_events WHERE ts_us <= $1", floor)
    assert await pool.fetchval("SELECT min(ts_us) FROM event_dedupe") >= floor_day
    n_del = await pool.fetchval(
        "SELECT coalesce(sum(n_tup_del), 0) FROM pg_stat_user_tables"
        " WHERE relname LIKE ANY($1::text[])", [f"{t}%" for t in TABLES])
    assert n_del == 0
    assert await _default_rows(pool) == 0

    async with running_server(pool, bus_root) as (_, stub):
        for as_of in (floor + 7 * DAY, floor + 7 * DAY + 1, watermark):
            doc = await get_features(stub, keys_request("A", stream.keys, as_of))
            assert_no_problems(_answers_problems(doc, stream.truth, stream.keys, as_of))
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetFeatures(request_proto(keys_request("A", stream.keys,
                                                              floor + 7 * DAY - 1)))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE

    # Retention moves on: the next period goes, by DROP again.
    later = [json.dumps(envelope(f"a{i:031x}", watermark + (i + 1) * DAY, "A",
                                 {"flow_id": 2, "amount": "1"})) for i in range(3)]
    with (bus_root / TOPIC / "partition=0.jsonl").open("a") as f:
        f.write("".join(x + "\n" for x in later))
    await project_once(pool, bus_root, retention_days=8)
    floor2 = await pool.fetchval("SELECT retained_from_us FROM retention")
    assert floor2 == watermark + 3 * DAY - 8 * DAY
    assert min((await _periods(pool))["fv_tiles"]) == period_start(floor2)


async def test_concurrent_projectors_and_maintenance_create_each_period_once(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    stream = generate(47, n_events=600, n_keys=5, n_partitions=4, runs=("A",),
                      span_us=12 * DAY, noise=True)
    stream.write(bus_root)
    policy = default_policy()
    runs = [Projector(settings(bus_root, batch_size=9), pool, policy) for _ in range(3)]
    await asyncio.gather(*(p.run(once=True) for p in runs))
    # Several replicas at once, on periods nobody made yet (above the retention
    # floor, which the projectors raised) and on periods that exist.
    fresh = [period_start(BASE_US) + (i + 3) * PERIOD_US for i in range(4)]

    async def maintainer(i: int) -> set[int]:
        async with pool.acquire() as conn:
            await maintain(conn)
            return await ensure_periods(conn, [*fresh[i % 2:], period_start(BASE_US)],
                                        max_future_us=300 * SEC)

    ready = await asyncio.gather(*(maintainer(i) for i in range(5)))
    assert all(r >= set(fresh[2:]) | {period_start(BASE_US)} for r in ready)
    days = await _periods(pool)
    span = {period_start(e.ts_us) for e in stream.truth}
    for table in TABLES:
        assert len(days[table]) == len(set(days[table]))
        assert span | set(fresh) <= set(days[table])
    counters = await pool.fetch(
        "SELECT outcome, sum(n)::bigint AS n FROM outcome_counters GROUP BY outcome")
    assert {r["outcome"]: r["n"] for r in counters} == {
        k: v for k, v in stream.expected_outcomes.items() if v}
    async with running_server(pool, bus_root) as (_, stub):
        for as_of in sorted({e.ts_us for e in stream.truth})[::40]:
            doc = await get_features(stub, keys_request("A", stream.keys, as_of))
            assert_no_problems(_answers_problems(doc, stream.truth, stream.keys, as_of))


async def test_one_event_id_at_two_times_is_applied_once_across_partitions(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    """Copies of an id at times a week apart go to different partitions of the
    dedupe table; two bus partitions applied at once still apply one copy."""
    n = 60
    parts: list[list[str]] = [[], []]
    for i in range(n):
        for p, day in ((0, 1), (1, 8)):
            parts[p].append(json.dumps(envelope(
                f"{i:032x}", BASE_US + day * DAY + i * SEC, "A",
                {"flow_id": i % 3, "amount": "1"})))
    d = bus_root / TOPIC
    d.mkdir(parents=True)
    for p, part in enumerate(parts):
        (d / f"partition={p}.jsonl").write_text("".join(x + "\n" for x in part))
    await project_once(pool, bus_root, batch_size=5)
    rows = await pool.fetch("SELECT outcome, reason, sum(n)::bigint AS n FROM outcome_counters"
                            " GROUP BY outcome, reason")
    assert {(r["outcome"], r["reason"]): r["n"] for r in rows} == {
        ("APPLIED", ""): n, ("QUARANTINED", "payload_conflict"): n}
    assert await pool.fetchval("SELECT count(*) FROM event_dedupe") == n
    assert await pool.fetchval("SELECT count(DISTINCT event_id) FROM event_dedupe") == n
    assert await pool.fetchval("SELECT count(*) FROM feature_events") == n
    assert await pool.fetchval("SELECT count(*) FROM event_claims") == 0


async def test_a_claimed_id_makes_a_concurrent_claim_wait_for_commit(
    pool: asyncpg.Pool,
) -> None:
    """The claim's insert-and-delete keeps a concurrent insert of the same id
    waiting until the claiming transaction ends (what _CLAIM_IDS relies on)."""
    async with pool.acquire() as a, pool.acquire() as b:
        tx = a.transaction()
        await tx.start()
        await a.execute("INSERT INTO event_claims VALUES (1, 'x');"
                        " DELETE FROM event_claims WHERE scope_id = 1 AND event_id = 'x'")
        waiting = asyncio.ensure_future(b.execute(
            "INSERT INTO event_claims VALUES (1, 'x') ON CONFLICT DO NOTHING"))
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
            " AND datname = current_database()") == 1
        await tx.commit()
        assert await asyncio.wait_for(waiting, 5) == "INSERT 0 1"
        await b.execute("DELETE FROM event_claims")


async def test_a_copy_above_the_floor_of_an_id_held_below_it_is_applied(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    """A dedupe row at or below the floor counts as gone even while its period
    is kept: the outcome is the one of retention that deleted it."""
    watermark = BASE_US + 20 * DAY + 12 * HOUR_US
    floor = watermark - 8 * DAY
    d = bus_root / TOPIC
    d.mkdir(parents=True)
    first = [envelope("o" * 32, floor - 10, "A", {"flow_id": 1, "amount": "5"}),
             envelope("n" * 32, watermark, "A", {"flow_id": 1, "amount": "7"})]
    (d / "partition=0.jsonl").write_text("".join(json.dumps(x) + "\n" for x in first))
    await project_once(pool, bus_root, retention_days=8)
    assert await pool.fetchval("SELECT retained_from_us FROM retention") == floor
    assert await pool.fetchval("SELECT count(*) FROM event_dedupe") == 2  # its period stays
    again = [envelope("o" * 32, floor + 5, "A", {"flow_id": 1, "amount": "5"}),  # other time
             first[0]]  # the same copy again: below the floor
    with (d / "partition=0.jsonl").open("a") as f:
        f.write("".join(json.dumps(x) + "\n" for x in again))
    await project_once(pool, bus_root, retention_days=8)
    rows = await pool.fetch("SELECT outcome, reason, sum(n)::bigint AS n FROM outcome_counters"
                            " GROUP BY outcome, reason")
    assert {(r["outcome"], r["reason"]): r["n"] for r in rows} == {
        ("APPLIED", ""): 3, ("IGNORED", "below_retention_floor"): 1}


def _answers_problems(doc: dict[str, Any], truth: list[TruthEvent], keys: list[str],
                      as_of: int) -> list[str]:
    found = []
    for key in keys:
        want = brute_force(truth, "A", key, as_of)
        got = doc["snapshot"]["features"].get(f"flow_id:{key}", {}).get("core_features")
        if got is not None:
            got = {k: int(v) if isinstance(v, float) else v for k, v in got.items()}
        if got != want:
            found.append(f"{key} at {as_of}: got {got} want {want}")
    return found


@hsettings(max_examples=6,
           suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(offsets=st.lists(st.sampled_from([-7 * DAY, -DAY, -HOUR_US, -MIN, -1, 0, 1, MIN,
                                         HOUR_US, DAY, 7 * DAY - 1]),
                        min_size=1, max_size=8),
       edge=st.integers(min_value=1, max_value=3),
       as_of_offset=st.sampled_from([-1, 0, 1, HOUR_US, HOUR_US - 1, 7 * DAY, 7 * DAY - 1,
                                     7 * DAY + 1, DAY]))
async def test_any_events_around_an_edge_answer_as_the_oracle(
    pool_factory: Any, tmp_path_factory: Any, offsets: list[int], edge: int, as_of_offset: int
) -> None:
    """Class test: events anywhere around a partition edge, in two bus partitions,
    answered at as-of times on and around the edge and the window edges."""
    boundary = period_start(BASE_US) + edge * PERIOD_US
    root = tmp_path_factory.mktemp("bus")
    truth = [TruthEvent("A", str(1 + i % 2), boundary + o, Decimal(i + 1) / 4)
             for i, o in enumerate(offsets)]
    parts: list[list[str]] = [[], []]
    for i, e in enumerate(truth):
        parts[i % 2].append(json.dumps(envelope(f"{edge}{i:031x}", e.ts_us, "A", {
            "flow_id": int(e.key), "amount": str(e.amount)})))
    d = root / TOPIC
    d.mkdir(parents=True)
    for p, part in enumerate(parts):
        (d / f"partition={p}.jsonl").write_text("".join(x + "\n" for x in part))
    pool = await pool_factory()
    try:
        await project_once(pool, root, batch_size=3)
        assert await _default_rows(pool) == 0
        async with running_server(pool, root) as (_, stub):
            for as_of in (boundary + as_of_offset, boundary + as_of_offset - 7 * DAY,
                          max(e.ts_us for e in truth) + as_of_offset):
                doc = await get_features(stub, keys_request("A", ["1", "2"], as_of))
                assert_no_problems(_answers_problems(doc, truth, ["1", "2"], as_of))
    finally:
        await pool.close()


async def test_partition_ddl_waits_briefly_behind_a_long_read_and_retries_later(
    pool: asyncpg.Pool,
) -> None:
    """A read holding its table keeps a new partition waiting at most lock_timeout
    per attempt: other reads are never queued behind the DDL for long, the
    upkeep reports the period busy, and it is created once the read ends."""
    start = period_start(BASE_US) + 5 * PERIOD_US
    async with pool.acquire() as reader, pool.acquire() as ddl, pool.acquire() as other:
        tx = reader.transaction()
        await tx.start()
        await reader.fetchval("SELECT count(*) FROM fv_events")  # holds its locks
        t0 = asyncio.get_running_loop().time()
        attempt = asyncio.ensure_future(create_period(ddl, start, attempts=3))
        await asyncio.sleep(0.02)
        # Another read while the DDL waits: queued behind its exclusive lock
        # request for one lock_timeout at most, never until the long read ends.
        assert await asyncio.wait_for(other.fetchval("SELECT count(*) FROM fv_events"), 2) == 0
        assert not await attempt
        assert asyncio.get_running_loop().time() - t0 < 5
        await tx.commit()
        assert await create_period(ddl, start, attempts=2)
    async with pool.acquire() as conn:
        assert start in {p.lo_us for p in await list_partitions(conn)}
