"""The read path: values, basis, policy and retention in ONE statement.

A single SQL statement sees a single MVCC snapshot, so the feature values, the
checkpoints they are reported against and the active policy can never come
from different moments, and the read costs one round trip. One statement may
answer several requests at once (`read_snapshots`, used by the server's
`CoalescingReader`): each still gets one consistent snapshot, taken after it
arrived.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import Any

import asyncpg

from ofp.features import Intermediate
from ofp.model import FeatureProbe, Pins, ReadProbes, SnapshotRow
from ofp.store import sketches
from ofp.windows import DAY_US, HOUR_US, MINUTE_US, WindowProbe

# The watermark of a stream's checkpoint rows (contract 4.3 as amended): the least
# event-time high mark over OPEN partitions that hold a valid record. A closed
# partition (a Kinesis parent after a reshard) receives nothing more, so its
# last high mark must not hold the watermark back; when no open partition
# holds a record yet (right after a split, or every shard closed), the
# stream's history is complete up to the largest closed high mark. min/max
# skip NULLs, so partitions without a valid record never count.
WATERMARK_EXPR = (
    "coalesce(min(max_event_us) FILTER (WHERE NOT closed),"
    " max(max_event_us) FILTER (WHERE closed))"
)

# One (cell, window) value: whole tiles plus the two exact edges read from the
# events (the window arithmetic of ofp.windows); both snapshot statements use it.
_VALS_CTE = """vals AS (
    SELECT p.cell, p.win,
           (coalesce(t.n, 0) + e1.n + e2.n)::bigint AS n,
           coalesce(t.s, 0) + coalesce(e1.s, 0) + coalesce(e2.s, 0) AS s
    FROM probe p
    CROSS JOIN LATERAL (
        SELECT sum(event_count) AS n, sum(amount_sum) AS s FROM feature_tiles t
        WHERE t.scope_id = p.scope_id AND t.group_id = p.group_id AND t.key_id = p.key_id
          AND t.tile_start_us >= p.tile_from_us AND t.tile_start_us < p.tile_to_us) t
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, sum(amount) AS s FROM feature_events e
        WHERE e.scope_id = p.scope_id AND e.group_id = p.group_id AND e.key_id = p.key_id
          AND e.ts_us > p.lo_us AND e.ts_us < p.edge_lo_end_us) e1
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, sum(amount) AS s FROM feature_events e
        WHERE e.scope_id = p.scope_id AND e.group_id = p.group_id AND e.key_id = p.key_id
          AND e.ts_us >= p.edge_hi_start_us AND e.ts_us <= p.hi_us) e2
),"""

SNAPSHOTS_SQL = """
-- The run scope of each distinct pin set of the batch (NULL: never seen).
WITH ps AS (
    SELECT (u.ord - 1)::integer AS ps, s.scope_id
    FROM unnest($2::text[], $3::text[], $4::text[], $5::text[], $6::text[], $7::numeric[])
        WITH ORDINALITY AS u(platform_run_id, scenario_run_id, scenario_id,
                             manifest_fingerprint, parameter_hash, seed, ord)
    LEFT JOIN run_scopes s
        USING (platform_run_id, scenario_run_id, scenario_id, manifest_fingerprint,
               parameter_hash, seed)
),
-- The distinct windows of each request: their bounds depend only on (as-of,
-- duration), so every key of a request shares them and the parameters stay small.
win AS (
    SELECT (w.ord - 1)::integer AS win, w.lo_us, w.hi_us, w.edge_lo_end_us, w.tile_from_us,
           w.tile_to_us, w.edge_hi_start_us
    FROM unnest($8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],
                $13::bigint[])
        WITH ORDINALITY AS w(lo_us, hi_us, edge_lo_end_us, tile_from_us, tile_to_us,
                             edge_hi_start_us, ord)
),
-- Each request's pin set and as-of.
req AS (
    SELECT (r.ord - 1)::integer AS req, r.ps, r.as_of_us
    FROM unnest($14::integer[], $15::bigint[]) WITH ORDINALITY AS r(ps, as_of_us, ord)
),
-- One cell per (request, group, key), with its request's scope and as-of.
cell AS (
    SELECT (c.ord - 1)::integer AS cell, c.req, p.scope_id, c.group_id, c.key_id, r.as_of_us
    FROM unnest($16::integer[], $17::smallint[], $18::text[])
        WITH ORDINALITY AS c(req, group_id, key_id, ord)
    JOIN req r ON r.req = c.req
    JOIN ps p ON p.ps = r.ps
),
-- Which windows each (request, group) has.
probe AS (
    SELECT c.cell, c.scope_id, c.group_id, c.key_id, w.*
    FROM unnest($19::integer[], $20::smallint[], $21::integer[]) AS gw(req, group_id, win)
    JOIN cell c ON c.req = gw.req AND c.group_id = gw.group_id
    JOIN win w ON w.win = gw.win
),
{vals}
-- The latest event of each cell within its group's longest window, (lo, as-of].
lasts AS (
    SELECT c.cell, (
        SELECT max(e.ts_us) FROM feature_events e
        WHERE e.scope_id = c.scope_id AND e.group_id = c.group_id AND e.key_id = c.key_id
          AND e.ts_us > lg.lo_us AND e.ts_us <= c.as_of_us) AS last_us
    FROM cell c
    JOIN unnest($22::integer[], $23::smallint[], $24::bigint[]) AS lg(req, group_id, lo_us)
        ON lg.req = c.req AND lg.group_id = c.group_id
),
cp AS (
    SELECT partition, offset_kind, next_offset, max_event_us, closed
    FROM checkpoints WHERE stream = $1
)
SELECT pol.policy_id, pol.revision, pol.content_digest, pol.run_config_digest,
       (SELECT epoch FROM active_policy) AS epoch,
       (SELECT array_agg(scope_id ORDER BY ps) FROM ps) AS scope_ids,
       (SELECT retained_from_us FROM retention WHERE stream = $1) AS retained_from_us,
       (SELECT array_agg(DISTINCT offset_kind) FROM cp) AS offset_kinds,
       (SELECT array_agg(partition ORDER BY partition) FROM cp) AS partitions,
       (SELECT array_agg(next_offset::text ORDER BY partition) FROM cp) AS offsets,
       (SELECT {watermark} FROM cp) AS watermark_us,
       (SELECT array_agg(cell ORDER BY cell, win) FROM vals) AS val_cells,
       (SELECT array_agg(win ORDER BY cell, win) FROM vals) AS val_wins,
       (SELECT array_agg(n ORDER BY cell, win) FROM vals) AS val_counts,
       -- trim_scale(): the canonical decimal text (no trailing fractional
       -- zeros; numeric text never has an exponent), made by the database.
       (SELECT array_agg(trim_scale(s)::text ORDER BY cell, win) FROM vals) AS val_sums,
       (SELECT array_agg(cell ORDER BY cell) FROM lasts) AS last_cells,
       (SELECT array_agg(last_us ORDER BY cell) FROM lasts) AS last_us
