"""The snapshot log (docs/audit.md): served snapshots, recorded for fetching and auditing.

An entry is the exact canonical bytes a snapshot's `snapshot_hash` covers, its
`created_at_utc` (served, not hashed), when it was recorded, and what re-deriving
it needs beyond the bytes: the request's keys, groups and named revision. The
pins, as-of, revision and basis are inside the bytes.

Two places hold entries: the `snapshot_log` table (range-partitioned by the day
recorded; partitions created ahead, retention by dropping whole days) and an
S3 bucket (`ofp.store.snapshot_s3`: one object per snapshot, keyed by hash).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import asyncpg
import orjson

from ofp.contracts.timefmt import format_micros
from ofp.store.db import Conn

PARTITION_PREFIX = "snapshot_log_p"
DAY_US = 86_400 * 1_000_000
# Partitions created ahead of the day being written, so a recorder that runs
# past midnight never writes into a day without one.
DAYS_AHEAD = 2


@dataclass(frozen=True, slots=True)
class SnapshotEntry:
    snapshot_hash: str
    recorded_at_us: int
    created_at_us: int
    as_of_us: int
    canonical: bytes  # sha256(canonical) == snapshot_hash
    request: dict[str, Any]  # feature_keys, feature_groups, policy_revision (if named)

    def snapshot(self, snapshot_ref: str | None = None) -> dict[str, Any]:
        """The snapshot as served (contract JSON form): the hashed fields, the hash,
        created_at_utc and the reference it was served with."""
        doc: dict[str, Any] = json.loads(self.canonical)
        doc["snapshot_hash"] = self.snapshot_hash
        doc["created_at_utc"] = format_micros(self.created_at_us)
        if snapshot_ref is not None:
            doc["snapshot_ref"] = snapshot_ref
        return doc

    def document(self) -> bytes:
        """The entry as one JSON document (the S3 object body); the canonical bytes
        travel as a string, ASCII by construction, so they come back byte for byte."""
        return orjson.dumps({
            "snapshot_hash": self.snapshot_hash,
            "recorded_at_us": self.recorded_at_us,
            "created_at_us": self.created_at_us,
            "as_of_us": self.as_of_us,
            "canonical": self.canonical.decode("ascii"),
            "request": self.request,
        })

    @classmethod
    def from_document(cls, data: bytes) -> SnapshotEntry:
        doc = orjson.loads(data)
        return cls(str(doc["snapshot_hash"]), int(doc["recorded_at_us"]),
                   int(doc["created_at_us"]), int(doc["as_of_us"]),
                   str(doc["canonical"]).encode("ascii"), dict(doc["request"]))


def request_record(keys: Iterable[tuple[str, str]], groups: Iterable[tuple[str, str]],
                   policy_revision: str | None) -> dict[str, Any]:
    """What re-deriving a snapshot needs besides its bytes, in GetFeatures request form."""
    doc: dict[str, Any] = {
        "feature_keys": [{"key_type": t, "key_id": k} for t, k in keys],
        "feature_groups": [{"name": n, "version": v} for n, v in groups],
    }
    if policy_revision is not None:
        doc["policy_revision"] = policy_revision
    return doc


def _day(us: int) -> dt.date:
    return dt.datetime.fromtimestamp(us // 1_000_000, tz=dt.UTC).date()


def _stamp(us: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(us / 1_000_000, tz=dt.UTC).replace(
        microsecond=us % 1_000_000)


async def ensure_partitions(conn: Conn, now_us: int, *, retention_days: int) -> list[str]:
    """Create the partitions of today and DAYS_AHEAD days after; drop those of days
    before today - `retention_days`. Returns the dropped partitions' names.

    Through `snapshot_log_maintain` (migration 0010): the server role may not
    create or drop tables itself; the function runs as the log's owner."""
    rows = await conn.fetch("SELECT snapshot_log_maintain($1, $2, $3)",
                            _day(now_us), DAYS_AHEAD, retention_days)
    return [str(r[0]) for r in rows]


def partition_days(entries: Sequence[SnapshotEntry]) -> set[dt.date]:
    return {_day(e.recorded_at_us) for e in entries}


def days_covered(now_us: int) -> set[dt.date]:
    """The days `ensure_partitions(now_us)` leaves with a partition, at least."""
    today = _day(now_us)
    return {today + dt.timedelta(days=k) for k in range(DAYS_AHEAD + 1)}


_COLUMNS = ["recorded_at", "snapshot_hash", "created_at_us", "as_of_us", "canonical", "request"]


async def insert_entries(conn: Conn, entries: Sequence[SnapshotEntry]) -> None:
    """One COPY of the batch (jsonb travels as its text form)."""
    await conn.copy_records_to_table(
        "snapshot_log",
        records=[(_stamp(e.recorded_at_us), e.snapshot_hash, e.created_at_us, e.as_of_us,
                  e.canonical, orjson.dumps(e.request).decode()) for e in entries],
        columns=_COLUMNS,
    )


