"""Quarantined records: counts, rows, and replaying them after a fix.

A quarantined record has already moved its partition's checkpoint; its row
keeps the raw bytes, the original stream, partition, offset, reason and detail.
`replay_one` classifies such a record again with the code and the policy in
force now and, when it passes, applies it to the state exactly as the
projector applies a record: the same time rules against the database clock
(`ts_in_future`, the retention floor), the same dedupe settlement (a second
copy of an applied event is a DUPLICATE, another payload a conflict), the same
state inserts into the tiles of its event time, and, while a staged revision
is backfilled, the same `backfill_seen` marking, so the backfill does not apply
it twice, and the partition's event-time high mark raised by the event. It
never moves an offset checkpoint: the basis of an answer keeps meaning "every
record below these offsets was read" (docs/decisions.md, "Quarantine replay").

Each record is replayed in a transaction of its own that locks its row: two
replays at once never apply a record twice, a record the database refuses is
recorded as such and does not stop the others, and a resolved row (APPLIED,
DUPLICATE or IGNORED) is never replayed again, so a second replay is a no-op.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ofp.contracts.timefmt import format_micros
from ofp.events import (
    Candidate,
    Classified,
    Ignored,
    IgnoreReason,
    Outcome,
    Quarantined,
    QuarantineReason,
    classify,
    storable,
)
from ofp.model import Pins

from .db import Conn
from .rollout import Projection
from .writes import (
    DEFAULT_MAX_FUTURE_US,
    ProjectionChangedError,
    Record,
    _in_future,
    _settle_and_store,
    refused_by_store,
    resolve_scopes,
    retention_lock_key,
)

# Rows that still wait for an operator (the ladder's `quarantine_open`).
OPEN = "(replay_outcome IS NULL OR replay_outcome = 'QUARANTINED')"
_US = "(extract(epoch FROM {col}) * 1000000)::bigint"
_COLUMNS = (
    "quarantine_id, stream, partition, record_offset, reason, detail, event_id,"
    f" {_US.format(col='quarantined_at')} AS quarantined_us, replays,"
    f" {_US.format(col='replayed_at')} AS replayed_us, replay_outcome, replay_reason,"
    " replay_detail"
)


@dataclass(frozen=True, slots=True)
class QuarantinedRecord:
    quarantine_id: int
    stream: str
    partition: int
    offset: str  # the bus offset as recorded (file line or Kinesis sequence number)
    reason: str
    detail: str
    event_id: str | None
    quarantined_us: int
    replays: int
    replayed_us: int | None
    replay_outcome: str | None
    replay_reason: str | None
    replay_detail: str | None
    raw: bytes | None = None  # only when asked for (`get_record`)

    @property
    def open(self) -> bool:
        return self.replay_outcome in (None, Outcome.QUARANTINED)

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "quarantine_id": self.quarantine_id, "stream": self.stream,
            "partition": self.partition, "offset": self.offset, "reason": self.reason,
            "detail": self.detail, "event_id": self.event_id,
            "quarantined_at_utc": format_micros(self.quarantined_us),
            "open": self.open, "replays": self.replays,
            "replayed_at_utc": None if self.replayed_us is None
            else format_micros(self.replayed_us),
            "replay_outcome": self.replay_outcome, "replay_reason": self.replay_reason,
            "replay_detail": self.replay_detail,
        }
        if self.raw is not None:
            try:
                doc["raw"] = self.raw.decode("utf-8")
            except UnicodeDecodeError:
                doc["raw_hex"] = self.raw.hex()
        return doc


def _record(row: Any, raw: bool = False) -> QuarantinedRecord:
    return QuarantinedRecord(
        quarantine_id=int(row["quarantine_id"]), stream=row["stream"],
        partition=int(row["partition"]), offset=str(row["record_offset"]),
        reason=row["reason"], detail=row["detail"], event_id=row["event_id"],
        quarantined_us=int(row["quarantined_us"]), replays=int(row["replays"]),
        replayed_us=None if row["replayed_us"] is None else int(row["replayed_us"]),
        replay_outcome=row["replay_outcome"], replay_reason=row["replay_reason"],
        replay_detail=row["replay_detail"], raw=bytes(row["raw"]) if raw else None)


async def count_by_reason(conn: Conn, stream: str) -> list[dict[str, Any]]:
    """Per original reason: rows still open, rows resolved by a replay, and in all."""
    rows = await conn.fetch(
        f"SELECT reason, count(*) FILTER (WHERE {OPEN}) AS open, count(*) AS total"
        " FROM quarantine WHERE stream = $1 GROUP BY reason ORDER BY reason", stream)
    return [{"reason": r["reason"], "open": int(r["open"]),
             "resolved": int(r["total"]) - int(r["open"]), "total": int(r["total"])}
            for r in rows]


async def list_records(conn: Conn, stream: str, *, reasons: list[str] | None = None,
                       include_resolved: bool = False, limit: int = 50,
                       after_id: int = 0) -> list[QuarantinedRecord]:
    """Rows in quarantine order (without their raw bytes), open ones unless asked."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM quarantine WHERE stream = $1 AND quarantine_id > $2"
        " AND ($3::text[] IS NULL OR reason = ANY($3))"
        f" AND ($4 OR {OPEN}) ORDER BY quarantine_id LIMIT $5",
        stream, after_id, reasons or None, include_resolved, limit)
    return [_record(r) for r in rows]


