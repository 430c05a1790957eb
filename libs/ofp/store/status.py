"""The status read: policy, checkpoints, leases, counters and quarantine in ONE statement.

One statement sees one MVCC snapshot, so the counters always add up to the
checkpoints they sit next to, and `now()` (the transaction's clock) is the instant
every age in the report is measured against. The pure report is `ofp.health`.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import asyncpg

from ofp.health import PartitionFacts, PolicyFacts, StatusFacts

_US = "(extract(epoch FROM {col}) * 1000000)::bigint"

STATUS_SQL = f"""
WITH pol AS (
    SELECT a.policy_id, a.revision, p.content_digest,
           p.content->>'source_topic' AS source_topic,
           {_US.format(col="a.activated_at")} AS activated_us
    FROM active_policy a JOIN policies p USING (policy_id, revision)
),
s AS (SELECT coalesce($1::text, (SELECT source_topic FROM pol)) AS stream),
cp AS (
    SELECT c.partition, c.offset_kind, c.next_offset::text AS next_offset, c.max_event_us,
           {_US.format(col="c.updated_at")} AS updated_us,
           {_US.format(col="c.last_applied_at")} AS last_applied_us,
           c.lag_records, c.lag_ms,
           {_US.format(col="c.lag_observed_at")} AS lag_observed_us,
           c.closed,
           CASE WHEN l.expires_at > now() THEN l.owner END AS lease_owner
    FROM checkpoints c
    LEFT JOIN partition_leases l ON l.stream = c.stream AND l.partition = c.partition
    WHERE c.stream = (SELECT stream FROM s)
)
SELECT (SELECT stream FROM s) AS stream,
       {_US.format(col="now()")} AS now_us,
       (SELECT to_jsonb(pol) FROM pol) AS policy,
       (SELECT coalesce(jsonb_agg(to_jsonb(cp) ORDER BY partition), '[]'::jsonb) FROM cp)
           AS partitions,
       (SELECT coalesce(jsonb_agg(jsonb_build_array(partition, outcome, reason, n)),
                        '[]'::jsonb)
        FROM outcome_counters WHERE stream = (SELECT stream FROM s)) AS counters,
       (SELECT count(*) FROM quarantine WHERE stream = (SELECT stream FROM s)
        -- a replayed record that was applied (or found a duplicate, or ignored)
        -- is resolved (ofp.store.quarantine)
        AND (replay_outcome IS NULL OR replay_outcome = 'QUARANTINED'))
           AS quarantine_open
"""


ACTIVE_TOPIC_SQL = (
    "SELECT p.content->>'source_topic' FROM active_policy a JOIN policies p"
    " USING (policy_id, revision)"
)


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


async def read_status(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    stream: str | None = None,
    bus_stream: Callable[[str], str] | None = None,
) -> StatusFacts:
    """Everything the status report needs, from one snapshot.

    `stream` defaults to the stream the active policy's source topic is read
    from: `bus_stream(topic)` (`Settings.bus_stream`, so a custom Kinesis
    stream name is the one reported), or the topic itself without it.
    """
    if stream is None and bus_stream is not None:
        topic = await conn.fetchval(ACTIVE_TOPIC_SQL)
        if topic is not None:
            stream = bus_stream(str(topic))
    row = await conn.fetchrow(STATUS_SQL, stream)
    assert row is not None  # a SELECT without FROM always yields one row
    pol = None if row["policy"] is None else json.loads(row["policy"])
    policy = None if pol is None else PolicyFacts(
        policy_id=str(pol["policy_id"]),
        revision=str(pol["revision"]),
        content_digest=str(pol["content_digest"]),
        activated_us=int(pol["activated_us"]),
    )
    partitions = tuple(
        PartitionFacts(
            partition=int(p["partition"]),
            offset_kind=str(p["offset_kind"]),
            next_offset=str(p["next_offset"]),
            updated_us=int(p["updated_us"]),
            max_event_us=_int(p["max_event_us"]),
            last_applied_us=_int(p["last_applied_us"]),
            lag_records=_int(p["lag_records"]),
            lag_ms=_int(p["lag_ms"]),
            lag_observed_us=_int(p["lag_observed_us"]),
            closed=bool(p["closed"]),
            lease_owner=p["lease_owner"],
        )
        for p in json.loads(row["partitions"])
    )
    counters = tuple(
        (int(p), str(o), str(r), int(n)) for p, o, r, n in json.loads(row["counters"])
    )
    return StatusFacts(
        stream=row["stream"],
        now_us=int(row["now_us"]),
        policy=policy,
        partitions=partitions,
        counters=counters,
        quarantine_open=int(row["quarantine_open"]),
    )