_SELECT = (
    "SELECT snapshot_hash, (extract(epoch FROM recorded_at) * 1000000)::bigint,"
    " created_at_us, as_of_us, canonical, request::text FROM snapshot_log"
)


def _entry(row: asyncpg.Record) -> SnapshotEntry:
    return SnapshotEntry(row[0], int(row[1]), int(row[2]), int(row[3]), bytes(row[4]),
                         json.loads(row[5]))


async def fetch_entry(conn: Conn | asyncpg.Pool, snapshot_hash: str) -> SnapshotEntry | None:
    """The first recording of `snapshot_hash` (a hash served again has the same bytes)."""
    row = await conn.fetchrow(
        _SELECT + " WHERE snapshot_hash = $1 ORDER BY recorded_at LIMIT 1", snapshot_hash)
    return None if row is None else _entry(row)


async def entries_since(conn: Conn | asyncpg.Pool, since_us: int,
                        until_us: int | None = None) -> list[SnapshotEntry]:
    """One entry per distinct snapshot recorded in [since, until), oldest first."""
    rows = await conn.fetch(
        "SELECT DISTINCT ON (snapshot_hash) * FROM (" + _SELECT
        + " WHERE recorded_at >= $1 AND ($2::timestamptz IS NULL OR recorded_at < $2)) s"
        " ORDER BY snapshot_hash, 2",
        _stamp(since_us), None if until_us is None else _stamp(until_us))
    out = [_entry(r) for r in rows]
    out.sort(key=lambda e: (e.recorded_at_us, e.snapshot_hash))
    return out


@dataclass(frozen=True, slots=True)
class LateEvent:
    event_id: str
    partition: int
    offset: int
    ts_us: int


async def late_events(
    conn: Conn | asyncpg.Pool,
    *,
    pins: dict[str, Any],
    as_of_us: int,
    since_us: int | None,
    basis: dict[int, int],
    cells: Sequence[tuple[str, str, str, str]],
) -> list[LateEvent]:
    """The applied events a snapshot's basis did not include but its as-of covers.

    Events of the snapshot's run scope now in state with event time in
    (`since_us`, `as_of_us`] whose bus offset is at or after the basis's
    exclusive-next offset of their partition (any offset of a partition the
    basis does not name), contributing to one of `cells` ((key_type, key_id,
    group name, group version) asked of the snapshot). A v1 group's
    contribution is matched by event id; a v0 group keeps no event id with its
    contributions, so there an event counts when the key has a contribution at
    the event's exact time. Events applied before their bus position was kept
    (migration 0010) cannot be named.
    """
    parts = sorted(basis)
    rows = await conn.fetch(
        "WITH k AS (SELECT g.group_id, c.key_id FROM unnest($9::text[], $10::text[],"
        " $11::text[], $12::text[]) AS c(key_type, key_id, name, version)"
        " JOIN feature_groups g ON g.name = c.name AND g.version = c.version"
        " AND g.key_type = c.key_type)"
        " SELECT d.event_id, d.bus_partition, d.bus_offset::text, d.ts_us"
        " FROM event_dedupe d JOIN run_scopes s ON s.scope_id = d.scope_id"
        " WHERE s.platform_run_id = $1 AND s.scenario_run_id = $2 AND s.scenario_id = $3"
        " AND s.manifest_fingerprint = $4 AND s.parameter_hash = $5 AND s.seed = $6::numeric"
        " AND d.ts_us <= $7 AND ($8::bigint IS NULL OR d.ts_us > $8)"
        " AND d.bus_partition IS NOT NULL"
        " AND d.bus_offset >= COALESCE((SELECT u.o FROM unnest($13::integer[], $14::numeric[])"
        " AS u(p, o) WHERE u.p = d.bus_partition), 0)"
        " AND (EXISTS (SELECT 1 FROM k JOIN fv_events f ON f.group_id = k.group_id"
        ' AND f.key_id = k.key_id COLLATE "C" WHERE f.scope_id = d.scope_id'
        " AND f.ts_us = d.ts_us AND f.event_id = d.event_id)"
        " OR EXISTS (SELECT 1 FROM k JOIN feature_events e ON e.group_id = k.group_id"
        " AND e.key_id = k.key_id WHERE e.scope_id = d.scope_id AND e.ts_us = d.ts_us))"
        " ORDER BY d.bus_partition, d.bus_offset",
        pins["platform_run_id"], pins["scenario_run_id"], pins["scenario_id"],
        pins["manifest_fingerprint"], pins["parameter_hash"], Decimal(pins["seed"]),
        as_of_us, since_us,
        [c[0] for c in cells], [c[1] for c in cells], [c[2] for c in cells],
        [c[3] for c in cells],
        parts, [Decimal(basis[p]) for p in parts],
    )
    return [LateEvent(r[0], int(r[1]), int(r[2]), int(r[3])) for r in rows]
