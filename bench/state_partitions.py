"""State size over time partitions (migration 0009): a realistic state, served, and
retention churning through many partition periods.

`state_realistic`: the state of 1,000,000 keys over 30 days at 1,000 events/s
(2,592,000,000 events), generated at reduced scale and extrapolated. Reduced
scale keeps each key's event density (1,000 / 1,000,000 events/s per key =
86.4 events a day), so every per-key and per-event cost (rows per event, tiles
per key and hour, index entries) is the full scale's, and only the number of
keys shrinks: `realistic_keys` keys x 2,592 events each over 30 days. The
figure is the p50 of a 1-key request over that state (30 days in weekly time
partitions, the server's plans holding every partition) against the same
request over a one-event-per-key state; the notes hold the bytes per event and
per key of every table and the extrapolation.

`retention_churn`: event time advances `churn_days_per_run` days per
`ofp-projector --once` run (each ends with a prune and the partition
maintenance) for `churn_s` seconds with an 8-day horizon, so retention drops a
weekly partition every few runs; the figure is the size of the time-
partitioned tables in the last quarter of the runs against the first quarter
after the first drop (flat: ratio near 1), with dead tuples and autovacuum
counts in the notes.
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import asyncpg

from . import policies, procs, workload
from .report import Figure, fmt, now_utc

if TYPE_CHECKING:
    from .scenarios import Context

MB = 1024 * 1024
DAY_US = 24 * workload.HOUR_US
FULL_KEYS = 1_000_000
FULL_EPS = 1_000
DAYS = 30
PER_KEY = FULL_EPS * 86_400 * DAYS // FULL_KEYS  # 2,592 events per key over 30 days
TIME_TABLES = ("feature_events", "feature_tiles", "event_dedupe", "fv_events", "fv_tiles",
               "fv_distinct", "fv_sketches")
# Per table: (bytes incl. indexes and TOAST, rows, partitions).
Sizes = dict[str, tuple[int, int, int]]
OTHER_TABLES = ("event_claims", "checkpoints", "checkpoint_commits", "run_scopes", "quarantine",
                "outcome_counters")


def realistic_events(n_keys: int, *, seed: int = 7) -> Iterator[tuple[int, int]]:
    """`n_keys` x PER_KEY events over the DAYS days ending at BASE_US, in time order,
    keys drawn at random: each key's density is the full-scale one."""
    rng = random.Random(seed)
    n = n_keys * PER_KEY
    span = DAYS * DAY_US
    step = span / n
    start = workload.BASE_US - span + 1
    for i in range(n):
        yield 1 + rng.randrange(n_keys), start + int(i * step)


async def table_sizes(dsn: str) -> Sizes:
    """(bytes incl. indexes and TOAST, rows, partitions) per table, partitions summed."""
    conn = await asyncpg.connect(dsn)
    try:
        out: Sizes = {}
        for t in (*TIME_TABLES, *OTHER_TABLES):
            row = await conn.fetchrow(
                "SELECT coalesce(sum(pg_total_relation_size(relid)), 0)::bigint AS b,"
                " count(*) FILTER (WHERE isleaf) AS parts FROM pg_partition_tree($1::regclass)",
                t)
            rows = await conn.fetchval(f"SELECT count(*) FROM {t}")
            assert row is not None
            out[t] = (int(row["b"]), int(rows), int(row["parts"]))
        return out
    finally:
        await conn.close()


def _size_notes(sizes: Sizes, events: int, keys: int) -> str:
    total = sum(b for b, _, _ in sizes.values())
    per_table = "; ".join(
        f"{t} {b / events:.0f} B/event ({r / events:.2f} rows/event, {p} partitions)"
        for t, (b, r, p) in sizes.items() if b)
    full_events = FULL_EPS * 86_400 * DAYS
    return (f"{events:,} events over {keys:,} keys ({PER_KEY:,} per key in {DAYS} days):"
            f" {total / MB:.1f} MB in all = {total / events:.0f} B per event,"
            f" {total / keys / 1024:.0f} KiB per key. Per table: {per_table}."
            f" Extrapolated to {FULL_KEYS:,} keys x {DAYS} days at {FULL_EPS:,} events/s"
            f" ({full_events:,} events): {total / events * full_events / 1024**4:.2f} TiB,"
            " plus up to one week while the oldest partition waits to be dropped (x 37/30)")


