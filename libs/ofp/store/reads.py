"""The read path: values, basis, policy and retention in ONE statement.

A single SQL statement sees a single MVCC snapshot, so the feature values, the
checkpoints they are reported against and the active policy can never come
from different moments, and the read costs one round trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg

from ofp.windows import WindowProbe

SNAPSHOT_SQL = """
WITH scope AS (
    SELECT scope_id FROM run_scopes
    WHERE platform_run_id = $2 AND scenario_run_id = $3 AND scenario_id = $4
      AND manifest_fingerprint = $5 AND parameter_hash = $6 AND seed = $7
),
-- The distinct windows of the request: their bounds depend only on (as-of,
-- duration), so every key shares them and the parameters stay small.
win AS (
    SELECT (w.ord - 1)::integer AS win, w.lo_us, w.hi_us, w.edge_lo_end_us, w.tile_from_us,
           w.tile_to_us, w.edge_hi_start_us
    FROM unnest($8::bigint[], $9::bigint[], $10::bigint[], $11::bigint[], $12::bigint[],
                $13::bigint[])
        WITH ORDINALITY AS w(lo_us, hi_us, edge_lo_end_us, tile_from_us, tile_to_us,
                             edge_hi_start_us, ord)
),
-- One cell per (group, key) asked for.
cell AS (
    SELECT (c.ord - 1)::integer AS cell, c.group_id, c.key_id
    FROM unnest($14::smallint[], $15::text[]) WITH ORDINALITY AS c(group_id, key_id, ord)
),
-- Which windows each group has.
probe AS (
    SELECT c.cell, c.group_id, c.key_id, w.*
    FROM unnest($16::smallint[], $17::integer[]) AS gw(group_id, win)
    JOIN cell c ON c.group_id = gw.group_id
    JOIN win w ON w.win = gw.win
),
vals AS (
    SELECT p.cell, p.win,
           (coalesce(t.n, 0) + e1.n + e2.n)::bigint AS n,
           coalesce(t.s, 0) + coalesce(e1.s, 0) + coalesce(e2.s, 0) AS s
    FROM probe p CROSS JOIN scope sc
    CROSS JOIN LATERAL (
        SELECT sum(event_count) AS n, sum(amount_sum) AS s FROM feature_tiles t
        WHERE t.scope_id = sc.scope_id AND t.group_id = p.group_id AND t.key_id = p.key_id
          AND t.tile_start_us >= p.tile_from_us AND t.tile_start_us < p.tile_to_us) t
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, sum(amount) AS s FROM feature_events e
        WHERE e.scope_id = sc.scope_id AND e.group_id = p.group_id AND e.key_id = p.key_id
          AND e.ts_us > p.lo_us AND e.ts_us < p.edge_lo_end_us) e1
    CROSS JOIN LATERAL (
        SELECT count(*) AS n, sum(amount) AS s FROM feature_events e
        WHERE e.scope_id = sc.scope_id AND e.group_id = p.group_id AND e.key_id = p.key_id
          AND e.ts_us >= p.edge_hi_start_us AND e.ts_us <= p.hi_us) e2
),
-- The latest event of each cell within its group's longest window, (lo, $20].
lasts AS (
    SELECT c.cell, (
        SELECT max(e.ts_us) FROM feature_events e
        WHERE e.scope_id = sc.scope_id AND e.group_id = c.group_id AND e.key_id = c.key_id
          AND e.ts_us > lg.lo_us AND e.ts_us <= $20) AS last_us
    FROM cell c
    JOIN unnest($18::smallint[], $19::bigint[]) AS lg(group_id, lo_us) ON lg.group_id = c.group_id
    CROSS JOIN scope sc
),
cp AS (
    SELECT partition, offset_kind, next_offset, max_event_us
    FROM checkpoints WHERE stream = $1
)
SELECT a.policy_id, a.revision, pol.content_digest, pol.run_config_digest,
       (SELECT scope_id FROM scope) AS scope_id,
       (SELECT retained_from_us FROM retention WHERE stream = $1) AS retained_from_us,
       (SELECT array_agg(DISTINCT offset_kind) FROM cp) AS offset_kinds,
       (SELECT array_agg(partition ORDER BY partition) FROM cp) AS partitions,
       (SELECT array_agg(next_offset::text ORDER BY partition) FROM cp) AS offsets,
       (SELECT min(max_event_us) FROM cp) AS watermark_us,
       (SELECT array_agg(cell ORDER BY cell, win) FROM vals) AS val_cells,
       (SELECT array_agg(win ORDER BY cell, win) FROM vals) AS val_wins,
       (SELECT array_agg(n ORDER BY cell, win) FROM vals) AS val_counts,
       -- trim_scale(): the canonical decimal text (no trailing fractional
       -- zeros; numeric text never has an exponent), made by the database.
       (SELECT array_agg(trim_scale(s)::text ORDER BY cell, win) FROM vals) AS val_sums,
       (SELECT array_agg(cell ORDER BY cell) FROM lasts) AS last_cells,
       (SELECT array_agg(last_us ORDER BY cell) FROM lasts) AS last_us