-- The revision the request was planned with ($25, $26), or the active one.
FROM policies pol
WHERE (pol.policy_id, pol.revision)
    = (SELECT coalesce($25, a.policy_id), coalesce($26, a.revision) FROM active_policy a)
""".replace("{watermark}", WATERMARK_EXPR).replace("{vals}", _VALS_CTE)

# One request alone (the common case when requests do not overlap): the same
# read as SNAPSHOTS_SQL with the pin set and as-of as scalars, so PostgreSQL
# neither unnests nor joins the batch's request and pin-set arrays, and the
# driver encodes 17 arrays fewer. Same values, same basis, same snapshot rule.
SNAPSHOT_ONE_SQL = """
WITH sc AS (
    SELECT scope_id FROM run_scopes
    WHERE platform_run_id = $2 AND scenario_run_id = $3 AND scenario_id = $4
      AND manifest_fingerprint = $5 AND parameter_hash = $6 AND seed = $7::numeric
),
win AS (
    SELECT (w.ord - 1)::integer AS win, w.lo_us, w.hi_us, w.edge_lo_end_us, w.tile_from_us,
           w.tile_to_us, w.edge_hi_start_us
    FROM unnest($8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],
                $13::bigint[])
        WITH ORDINALITY AS w(lo_us, hi_us, edge_lo_end_us, tile_from_us, tile_to_us,
                             edge_hi_start_us, ord)
),
cell AS (
    SELECT (c.ord - 1)::integer AS cell, sc.scope_id, c.group_id, c.key_id
    FROM unnest($15::smallint[], $16::text[]) WITH ORDINALITY AS c(group_id, key_id, ord)
    LEFT JOIN sc ON true  -- a pin set never seen: cells with no scope, as in the batch form
),
probe AS (
    SELECT c.cell, c.scope_id, c.group_id, c.key_id, w.*
    FROM unnest($17::smallint[], $18::integer[]) AS gw(group_id, win)
    JOIN cell c ON c.group_id = gw.group_id
    JOIN win w ON w.win = gw.win
),
{vals}
lasts AS (
    SELECT c.cell, (
        SELECT max(e.ts_us) FROM feature_events e
        WHERE e.scope_id = c.scope_id AND e.group_id = c.group_id AND e.key_id = c.key_id
          AND e.ts_us > lg.lo_us AND e.ts_us <= $14) AS last_us
    FROM cell c
    JOIN unnest($19::smallint[], $20::bigint[]) AS lg(group_id, lo_us)
        ON lg.group_id = c.group_id
),
cp AS (
    SELECT partition, offset_kind, next_offset, max_event_us, closed
    FROM checkpoints WHERE stream = $1
)
SELECT pol.policy_id, pol.revision, pol.content_digest, pol.run_config_digest,
       a.epoch, (SELECT scope_id FROM sc) AS scope_id,
       (SELECT retained_from_us FROM retention WHERE stream = $1) AS retained_from_us,
       c.offset_kinds, c.partitions, c.offsets, c.watermark_us,
       v.val_cells, v.val_wins, v.val_counts, v.val_sums, l.last_cells, l.last_us