async def get_record(conn: Conn, quarantine_id: int) -> QuarantinedRecord | None:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, raw FROM quarantine WHERE quarantine_id = $1", quarantine_id)
    return None if row is None else _record(row, raw=True)


@dataclass(frozen=True, slots=True)
class ReplayOutcome:
    quarantine_id: int
    partition: int
    offset: str
    outcome: str  # APPLIED, DUPLICATE, IGNORED or QUARANTINED
    reason: str  # '' for APPLIED and DUPLICATE
    detail: str

    def to_json(self) -> dict[str, Any]:
        return {"quarantine_id": self.quarantine_id, "partition": self.partition,
                "offset": self.offset, "outcome": self.outcome, "reason": self.reason,
                "detail": self.detail}


def reclassify(raw: bytes, projection: Projection, run_id: str | None) -> Classified:
    """The record as the projector would classify it now; a failure of classify
    itself stays quarantined with the error (as in the projector)."""
    try:
        return classify(raw, projection.policy, run_id)
    except Exception as exc:
        return Quarantined(QuarantineReason.ENVELOPE_INVALID,
                           f"could not be classified: {type(exc).__name__}: {exc}"[:300])


async def replay_one(
    conn: Conn,
    quarantine_id: int,
    *,
    projection: Projection,
    run_id: str | None,
    scope_cache: dict[Pins, int],
    max_future_us: int = DEFAULT_MAX_FUTURE_US,
) -> ReplayOutcome | None:
    """Replay one open quarantined record in one transaction; None when the row is
    not open (resolved meanwhile, or no such row). ProjectionChangedError when
    the applied groups changed since `projection` was read (read it again)."""
    new_scopes: dict[Pins, int] = {}
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT stream, partition, record_offset, raw FROM quarantine"
            f" WHERE quarantine_id = $1 AND {OPEN} FOR UPDATE", quarantine_id)
        if row is None:
            return None
        # Shared locks, held to commit: an activation (which updates this row)
        # waits for the replay, and a retention prune (exclusive) too.
        epoch = await conn.fetchval("SELECT epoch FROM active_policy FOR SHARE")
        if epoch != projection.epoch:
            raise ProjectionChangedError(
                f"replay read rollout epoch {projection.epoch}, the store is at {epoch}")
        stream, partition = row["stream"], int(row["partition"])
        offset = row["record_offset"]
        await conn.execute("SELECT pg_advisory_xact_lock_shared(hashtext($1))",
                           retention_lock_key(stream))
        clock = await conn.fetchrow(
            "SELECT (SELECT retained_from_us FROM retention WHERE stream = $1) AS floor_us,"
            " (extract(epoch FROM now()) * 1000000)::bigint AS now_us", stream)
        assert clock is not None
        floor_us, now_us = clock["floor_us"], int(clock["now_us"])
        record = Record(int(offset), bytes(row["raw"]), reclassify(
            bytes(row["raw"]), projection, run_id))
        c = record.classified
        outcome, reason, detail = Outcome.QUARANTINED.value, "", ""
        if isinstance(c, Quarantined):
            reason, detail = c.reason.value, c.detail
        elif isinstance(c, Ignored):
            outcome, reason = Outcome.IGNORED.value, c.reason.value
        elif c.ts_us > now_us + max_future_us:
            q = _in_future(c, now_us, max_future_us)
            reason, detail = q.reason.value, q.detail
        elif floor_us is not None and c.ts_us <= floor_us:
            outcome, reason = Outcome.IGNORED.value, IgnoreReason.BELOW_RETENTION_FLOOR.value
        else:
            outcome, reason, detail, new_scopes = await _apply(
                conn, stream, record, c, partition, projection, scope_cache)
        await conn.execute(
            "UPDATE quarantine SET replays = replays + 1, replayed_at = now(),"
            " replay_outcome = $2, replay_reason = $3, replay_detail = $4"
            " WHERE quarantine_id = $1",
            quarantine_id, outcome, reason, storable(detail))
    scope_cache.update(new_scopes)
    return ReplayOutcome(quarantine_id, partition, str(offset), outcome, reason, detail)