FROM active_policy a
JOIN policies pol USING (policy_id, revision)
"""


@dataclass(frozen=True, slots=True)
class ReadProbes:
    """What one snapshot read sums, in the statement's parameter layout.

    `windows` are the request's distinct windows; `cells` the (group id, key id)
    pairs asked for; `group_windows` which windows (indexes into `windows`) each
    group has; `last_from` the exclusive lower bound of each group's
    last-event search, whose upper bound is `as_of_us`.
    """

    windows: list[WindowProbe]
    cells: list[tuple[int, str]]
    group_windows: list[tuple[int, int]]
    last_from: list[tuple[int, int]]
    as_of_us: int


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    policy_id: str
    revision: str
    content_digest: str
    run_config_digest: str
    scope_id: int | None
    retained_from_us: int | None
    offset_kinds: list[str]
    offsets: list[tuple[int, str]]  # (partition, exclusive-next offset) by partition
    watermark_us: int | None
    # (cell, window) -> (count, canonical decimal text of the sum)
    values: dict[tuple[int, int], tuple[int, str]]
    lasts: dict[int, int | None]  # cell -> last ts_us within its group's longest window


async def read_snapshot(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    stream: str,
    pins: tuple[str, str, str, str, str, int],
    probes: ReadProbes,
) -> SnapshotRow | None:
    """None when no policy is active yet."""
    w = probes.windows
    row = await conn.fetchrow(
        SNAPSHOT_SQL,
        stream, *pins[:5], Decimal(pins[5]),
        [x.lo_us for x in w],
        [x.hi_us for x in w],
        [x.edge_lo_end_us for x in w],
        [x.tile_from_us for x in w],
        [x.tile_to_us for x in w],
        [x.edge_hi_start_us for x in w],
        [c[0] for c in probes.cells],
        [c[1] for c in probes.cells],
        [g[0] for g in probes.group_windows],
        [g[1] for g in probes.group_windows],
        [g[0] for g in probes.last_from],
        [g[1] for g in probes.last_from],
        probes.as_of_us,
    )
    if row is None:
        return None
    partitions = row["partitions"] or []
    offsets = row["offsets"] or []
    # array_agg over no rows is NULL, not an empty array.
    val_cells = row["val_cells"] or []
    val_wins = row["val_wins"] or []
    val_counts = row["val_counts"] or []
    val_sums = row["val_sums"] or []
    last_cells = row["last_cells"] or []
    last_us = row["last_us"] or []
    return SnapshotRow(
        policy_id=row["policy_id"],
        revision=row["revision"],
        content_digest=row["content_digest"],
        run_config_digest=row["run_config_digest"],
        scope_id=row["scope_id"],
        retained_from_us=row["retained_from_us"],
        offset_kinds=list(row["offset_kinds"] or []),
        offsets=[(int(p), str(o)) for p, o in zip(partitions, offsets, strict=True)],
        watermark_us=row["watermark_us"],
        values={
            (c, w): (n, v)
            for c, w, n, v in zip(val_cells, val_wins, val_counts, val_sums, strict=True)
        },
        lasts=dict(zip(last_cells, last_us, strict=True)),
    )


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