FROM active_policy a
JOIN policies pol ON (pol.policy_id, pol.revision)
    = (coalesce($21, a.policy_id), coalesce($22, a.revision))
CROSS JOIN (
    SELECT array_agg(DISTINCT offset_kind) AS offset_kinds,
           array_agg(partition ORDER BY partition) AS partitions,
           array_agg(next_offset::text ORDER BY partition) AS offsets,
           {watermark} AS watermark_us
    FROM cp) c
CROSS JOIN (
    SELECT array_agg(cell ORDER BY cell, win) AS val_cells,
           array_agg(win ORDER BY cell, win) AS val_wins,
           array_agg(n ORDER BY cell, win) AS val_counts,
           array_agg(trim_scale(s)::text ORDER BY cell, win) AS val_sums
    FROM vals) v
CROSS JOIN (
    SELECT array_agg(cell ORDER BY cell) AS last_cells,
           array_agg(last_us ORDER BY cell) AS last_us
    FROM lasts) l
""".replace("{watermark}", WATERMARK_EXPR).replace("{vals}", _VALS_CTE)


async def read_snapshot(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    stream: str,
    pins: Pins,
    probes: ReadProbes,
) -> SnapshotRow | None:
    """One request's read; None when no policy is active yet."""
    rows = await read_snapshots(conn, stream=stream, reads=[(pins, probes)])
    return None if rows is None else rows[0]


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where each request's pin set, cells and windows sit in the statement."""

    r_ps: list[int]
    c_req: list[int]
    cell_base: list[int]
    win_base: list[int]


