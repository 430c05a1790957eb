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
probe AS (
    SELECT * FROM unnest($8::integer[], $9::smallint[], $10::text[], $11::bigint[],
                         $12::bigint[], $13::bigint[], $14::bigint[], $15::bigint[],
                         $16::bigint[])
        AS p(slot, group_id, key_id, lo_us, hi_us, edge_lo_end_us, tile_from_us,
             tile_to_us, edge_hi_start_us)
),
vals AS (
    SELECT p.slot,
           coalesce(t.n, 0) + e1.n + e2.n AS n,
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
lasts AS (
    SELECT l.slot, (
        SELECT max(e.ts_us) FROM feature_events e
        WHERE e.scope_id = sc.scope_id AND e.group_id = l.group_id AND e.key_id = l.key_id
          AND e.ts_us > l.lo_us AND e.ts_us <= l.hi_us) AS last_us
    FROM unnest($17::integer[], $18::smallint[], $19::text[], $20::bigint[], $21::bigint[])
        AS l(slot, group_id, key_id, lo_us, hi_us)
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
       (SELECT array_agg(slot ORDER BY slot) FROM vals) AS val_slots,
       (SELECT array_agg(n ORDER BY slot) FROM vals) AS val_counts,
       -- trim_scale(): the canonical decimal text (no trailing fractional
       -- zeros; numeric text never has an exponent), made by the database.
       (SELECT array_agg(trim_scale(s)::text ORDER BY slot) FROM vals) AS val_sums,
       (SELECT array_agg(slot ORDER BY slot) FROM lasts) AS last_slots,
       (SELECT array_agg(last_us ORDER BY slot) FROM lasts) AS last_us
FROM active_policy a
JOIN policies pol USING (policy_id, revision)
"""


@dataclass(frozen=True, slots=True)
class ValueProbe:
    group_id: int
    key_id: str
    window: WindowProbe


@dataclass(frozen=True, slots=True)
class LastProbe:
    group_id: int
    key_id: str
    lo_us: int  # exclusive
    hi_us: int  # inclusive


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
    values: dict[int, tuple[int, str]]  # value slot -> (count, canonical decimal text of the sum)
    lasts: dict[int, int | None]  # last slot -> last ts_us within the window


async def read_snapshot(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    stream: str,
    pins: tuple[str, str, str, str, str, int],
    values: list[ValueProbe],
    lasts: list[LastProbe],
) -> SnapshotRow | None:
    """None when no policy is active yet."""
    args: list[Any] = [stream, *pins[:5], Decimal(pins[5])]
    args += [
        list(range(len(values))),
        [v.group_id for v in values],
        [v.key_id for v in values],
        [v.window.lo_us for v in values],
        [v.window.hi_us for v in values],
        [v.window.edge_lo_end_us for v in values],
        [v.window.tile_from_us for v in values],
        [v.window.tile_to_us for v in values],
        [v.window.edge_hi_start_us for v in values],
        list(range(len(lasts))),
        [x.group_id for x in lasts],
        [x.key_id for x in lasts],
        [x.lo_us for x in lasts],
        [x.hi_us for x in lasts],
    ]
    row = await conn.fetchrow(SNAPSHOT_SQL, *args)
    if row is None:
        return None
    partitions = row["partitions"] or []
    offsets = row["offsets"] or []
    # array_agg over no rows is NULL, not an empty array.
    val_slots = row["val_slots"] or []
    val_counts = row["val_counts"] or []
    val_sums = row["val_sums"] or []
    last_slots = row["last_slots"] or []
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
            int(s): (int(n), str(v))
            for s, n, v in zip(val_slots, val_counts, val_sums, strict=True)
        },
        lasts={int(s): x for s, x in zip(last_slots, last_us, strict=True)},
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