async def _apply(conn: Conn, stream: str, record: Record, c: Candidate, partition: int,
                 projection: Projection, scope_cache: dict[Pins, int]
                 ) -> tuple[str, str, str, dict[Pins, int]]:
    """Settle and store one candidate under a savepoint: a record the database
    refuses (SQLSTATE class 22 or 54) stays quarantined as store_refused.

    An applied (or duplicate) record raises its partition's event-time high mark
    as it would have in its batch; the offset checkpoint stays. The checkpoint
    row is locked first, as a batch of the partition locks it first: the two
    wait for each other, never deadlock."""
    await conn.execute("SELECT 1 FROM checkpoints WHERE stream = $1 AND partition = $2"
                       " FOR NO KEY UPDATE", stream, partition)
    try:
        async with conn.transaction():
            new_scopes = await resolve_scopes(conn, {c.pins}, scope_cache)
            scopes = {**scope_cache, **new_scopes}
            settled = await _settle_and_store(
                conn, [(record, c)], scopes, list(projection.group_ids),
                mark_seen=bool(projection.pending), partition=partition)
    except Exception as exc:
        if not refused_by_store(exc):
            raise
        state = getattr(exc, "sqlstate", "")
        return (Outcome.QUARANTINED.value, QuarantineReason.STORE_REFUSED.value,
                f"SQLSTATE {state}: {exc}"[:300], {})
    if settled.applied or settled.duplicates:
        await conn.execute(
            "UPDATE checkpoints SET max_event_us = GREATEST(max_event_us, $3)"
            " WHERE stream = $1 AND partition = $2", stream, partition, c.ts_us)
        outcome = Outcome.APPLIED if settled.applied else Outcome.DUPLICATE
        return outcome.value, "", "", new_scopes
    conflict = settled.conflicts[0][1]
    return Outcome.QUARANTINED.value, conflict.reason.value, conflict.detail, new_scopes


async def open_ids(conn: Conn, stream: str, *, reasons: list[str] | None = None,
                   ids: list[int] | None = None) -> list[int]:
    """The open rows a replay takes, in quarantine order (so in bus order per partition)."""
    rows = await conn.fetch(
        f"SELECT quarantine_id FROM quarantine WHERE stream = $1 AND {OPEN}"
        " AND ($2::text[] IS NULL OR reason = ANY($2))"
        " AND ($3::bigint[] IS NULL OR quarantine_id = ANY($3))"
        " ORDER BY quarantine_id", stream, reasons or None, ids or None)
    return [int(r[0]) for r in rows]