def snapshot_args(stream: str, reads: Sequence[tuple[Pins, ReadProbes]],
                  revision: tuple[str, str] | None = None) -> tuple[list[Any], _Layout]:
    """`SNAPSHOTS_SQL`'s parameters for `reads`, and how to split its answer back."""
    pin_sets: dict[Pins, int] = {}
    r_ps: list[int] = []
    r_as_of: list[int] = []
    windows: list[WindowProbe] = []
    win_base: list[int] = []
    cell_base: list[int] = []
    c_req: list[int] = []
    c_group: list[int] = []
    c_key: list[str] = []
    gw_req: list[int] = []
    gw_group: list[int] = []
    gw_win: list[int] = []
    lg_req: list[int] = []
    lg_group: list[int] = []
    lg_lo: list[int] = []
    for r, (pins, probes) in enumerate(reads):
        r_ps.append(pin_sets.setdefault(pins, len(pin_sets)))
        r_as_of.append(probes.as_of_us)
        w0 = len(windows)
        win_base.append(w0)
        cell_base.append(len(c_key))
        windows.extend(probes.windows)
        c_req.extend([r] * len(probes.cells))
        c_group.extend(g for g, _ in probes.cells)
        c_key.extend(k for _, k in probes.cells)
        gw_req.extend([r] * len(probes.group_windows))
        gw_group.extend(g for g, _ in probes.group_windows)
        gw_win.extend(w0 + w for _, w in probes.group_windows)
        lg_req.extend([r] * len(probes.last_from))
        lg_group.extend(g for g, _ in probes.last_from)
        lg_lo.extend(lo for _, lo in probes.last_from)
    pin_list = list(pin_sets)
    args: list[Any] = [
        stream,
        [p[0] for p in pin_list],
        [p[1] for p in pin_list],
        [p[2] for p in pin_list],
        [p[3] for p in pin_list],
        [p[4] for p in pin_list],
        [Decimal(p[5]) for p in pin_list],
        [x.lo_us for x in windows],
        [x.hi_us for x in windows],
        [x.edge_lo_end_us for x in windows],
        [x.tile_from_us for x in windows],
        [x.tile_to_us for x in windows],
        [x.edge_hi_start_us for x in windows],
        r_ps,
        r_as_of,
        c_req,
        c_group,
        c_key,
        gw_req,
        gw_group,
        gw_win,
        lg_req,
        lg_group,
        lg_lo,
        None if revision is None else revision[0],
        None if revision is None else revision[1],
        min([x.lo_us for x in windows] + lg_lo, default=0),
        max(r_as_of, default=0),
    ]
    return args, _Layout(r_ps, c_req, cell_base, win_base)


async def read_snapshots(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    stream: str,
    reads: Sequence[tuple[Pins, ReadProbes]],
    revision: tuple[str, str] | None = None,
) -> list[SnapshotRow] | None:
    """Several requests' reads in ONE statement, so in one MVCC snapshot.

    Each request gets its own row, with its own cell and window numbering, as
    if it had been read alone; the policy, checkpoints and retention floor are
    the statement's, shared. None when no policy is active yet. Reads of v1
    features add a second statement in the same repeatable-read transaction,
    so they see the same snapshot. `revision` (policy_id, revision) is the
    revision the reads were planned with; None: the active one.
    """
    if not any(p.feature_probes for _, p in reads):
        return await _read_snapshots(conn, stream=stream, reads=reads, revision=revision)
    if isinstance(conn, asyncpg.Pool):
        async with conn.acquire() as c:
            return await _read_with_features(c, stream=stream, reads=reads, revision=revision)
    return await _read_with_features(conn, stream=stream, reads=reads, revision=revision)


async def _read_with_features(
    conn: Any, *, stream: str, reads: Sequence[tuple[Pins, ReadProbes]],
    revision: tuple[str, str] | None,
) -> list[SnapshotRow] | None:
    async with conn.transaction(isolation="repeatable_read", readonly=True):
        rows = await _read_snapshots(conn, stream=stream, reads=reads, revision=revision)
        if rows is None:
            return None
        owner: list[tuple[int, int]] = []  # (read, probe index) of each statement probe
        scopes: list[int] = []
        probes: list[FeatureProbe] = []
        for r, (_, p) in enumerate(reads):
            scope_id = rows[r].scope_id
            if scope_id is None:
                continue
            for i, probe in enumerate(p.feature_probes):
                owner.append((r, i))
                scopes.append(scope_id)
                probes.append(probe)
        found: list[dict[int, Intermediate]] = [{} for _ in reads]
        if probes:
            w = [x.window for x in probes]
            results = await conn.fetch(
                FEATURE_VALUES_SQL,
                scopes,
                [x.group_id for x in probes],
                [x.key_id for x in probes],
                [x.feature for x in probes],
                [x.lo_us for x in w],
                [x.hi_us for x in w],
                [x.m0_us for x in w],
                [x.h0_us for x in w],
                [x.h1_us for x in w],
                [x.m1_us for x in w],
                [x.need_first for x in probes],
                [x.need_last for x in probes],
                [x.last_n for x in probes],
                [x.distinct for x in probes],
                [x.sketch for x in probes],
                [x.aggregate for x in probes],
                [x.d0_us for x in w],
                [x.d1_us for x in w],
                min(x.lo_us for x in w),
                max(x.hi_us for x in w),
            )
            for res in results:
                r, i = owner[int(res["i"]) - 1]
                found[r][i] = Intermediate(
                    n=int(res["n"] or 0), s=res["s"], s2=res["s2"], mn=res["mn"], mx=res["mx"],
                    first_val=res["first_val"], last_ts=res["last_ts"],
                    last_val=res["last_val"], last_values=tuple(res["last_values"] or ()),
                    distinct=(sketches.estimate([bytes(b) for b in res["sketches"] or ()],
                                                res["edge_values"] or ())
                              if probes[int(res["i"]) - 1].sketch
                              else int(res["distinct_n"] or 0)),
                )
    return [replace(row, feature_values=found[r]) for r, row in enumerate(rows)]