async def state_realistic(ctx: Context) -> None:
    from .scenarios import SMALL_STATE_KEYS, _clients_for, body_file, open_loop, served, small_state

    s = ctx.sizes
    keys = s.realistic_keys
    fig = Figure("state_realistic", f"p50 of a 1-key request over a realistic state ({keys:,}"
                 f" keys x {DAYS} days at the full-scale density, weekly time partitions)"
                 f" vs {SMALL_STATE_KEYS:,} one-event keys", "ms", "ratio <= 1.2",
                 sizes=f"{keys * PER_KEY:,} events, {keys:,} keys, {fmt(s.state_rate)} req/s,"
                 f" {s.duration_s:g} s per run")
    small_p50: list[float] = []
    clients = _clients_for(s.state_rate, 4)
    key = [1]
    async with (
        served(ctx, "state_realistic", lambda: realistic_events(keys),
               partitions=s.ingest_partitions) as big,
        served(ctx, "state_small", small_state) as small,
    ):
        sizes = await table_sizes(big.dsn)
        body = body_file(ctx, key)
        for _ in range(s.repeats):
            r = await open_loop(ctx, small.port, body, key, rate=s.state_rate, clients=clients,
                                proc=small.server)
            small_p50.append(r.p50_ms)
            r = await open_loop(ctx, big.port, body, key, rate=s.state_rate, clients=clients,
                                proc=big.server)
            fig.runs.append(r.p50_ms)
            fig.command = r.command.replace(f":{big.port}/", ":PORT/")
    rich_events, rich_s, rich_sizes = await _rich_sample(ctx, s.realistic_rich_flows)
    fig.reference_value = statistics.median(small_p50)
    fig.reference = (f"{SMALL_STATE_KEYS:,} one-event keys: p50 {fmt(fig.reference_value)} ms"
                     f" (runs: {', '.join(fmt(x) for x in small_p50)})")
    fig.met = fig.ratio is not None and fig.ratio <= 1.2
    fig.notes = (f"Default policy: ingest by `ofp-projector --once`"
                 f" {big.events / big.ingest_s:,.0f} events/s."
                 f" {_size_notes(sizes, big.events, keys)}. Rich v1 policy (31"
                 f" features, 3 key types), {s.realistic_rich_flows} flows at the same density,"
                 f" ingest {rich_events / rich_s:,.0f} events/s:"
                 f" {_size_notes(rich_sizes, rich_events, s.realistic_rich_flows)}")
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


async def _rich_sample(ctx: Context, flows: int) -> tuple[int, float, Sizes]:
    """The realistic density under the rich v1 policy: (events, ingest seconds, sizes)."""
    name, dsn = await ctx.pg.create("state_rich")
    bus = ctx.path("bus-state_rich")
    try:
        n = await asyncio.to_thread(workload.write_bus, bus, "a002", realistic_events(flows),
                                    rich=True)
        took = await asyncio.to_thread(
            procs.run_projector_once, dsn, bus, ctx.path("projector-rich").with_suffix(".log"),
            features_path=policies.RICH.path(ctx.work))
        return n, took, await table_sizes(dsn)
    finally:
        await ctx.pg.drop(name)
        shutil.rmtree(bus, ignore_errors=True)


def _churn_events(first_us: int, days: int, per_day: int, keys: int,
                  rng: random.Random) -> Iterator[tuple[int, int]]:
    step = DAY_US // per_day
    for i in range(days * per_day):
        yield 1 + rng.randrange(keys), first_us + i * step