def _feature_sources(select_tiles: str, select_events: str, *,
                     earliest: bool | None = None, tiles_table: str = "fv_tiles",
                     days: bool = False) -> str:
    """UNION ALL of a probe's hour tiles, minute tiles and edge events (p: the probe);
    with `days`, day tiles for the whole days and hour tiles around them."""
    key = ("scope_id = p.sc AND {a}.group_id = p.g AND {a}.key_id = p.k"
           " AND {a}.feature = p.f")
    tiles = f"FROM {tiles_table} t WHERE t.{key.format(a='t')}"
    events = f"FROM fv_events e WHERE e.{key.format(a='e')}"
    hours = [("p.h0", "p.h1")]
    if days:
        hours = [("p.h0", "p.d0"), ("p.d1", "p.h1")]
    parts = [
        *(f"SELECT {select_tiles} {tiles} AND t.tile_us = {DAY_US}"
          " AND t.tile_start_us >= p.d0 AND t.tile_start_us < p.d1" for _ in range(days)),
        *(f"SELECT {select_tiles} {tiles} AND t.tile_us = {HOUR_US}"
          f" AND t.tile_start_us >= {a} AND t.tile_start_us < {b}" for a, b in hours),
        f"SELECT {select_tiles} {tiles} AND t.tile_us = {MINUTE_US}"
        " AND t.tile_start_us >= p.m0 AND t.tile_start_us < p.h0",
        f"SELECT {select_tiles} {tiles} AND t.tile_us = {MINUTE_US}"
        " AND t.tile_start_us >= p.h1 AND t.tile_start_us < p.m1",
        f"SELECT {select_events} {events} AND e.ts_us > p.lo AND e.ts_us < p.m0",
        f"SELECT {select_events} {events} AND e.ts_us >= p.m1 AND e.ts_us <= p.hi",
    ]
    if earliest is not None:
        # Only the earliest (or latest) candidate of each source.
        d = "" if earliest else " DESC"
        parts = [f"({x} ORDER BY t.tile_start_us{d} LIMIT 1)" for x in parts[:-2]] + [
            f"({x} ORDER BY e.ts_us{d}, e.event_id{d} LIMIT 1)" for x in parts[-2:]]
    return " UNION ALL ".join(parts)


def _sketch_sources() -> str:
    """UNION ALL of an approx_distinct_count probe's sketches and edge values.

    Day sketches for the window's whole days, hour sketches for its whole hours
    around them, minute sketches and edge events as for every kind: a 7-day
    window unites at most 6 + 46 + 118 sketches. A day without a day sketch
    (state written before migration 0008 added them) is read from its hour
    sketches; a day sketch is only ever created whole
    (`ofp.store.writes._new_day_sketches`), so either is the whole day. The CASE
    reads the hours only for such a day: one index probe per whole day otherwise.
    """
    key = "t.scope_id = p.sc AND t.group_id = p.g AND t.key_id = p.k AND t.feature = p.f"
    tiles = f"SELECT t.sketch, NULL::text FROM fv_sketches t WHERE {key}"
    events = f"SELECT NULL::bytea, e.val FROM fv_events e WHERE {key.replace('t.', 'e.')}"
    return " UNION ALL ".join([
        f"SELECT x.sketch, NULL::text FROM generate_series(p.d0, p.d1 - {DAY_US},"
        f" {DAY_US}::bigint) AS d(start)"
        f" LEFT JOIN fv_sketches ds ON {key.replace('t.', 'ds.')} AND ds.tile_us = {DAY_US}"
        " AND ds.tile_start_us = d.start"
        " CROSS JOIN LATERAL unnest(CASE WHEN ds.sketch IS NOT NULL THEN ARRAY[ds.sketch]"
        f" ELSE ARRAY({tiles.replace(', NULL::text', '')} AND t.tile_us = {HOUR_US}"
        f" AND t.tile_start_us >= d.start AND t.tile_start_us < d.start + {DAY_US}) END)"
        " AS x(sketch)",
        f"{tiles} AND t.tile_us = {HOUR_US} AND t.tile_start_us >= p.h0"
        " AND t.tile_start_us < p.d0",
        f"{tiles} AND t.tile_us = {HOUR_US} AND t.tile_start_us >= p.d1"
        " AND t.tile_start_us < p.h1",
        f"{tiles} AND t.tile_us = {MINUTE_US} AND t.tile_start_us >= p.m0"
        " AND t.tile_start_us < p.h0",
        f"{tiles} AND t.tile_us = {MINUTE_US} AND t.tile_start_us >= p.h1"
        " AND t.tile_start_us < p.m1",
        f"{events} AND e.ts_us > p.lo AND e.ts_us < p.m0",
        f"{events} AND e.ts_us >= p.m1 AND e.ts_us <= p.hi",
    ])


# One row per v1 feature probe: the window's count, exact sum and sum of
# squares, min, max, and (when asked) the value of its earliest event and the
# time and value of its latest, by (ts_us, event_id). Tiles are disjoint in
# time, so the earliest tile of a range holds the range's earliest event.
#
# Each part is read only for the probes whose kind uses it: the `WHERE p.<flag>`
# inside each lateral becomes a one-time filter that skips the part's scans
# (the `ON p.<flag>` alone would only discard their result, after reading it).
FEATURE_VALUES_SQL = f"""
WITH p AS (
    SELECT * FROM unnest($1::integer[], $2::smallint[], $3::text[], $4::smallint[],
                         $5::bigint[], $6::bigint[], $7::bigint[], $8::bigint[],
                         $9::bigint[], $10::bigint[], $11::boolean[], $12::boolean[],
                         $13::integer[], $14::boolean[], $15::boolean[], $16::boolean[],
                         $17::bigint[], $18::bigint[])
        WITH ORDINALITY AS p(sc, g, k, f, lo, hi, m0, h0, h1, m1, nf, nl, nn, nd, na, ag,
                             d0, d1, i)
)
SELECT p.i, a.n, a.s, a.s2, a.mn, a.mx, fst.val AS first_val, lst.ts AS last_ts,
       lst.val AS last_val, ln.vals AS last_values, dc.d AS distinct_n,
       hl.sketches, hl.edge_values
FROM p
-- The window aggregate, for the kinds that use it (FeatureProbe.aggregate): the
-- others would pay a sum over up to 286 tiles for nothing.
LEFT JOIN LATERAL (
    SELECT coalesce(sum(u.n), 0)::bigint AS n, sum(u.s) AS s, sum(u.s2) AS s2,
           min(u.mn) AS mn, max(u.mx) AS mx
    FROM ({_feature_sources("t.n, t.s, t.s2, t.mn, t.mx",
                            "1, e.num, e.num * e.num, e.num, e.num")}) u(n, s, s2, mn, mx)
    WHERE p.ag
) a ON p.ag
LEFT JOIN LATERAL (
    SELECT c.val FROM ({_feature_sources(
        "t.first_ts, t.first_eid, t.first_val", "e.ts_us, e.event_id, e.val",
        earliest=True)}) c(ts, eid, val)
    WHERE p.nf
    ORDER BY c.ts, c.eid COLLATE "C" LIMIT 1
) fst ON p.nf
LEFT JOIN LATERAL (
    SELECT c.ts, c.val FROM ({_feature_sources(
        "t.last_ts, t.last_eid, t.last_val", "e.ts_us, e.event_id, e.val",
        earliest=False)}) c(ts, eid, val)
    WHERE p.nl
    ORDER BY c.ts DESC, c.eid COLLATE "C" DESC LIMIT 1
) lst ON p.nl
-- last_n: the newest n values of the window, straight from the events' index
-- (a backward scan of at most n rows, whatever the key's volume).
LEFT JOIN LATERAL (
    SELECT array_agg(x.val ORDER BY x.ts_us DESC, x.event_id DESC) AS vals FROM (
        SELECT e.ts_us, e.event_id, e.val FROM fv_events e
        WHERE e.scope_id = p.sc AND e.group_id = p.g AND e.key_id = p.k AND e.feature = p.f
          AND e.ts_us > p.lo AND e.ts_us <= p.hi
        ORDER BY e.ts_us DESC, e.event_id DESC LIMIT p.nn) x
) ln ON p.nn > 0
-- distinct_count: the distinct values of the window's tiles and edge events; day
-- tiles for its whole days (migration 0008), so a read costs the distinct values
-- of at most 6 day, 46 hour and 118 minute tiles.
LEFT JOIN LATERAL (
    SELECT count(DISTINCT u.val) AS d FROM ({_feature_sources(
        "t.val", "e.val", tiles_table="fv_distinct", days=True)}) u(val)
    WHERE p.nd
) dc ON p.nd
-- approx_distinct_count: the tiles' sketches and the edge events' values,
-- united in Python (ofp.store.sketches).
LEFT JOIN LATERAL (
    SELECT array_agg(u.sketch) FILTER (WHERE u.sketch IS NOT NULL) AS sketches,
           array_agg(u.val) FILTER (WHERE u.val IS NOT NULL) AS edge_values
    FROM ({_sketch_sources()}) u(sketch, val)
    WHERE p.na
) hl ON p.na
"""