async def _dead_and_vacuums(dsn: str) -> tuple[int, int, int]:
    """(dead tuples now, autovacuum runs, autoanalyze runs) over OFP's tables."""
    conn = await asyncpg.connect(dsn)
    try:
        row = await conn.fetchrow(
            "SELECT coalesce(sum(n_dead_tup), 0)::bigint, coalesce(sum(autovacuum_count), 0)"
            "::bigint, coalesce(sum(autoanalyze_count), 0)::bigint FROM pg_stat_user_tables")
        assert row is not None
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        await conn.close()


async def retention_churn(ctx: Context) -> None:
    s = ctx.sizes
    name, dsn = await ctx.pg.create("churn")
    bus = ctx.path("bus-churn")
    rng = random.Random(3)
    # Event time starts two years back and advances `churn_days_per_run` a run.
    first_us = (workload.BASE_US - 730 * DAY_US) // DAY_US * DAY_US
    per_day, n_keys = s.churn_events_per_day, 1_000
    samples: list[tuple[int, int, int, float]] = []  # (run, bytes, partitions, seconds)
    dead_max = 0
    t_end = time.monotonic() + s.churn_s
    run = 0
    seq = 0
    try:
        while time.monotonic() < t_end:
            day0 = first_us + run * s.churn_days_per_run * DAY_US
            n = await asyncio.to_thread(
                workload.write_bus, bus, "c001",
                _churn_events(day0, s.churn_days_per_run, per_day, n_keys, rng),
                first_seq=seq)
            seq += n
            t0 = time.perf_counter()
            await asyncio.to_thread(procs.run_projector_once, dsn, bus,
                                    ctx.path("projector-churn").with_suffix(".log"),
                                    retention_days=8)
            took = time.perf_counter() - t0
            sizes = await table_sizes(dsn)
            size = sum(sizes[t][0] for t in TIME_TABLES)
            dead, _, _ = await _dead_and_vacuums(dsn)
            dead_max = max(dead_max, dead)
            samples.append((run, size, sizes["feature_events"][2], took))
            run += 1
        _, vacuums, analyzes = await _dead_and_vacuums(dsn)
        claims = (await table_sizes(dsn))["event_claims"][0]
    finally:
        await ctx.pg.drop(name)
        shutil.rmtree(bus, ignore_errors=True)
    # Steady state: after the first drop (partitions stop growing).
    peak_parts = max(p for _, _, p, _ in samples)
    steady = [x for x in samples if x[0] >= next(
        (r for r, _, p, _ in samples if p < peak_parts), len(samples))] or samples
    q = max(1, len(steady) // 4)
    first_q = statistics.median(b for _, b, _, _ in steady[:q])
    last_q = statistics.median(b for _, b, _, _ in steady[-q:])
    days = run * s.churn_days_per_run
    fig = Figure("retention_churn", f"size of the time-partitioned tables under retention churn"
                 f" ({days} days of event time in {s.churn_s} s, 8-day horizon, weekly"
                 " partitions): last quarter vs first quarter after the first drop", "MB",
                 "ratio <= 1.2 (flat)",
                 sizes=f"{run} projector runs x {s.churn_days_per_run} days x {per_day:,}"
                 f" events/day over {n_keys:,} keys")
    fig.runs = [last_q / MB]
    fig.reference_value = first_q / MB
    fig.reference = f"first quarter {first_q / MB:.1f} MB"
    fig.met = fig.ratio is not None and fig.ratio <= 1.2
    fig.command = (f"ofp-projector --once per run, OFP_RETENTION_DAYS=8, {s.churn_s} s;"
                   " python -m bench --only retention_churn")
    fig.notes = (f"partitions per table: at most {peak_parts} (incl. the default), sizes per"
                 f" run (MB): {', '.join(f'{b / MB:.1f}' for _, b, _, _ in samples)};"
                 f" run time min/median/max {min(x[3] for x in samples):.1f}/"
                 f"{statistics.median(x[3] for x in samples):.1f}/"
                 f"{max(x[3] for x in samples):.1f} s; dead tuples at most {dead_max:,} over"
                 f" all tables; {vacuums} autovacuum and {analyzes} autoanalyze runs;"
                 f" event_claims {claims / 1024:.0f} KiB at the end")
    fig.measured_at = now_utc()
    ctx.figures.append(fig)