def _time_bounded(sql: str, lo: str, hi: str, prefix: str = "fv_") -> str:
    """`sql` with every read of a time-partitioned table (migration 0009) also
    bounded by the union of the statement's windows: lo < time <= hi (`lo`, `hi`:
    parameters holding the least lo and the largest hi). Redundant for the
    answer, since each probe reads inside its own window (tiles start after lo
    and at or before hi); but the bounds are known when the plan starts, so
    PostgreSQL leaves out the partitions outside them before initializing their
    scans, where the per-probe bounds only prune on each rescan, after every
    partition's scan was set up."""
    tables = r"(?:fv_events|fv_tiles|fv_distinct|fv_sketches|feature_events|feature_tiles)"
    events = rf"(?:FROM|JOIN) {prefix}\w*events (\w+)\s+(?:WHERE|ON) "
    tiles = rf"(?:FROM|JOIN) {prefix}\w*(?:tiles|distinct|sketches) (\w+)\s+(?:WHERE|ON) "
    out, n_events = re.subn(events, lambda m: m.group(0).rstrip() + f" {m.group(1)}.ts_us > {lo}"
                            f" AND {m.group(1)}.ts_us <= {hi} AND ", sql)
    out, n_tiles = re.subn(tiles, lambda m: m.group(0).rstrip() + f" {m.group(1)}.tile_start_us"
                           f" > {lo} AND {m.group(1)}.tile_start_us <= {hi} AND ", out)
    assert n_events + n_tiles == len(re.findall(rf"(?:FROM|JOIN) {tables}\b", sql)), sql
    return out


FEATURE_VALUES_SQL = _time_bounded(FEATURE_VALUES_SQL, "$19", "$20")
# The v0 statements likewise: the least lo of their windows (the longest
# window's, which `last_from` starts at) and the largest as-of.
SNAPSHOTS_SQL = _time_bounded(SNAPSHOTS_SQL, "$27", "$28", prefix="feature_")
SNAPSHOT_ONE_SQL = _time_bounded(SNAPSHOT_ONE_SQL, "$23", "$24", prefix="feature_")


def snapshot_one_args(stream: str, pins: Pins, probes: ReadProbes,
                      revision: tuple[str, str] | None = None) -> list[Any]:
    """`SNAPSHOT_ONE_SQL`'s parameters for one request's read."""
    windows = probes.windows
    return [
        stream, pins[0], pins[1], pins[2], pins[3], pins[4], Decimal(pins[5]),
        [x.lo_us for x in windows],
        [x.hi_us for x in windows],
        [x.edge_lo_end_us for x in windows],
        [x.tile_from_us for x in windows],
        [x.tile_to_us for x in windows],
        [x.edge_hi_start_us for x in windows],
        probes.as_of_us,
        [g for g, _ in probes.cells],
        [k for _, k in probes.cells],
        [g for g, _ in probes.group_windows],
        [w for _, w in probes.group_windows],
        [g for g, _ in probes.last_from],
        [lo for _, lo in probes.last_from],
        None if revision is None else revision[0],
        None if revision is None else revision[1],
        min([x.lo_us for x in windows] + [lo for _, lo in probes.last_from],
            default=probes.as_of_us),
        probes.as_of_us,
    ]


async def _read_snapshots(
    conn: Any,
    *,
    stream: str,
    reads: Sequence[tuple[Pins, ReadProbes]],
    revision: tuple[str, str] | None = None,
) -> list[SnapshotRow] | None:
    if len(reads) == 1:
        pins, probes = reads[0]
        row = await conn.fetchrow(
            SNAPSHOT_ONE_SQL, *snapshot_one_args(stream, pins, probes, revision))
        if row is None:
            return None
        r_ps, c_req, cell_base, win_base = [0], [], [0], [0]
        scope_ids = [row["scope_id"]]
    else:
        args, layout = snapshot_args(stream, reads, revision)
        r_ps, c_req, cell_base, win_base = (
            layout.r_ps, layout.c_req, layout.cell_base, layout.win_base)
        row = await conn.fetchrow(SNAPSHOTS_SQL, *args)
        if row is None:
            return None
        scope_ids = row["scope_ids"] or []
    partitions = row["partitions"] or []
    offsets = [(int(p), str(o)) for p, o in zip(partitions, row["offsets"] or [], strict=True)]
    offset_kinds = list(row["offset_kinds"] or [])
    # array_agg over no rows is NULL, not an empty array.
    val_cells = row["val_cells"] or []
    val_wins = row["val_wins"] or []
    val_counts = row["val_counts"] or []
    val_sums = row["val_sums"] or []
    last_cells = row["last_cells"] or []
    last_us = row["last_us"] or []
    values: list[dict[tuple[int, int], tuple[int, str]]]
    lasts: list[dict[int, int | None]]
    if len(reads) == 1:
        values = [{(c, w): (n, v) for c, w, n, v in
                   zip(val_cells, val_wins, val_counts, val_sums, strict=True)}]
        lasts = [dict(zip(last_cells, last_us, strict=True))]
    else:
        # Cells and windows are numbered request after request: back to each
        # request's own numbering.
        values = [{} for _ in reads]
        for c, w, n, v in zip(val_cells, val_wins, val_counts, val_sums, strict=True):
            r = c_req[c]
            values[r][(c - cell_base[r], w - win_base[r])] = (n, v)
        lasts = [{} for _ in reads]
        for c, t in zip(last_cells, last_us, strict=True):
            r = c_req[c]
            lasts[r][c - cell_base[r]] = t
    return [
        SnapshotRow(
            policy_id=row["policy_id"],
            revision=row["revision"],
            content_digest=row["content_digest"],
            run_config_digest=row["run_config_digest"],
            scope_id=scope_ids[r_ps[r]],
            retained_from_us=row["retained_from_us"],
            offset_kinds=offset_kinds,
            offsets=offsets,
            watermark_us=row["watermark_us"],
            values=values[r],
            lasts=lasts[r],
            epoch=row["epoch"],
        )
        for r in range(len(reads))
    ]


async def active_groups(conn: asyncpg.Connection | asyncpg.Pool) -> dict[tuple[str, str], int]:
    rows = await conn.fetch("SELECT group_id, name, version FROM feature_groups")
    return {(r["name"], r["version"]): int(r["group_id"]) for r in rows}


async def active_policy_content(
    conn: asyncpg.Connection | asyncpg.Pool,
) -> tuple[dict[str, Any], str] | None:
    """(normalized content, run_config_digest) of the active revision, or None."""
    row = await conn.fetchrow(
        "SELECT pol.content, pol.run_config_digest FROM active_policy a"
        " JOIN policies pol USING (policy_id, revision)"
    )
    if row is None:
        return None
    import json

    content = row["content"]
    return (json.loads(content) if isinstance(content, str) else content), row["run_config_digest"]
