"""The write path: one transaction per batch (docs/contract.md 2.2, 2.5).

`apply_batch` commits, atomically: feature state (events + tiles), semantic
dedupe, quarantine rows, outcome counters and the exclusive-next checkpoint.
The checkpoint update runs first and is conditional on the batch's start
offset, so two appliers of one partition can never both commit the same span.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, NamedTuple

import asyncpg

from ofp.contracts.timefmt import format_micros
from ofp.events import (
    Candidate,
    Classified,
    IgnoreReason,
    Outcome,
    Quarantined,
    QuarantineReason,
    storable,
)
from ofp.model import Pins
from ofp.policy import FeatureGroup, Policy
from ofp.store import sketches
from ofp.store.db import Conn
from ofp.store.reads import WATERMARK_EXPR
from ofp.windows import DAY_US, HOUR_US, MINUTE_US, SKETCH_TILE_SIZES_US, TILE_US


class CheckpointConflictError(Exception):
    """The partition's checkpoint is not where this batch starts: someone else moved it."""

    retryable = True


class ProjectionChangedError(Exception):
    """The set of groups the projector applies changed (a revision was staged,
    activated, rolled back or caught up) since the batch was classified: the
    batch is rolled back, and classified again with the new set."""


class LeaseLostError(Exception):
    """This replica no longer holds the partition's lease token: it must not commit."""

    retryable = False


@dataclass(frozen=True, slots=True)
class Fence:
    """The lease a batch is committed under (contract 6: fencing)."""

    owner: str
    token: int


class Record(NamedTuple):
    offset: int
    raw: bytes
    classified: Classified


@dataclass(slots=True)
class BatchResult:
    outcomes: Counter[tuple[str, str]] = field(default_factory=Counter)
    next_offset: int = 0
    max_event_us: int | None = None

    def count(self, outcome: Outcome) -> int:
        return sum(n for (o, _), n in self.outcomes.items() if o == outcome)


async def record_policy(
    conn: Conn, policy: Policy, required_platform_run_id: str | None
) -> list[int]:
    """Record `policy` and return group ids aligned with policy.groups.

    The first revision recorded becomes active, and so does a revision the
    database has never seen (the direct path: its new groups start empty; `ofp
    policy stage` backfills them instead). A revision the database already
    knows (active, previous, staged or retired) does not change what is
    active: `ofp policy activate` and `rollback` decide that. A
    (policy_id, revision) already recorded with different content is refused:
    a revision never changes meaning.
    """
    async with conn.transaction():
        await lock_policies(conn)
        known = await record_revision(conn, policy, required_platform_run_id)
        active = await conn.fetchrow("SELECT policy_id, revision FROM active_policy")
        if active is None:
            await conn.execute(
                "INSERT INTO active_policy (singleton, policy_id, revision) VALUES (true, $1, $2)",
                policy.policy_id,
                policy.revision,
            )
        elif not known:
            await conn.execute(
                "UPDATE active_policy SET policy_id = $1, revision = $2, activated_at = now(),"
                " previous_policy_id = policy_id, previous_revision = revision,"
                " epoch = epoch + 1",
                policy.policy_id,
                policy.revision,
            )
        ids = []
        for g in policy.groups:
            ids.append(await record_group(conn, g))
    return ids


async def lock_policies(conn: Conn) -> None:
    """Serialize every change of the recorded revisions and of which one is active."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ofp.active_policy'))")


async def record_revision(
    conn: Conn, policy: Policy, required_platform_run_id: str | None
) -> bool:
    """Record the revision (in the caller's transaction); True if it was recorded before."""
    existing = await conn.fetchrow(
        "SELECT content_digest, run_config_digest FROM policies"
        " WHERE policy_id = $1 AND revision = $2",
        policy.policy_id,
        policy.revision,
    )
    digest_now = policy.content_digest
    run_digest_now = policy.run_config_digest(required_platform_run_id)
    if existing is None:
        await conn.execute(
            "INSERT INTO policies (policy_id, revision, content_digest, content,"
            " run_config_digest, run_config) VALUES ($1, $2, $3, $4::jsonb, $5, $6::jsonb)",
            policy.policy_id,
            policy.revision,
            digest_now,
            json.dumps(policy.normalized()),
            run_digest_now,
            json.dumps(policy.run_config(required_platform_run_id)),
        )
        return False
    if existing["content_digest"] != digest_now:
        raise PolicyConflictError(
            f"policy {policy.policy_id} revision {policy.revision} is already recorded with"
            " different content; a changed policy needs a new revision"
        )
    if existing["run_config_digest"] != run_digest_now:
        raise PolicyConflictError(
            f"policy {policy.policy_id} revision {policy.revision} is recorded with a"
            " different run filter; one database serves one run configuration per revision"
        )
    return True


class PolicyConflictError(ValueError):
    """The policy contradicts what the database recorded; the message names the field."""


async def record_group(conn: Conn, g: FeatureGroup) -> int:
    """The group's id; a (name, version) recorded with another meaning is refused.

    Stored rows and served values mean what the group's definition says, so a
    later revision may not change a definition under the same (name, version):
    a changed meaning needs a new version.
    """
    definition = group_definition(g)
    await conn.execute(
        "INSERT INTO feature_groups (name, version, key_type, definition)"
        " VALUES ($1, $2, $3, $4::jsonb) ON CONFLICT (name, version) DO NOTHING",
        g.name,
        g.version,
        g.key_type,
        json.dumps(definition),
    )
    row = await conn.fetchrow(
        "SELECT group_id, key_type, definition FROM feature_groups"
        " WHERE name = $1 AND version = $2",
        g.name,
        g.version,
    )
    assert row is not None
    recorded = row["definition"]
    if recorded is None:
        # Recorded before definitions were kept: only the key type is known;
        # with it confirmed, the definition is kept from now on.
        recorded = {"key_type": row["key_type"]}
        definition_now = {"key_type": g.key_type}
        if row["key_type"] == g.key_type:
            await conn.execute(
                "UPDATE feature_groups SET definition = $2::jsonb WHERE group_id = $1",
                row["group_id"],
                json.dumps(definition),
            )
    else:
        if isinstance(recorded, str):
            recorded = json.loads(recorded)
        definition_now = definition
    for name in sorted(set(recorded) | set(definition_now)):
        if recorded.get(name) != definition_now.get(name):
            raise PolicyConflictError(
                f"feature group {g.name} {g.version} was recorded with {name}"
                f" {recorded.get(name)!r}, the policy now says {definition_now.get(name)!r};"
                " a (name, version) never changes meaning: give the changed group a new version"
            )
    return int(row["group_id"])


def group_definition(g: FeatureGroup) -> dict[str, Any]:
    """What a group's (name, version) stands for: its normalized form without the names."""
    doc = g.normalized()
    del doc["name"], doc["version"]
    return doc


async def ensure_partitions(
    conn: Conn, *, stream: str, offset_kind: str, partitions: list[int]
) -> None:
    """Give every known partition a checkpoint row (offset 0) so it is part of the basis."""
    await conn.execute(
        "INSERT INTO checkpoints (stream, partition, offset_kind, next_offset)"
        " SELECT $1, p, $2, 0 FROM unnest($3::integer[]) AS p"
        " ON CONFLICT (stream, partition) DO NOTHING",
        stream,
        offset_kind,
        partitions,
    )


async def read_checkpoints(conn: Conn, stream: str) -> dict[int, int]:
    rows = await conn.fetch(
        "SELECT partition, next_offset FROM checkpoints WHERE stream = $1", stream
    )
    return {int(r["partition"]): int(r["next_offset"]) for r in rows}


async def resolve_scopes(
    conn: Conn, pins: set[Pins], known: dict[Pins, int]
) -> dict[Pins, int]:
    """Scope ids for `pins`, creating the scopes that do not exist yet (inside the caller's tx)."""
    missing = sorted(p for p in pins if p not in known)
    if not missing:
        return {}
    cols = list(zip(*missing, strict=True))
    args: list[Any] = [list(c) for c in cols[:5]] + [[Decimal(s) for s in cols[5]]]
    await conn.execute(
        "INSERT INTO run_scopes (platform_run_id, scenario_run_id, scenario_id,"
        " manifest_fingerprint, parameter_hash, seed)"
        " SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],"
        " $6::numeric[]) ON CONFLICT DO NOTHING",
        *args,
    )
    rows = await conn.fetch(
        "SELECT s.scope_id, s.platform_run_id, s.scenario_run_id, s.scenario_id,"
        " s.manifest_fingerprint, s.parameter_hash, s.seed FROM run_scopes s"
        " JOIN unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::numeric[])"
        " AS u(a, b, c, d, e, f) ON (s.platform_run_id, s.scenario_run_id, s.scenario_id,"
        " s.manifest_fingerprint, s.parameter_hash, s.seed) = (u.a, u.b, u.c, u.d, u.e, u.f)",
        *args,
    )
    return {
        (r[1], r[2], r[3], r[4], r[5], int(r[6])): int(r["scope_id"]) for r in rows
    }


# Event time allowed past the database clock at apply time before an event is
# quarantined as ts_in_future (contract 2.2 as amended; Settings.max_future_skew_s).
DEFAULT_MAX_FUTURE_US = 300 * 1_000_000


class StoreRefusal(NamedTuple):
    """A record the database refused for a reason of its own (SQLSTATE class 22 or 54)."""

    offset: int
    sqlstate: str
    message: str


def refused_by_store(exc: BaseException) -> bool:
    """True when PostgreSQL refused the data itself: a data exception (class 22:
    out of range, invalid encoding, ...) or a program limit (class 54: an index
    entry or a row too large). A record can cause these; a retry cannot cure them."""
    if not isinstance(exc, asyncpg.PostgresError):
        return False
    state = getattr(exc, "sqlstate", None) or ""
    return state[:2] in ("22", "54")


def retention_lock_key(stream: str) -> str:
    """The advisory lock that orders a batch's floor check against a prune."""
    return f"ofp.retention:{stream}"


async def apply_batch(
    conn: Conn,
    *,
    stream: str,
    partition: int,
    start_offset: int,
    next_offset: int,
    records: list[Record],
    group_ids: list[int],
    scope_cache: dict[Pins, int],
    fence: Fence | None = None,
    closes_partition: bool = False,
    max_future_us: int = DEFAULT_MAX_FUTURE_US,
    epoch: int | None = None,
    mark_seen: bool = False,
) -> BatchResult:
    """Apply `records` in ONE transaction and move the checkpoint start_offset -> next_offset.

    `start_offset` is the checkpoint the batch continues from (for the file-bus
    the first record's line; for Kinesis the last applied sequence number + 1)
    and `next_offset` the exclusive-next offset after the batch. With a
    `fence`, the batch commits only while `fence.token` is the partition's
    current lease token; the lease row is locked until commit, so a takeover
    waits for this batch and then sees its checkpoint. `closes_partition`
    marks a Kinesis shard whose SHARD_END has been reached. Every record gets
    exactly one outcome, the one it would get if the records were applied one
    at a time in offset order: outcomes never depend on the batch size.
    `scope_cache` is only extended after the commit. `epoch` is the rollout
    epoch the records were classified under (`ofp.store.rollout`): a batch
    classified under another raises ProjectionChangedError. `mark_seen`
    (while a staged revision is backfilled) records the applied events in
    `backfill_seen`, so the backfill does not apply them again.

    The steps: fence and checkpoint (which also read the retention floor and
    the database clock), the time rules (`ts_in_future`,
    `below_retention_floor`), dedupe settlement, state, quarantine rows,
    the event-time high mark and the outcome counters.
    """
    result = BatchResult(next_offset=next_offset)
    new_scopes: dict[Pins, int] = {}
    async with conn.transaction():
        floor_us, now_us = await _fence_and_move_checkpoint(
            conn, stream=stream, partition=partition, start_offset=start_offset,
            next_offset=next_offset, n_records=len(records), fence=fence,
            closes_partition=closes_partition, epoch=epoch,
        )
        pins_needed = {
            c.pins for r in records if isinstance(c := r.classified, Candidate)
        }
        new_scopes = await resolve_scopes(conn, pins_needed, scope_cache)
        scopes = {**scope_cache, **new_scopes} if new_scopes else scope_cache

        quarantined: list[tuple[Record, Quarantined]] = []
        candidates: list[tuple[Record, Candidate]] = []
        future_limit_us = now_us + max_future_us
        for r in records:
            c = r.classified
            if isinstance(c, Candidate):
                if c.ts_us > future_limit_us:
                    quarantined.append((r, _in_future(c, now_us, max_future_us)))
                elif floor_us is not None and c.ts_us <= floor_us:
                    # Its window state (and its dedupe row) may be gone: applied
                    # again, it would add rows no read can see.
                    result.outcomes[(Outcome.IGNORED, IgnoreReason.BELOW_RETENTION_FLOOR)] += 1
                else:
                    candidates.append((r, c))
            elif isinstance(c, Quarantined):
                quarantined.append((r, c))
            else:
                result.outcomes[(Outcome.IGNORED, c.reason)] += 1

        valid_ts: list[int] = []
        if candidates:
            settled = await _settle_and_store(conn, candidates, scopes, group_ids,
                                              mark_seen=mark_seen, partition=partition,
                                              floor_us=floor_us)
            valid_ts = settled.valid_ts
            quarantined.extend(settled.conflicts)
            if settled.applied:
                result.outcomes[(Outcome.APPLIED, "")] += settled.applied
            if settled.duplicates:
                result.outcomes[(Outcome.DUPLICATE, "")] += settled.duplicates

        if quarantined:
            await _insert_quarantine(conn, stream, partition, quarantined)
            for _, q in quarantined:
                result.outcomes[(Outcome.QUARANTINED, q.reason)] += 1
        if valid_ts:
            result.max_event_us = max(valid_ts)
            await conn.execute(
                "UPDATE checkpoints SET max_event_us = GREATEST(max_event_us, $3)"
                " WHERE stream = $1 AND partition = $2",
                stream,
                partition,
                result.max_event_us,
            )
        await _add_counters(conn, stream, partition, result.outcomes)
    scope_cache.update(new_scopes)
    return result


async def lock_lease(conn: Conn, stream: str, partition: int, fence: Fence) -> None:
    """Lock the partition's lease row while `fence` still holds it (until commit: a
    takeover waits for this transaction); LeaseLostError otherwise."""
    held = await conn.fetchval(
        "SELECT 1 FROM partition_leases WHERE stream = $1 AND partition = $2"
        " AND token = $3 AND owner = $4 FOR UPDATE",
        stream,
        partition,
        fence.token,
        fence.owner,
    )
    if held is None:
        raise LeaseLostError(f"{stream}/{partition}: lease token {fence.token} is gone")


async def unstage(
    conn: Conn, keys: Iterable[tuple[int, str]], *, has_values: bool
) -> None:
    """Drop the staged rows of these (scope_id, event_id): they must not reach the state."""
    keys = list(keys)
    for stage in ("ofp_batch", *(("ofp_values",) if has_values else ())):
        await conn.execute(
            f"DELETE FROM {stage} b USING unnest($1::integer[], $2::text[])"
            " AS r(s, e) WHERE b.scope_id = r.s AND b.event_id = r.e",
            [k[0] for k in keys],
            [k[1] for k in keys],
        )


async def _fence_and_move_checkpoint(
    conn: Conn,
    *,
    stream: str,
    partition: int,
    start_offset: int,
    next_offset: int,
    n_records: int,
    fence: Fence | None,
    closes_partition: bool,
    epoch: int | None = None,
) -> tuple[int | None, int]:
    """Check the fence, move the checkpoint; return (retention floor, database clock µs).

    The shared retention lock is taken before the floor is read (in the next
    statement, so in a snapshot taken after the lock): a prune, which takes
    it exclusively, either committed before (its floor is seen) or waits for
    this batch to commit. The rollout epoch is read after the lease lock, so a
    live_from recorded under the lease (rollout.record_live_from) is seen.
    """
    if fence is not None:
        await lock_lease(conn, stream, partition, fence)
    await conn.execute(
        "SELECT pg_advisory_xact_lock_shared(hashtext($1))", retention_lock_key(stream)
    )
    moved = await conn.fetchrow(
        "UPDATE checkpoints SET next_offset = $3, updated_at = now(),"
        " last_applied_at = now(), lease_token = $5, closed = closed OR $6"
        " WHERE stream = $1 AND partition = $2 AND next_offset = $4"
        " RETURNING (SELECT retained_from_us FROM retention WHERE stream = $1) AS floor_us,"
        " (extract(epoch FROM now()) * 1000000)::bigint AS now_us,"
        " (SELECT epoch FROM active_policy) AS epoch,"
        # Delivered at commit: servers waiting for a basis re-read the
        # checkpoints (ofp.store.basis).
        " pg_notify('ofp_checkpoints', $1) AS notified",
        stream,
        partition,
        Decimal(next_offset),
        Decimal(start_offset),
        None if fence is None else fence.token,
        closes_partition,
    )
    if moved is None:
        raise CheckpointConflictError(
            f"{stream}/{partition}: checkpoint is not at {start_offset}"
        )
    if epoch is not None and moved["epoch"] != epoch:
        raise ProjectionChangedError(
            f"{stream}/{partition}: classified under rollout epoch {epoch},"
            f" the store is at {moved['epoch']}"
        )
    await conn.execute(
        "INSERT INTO checkpoint_commits (stream, partition, token, owner, from_offset,"
        " next_offset, records) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        stream,
        partition,
        None if fence is None else fence.token,
        None if fence is None else fence.owner,
        Decimal(start_offset),
        Decimal(next_offset),
        n_records,
    )
    floor = moved["floor_us"]
    return (None if floor is None else int(floor)), int(moved["now_us"])


@dataclass(slots=True)
class _Settled:
    applied: int = 0
    duplicates: int = 0
    valid_ts: list[int] = field(default_factory=list)
    conflicts: list[tuple[Record, Quarantined]] = field(default_factory=list)


async def _settle_and_store(
    conn: Conn,
    candidates: list[tuple[Record, Candidate]],
    scopes: dict[Pins, int],
    group_ids: list[int],
    *,
    mark_seen: bool = False,
    partition: int | None = None,
    floor_us: int | None = None,
) -> _Settled:
    """Dedupe settlement and state, judged as if the records came one at a time.

    In offset order, the first copy of an event_id that the store does not hold
    is APPLIED; every other copy, in this batch or a later one, is compared
    with the copy that was applied (the store's, or this batch's first): the
    same payload hash is a DUPLICATE, another is a payload conflict.
    """
    settled = _Settled()
    first_seen: dict[tuple[int, str], Candidate] = {}
    repeats: list[tuple[Record, Candidate]] = []
    firsts: list[tuple[Record, Candidate]] = []
    for r, c in candidates:
        k = (scopes[c.pins], c.event_id)
        if k in first_seen:
            repeats.append((r, c))
        else:
            first_seen[k] = c
            firsts.append((r, c))
    # Where each applied event sits on the bus, kept with its dedupe row for the
    # late-data audit (docs/audit.md).
    origin = None if partition is None else (
        partition, {(scopes[c.pins], c.event_id): r.offset for r, c in firsts})
    has_values = await _stage(conn, first_seen, group_ids, origin)
    # The ids the store holds at any event time above the floor (each in the
    # partition of its own time): they leave the stage before the insert, so
    # none is claimed twice at two times (docs/decisions.md, "Time-partitioned
    # state", the dedupe key).
    held = await _held_ids(conn, floor_us)
    if held:
        await unstage(conn, held, has_values=has_values)
    # Keys the store already held: usually none, which the insert's row
    # count shows without sending any key back.
    status = await conn.execute(_INSERT_DEDUPE)
    rejected: set[tuple[int, str]] = set()
    if int(status.rsplit(" ", 1)[1]) != len(first_seen) - len(held):
        rejected = {(int(r[0]), r[1]) for r in await conn.fetch(_REJECTED_DEDUPE)}
    # The payload hash of the copy each event_id was applied with.
    reference = {k: c.payload_hash for k, c in first_seen.items()
                 if k not in rejected and k not in held}
    if rejected:
        # A separate statement: it must see rows that a concurrent batch
        # committed while the insert above waited for them.
        rows = await conn.fetch(
            "SELECT d.scope_id, d.event_id, d.payload_hash FROM event_dedupe d"
            " JOIN unnest($1::integer[], $2::text[], $3::bigint[]) AS u(s, e, t)"
            " ON d.scope_id = u.s AND d.event_id = u.e AND d.ts_us = u.t",
            [k[0] for k in rejected],
            [k[1] for k in rejected],
            [first_seen[k].ts_us for k in rejected],
        )
        for row in rows:
            reference[(int(row[0]), row[1])] = bytes(row[2])
    reference.update(held)
    rejected |= held.keys()
    settled.applied = len(first_seen) - len(rejected)
    settled.valid_ts = [c.ts_us for k, c in first_seen.items() if k not in rejected]
    for rec, cand in [*((r, c) for r, c in firsts if (scopes[c.pins], c.event_id) in rejected),
                      *repeats]:
        if reference.get((scopes[cand.pins], cand.event_id)) == cand.payload_hash:
            settled.duplicates += 1
            settled.valid_ts.append(cand.ts_us)
        else:
            settled.conflicts.append((rec, _conflict(cand)))
    if settled.applied:
        if rejected:
            # The stage still holds the events the store refused: only the
            # applied ones may reach the state.
            await unstage(conn, rejected, has_values=has_values)
        if mark_seen:
            await conn.execute(_INSERT_SEEN)
        await conn.execute(_INSERT_STATE, TILE_US)
        if has_values:
            await conn.execute(_INSERT_VALUES)
            await conn.execute(_INSERT_DISTINCT)
            await _merge_sketches(conn, [
                (k, c) for k, c in first_seen.items() if k not in rejected], group_ids)
    return settled


async def _stage(
    conn: Conn, events: dict[tuple[int, str], Candidate], group_ids: list[int],
    origin: tuple[int, dict[tuple[int, str], int]] | None = None,
) -> bool:
    """Copy `events` into the batch's staging tables; True when v1 values were staged.

    `ofp_batch`: one row per v0 contribution, the event's dedupe columns on each
    (`first` marks the row that stands for the event; an event with no v0
    contribution gets a row of its own, group 0, which the state insert skips).
    `ofp_values`: one row per (event, v1 feature) it contributes to. Binary
    COPY: array parameters would cost asyncpg several isinstance checks against
    ABCs per element. Amounts travel as Decimal text (exact, possibly with an
    exponent, which numeric input reads): asyncpg's binary numeric encoder costs
    about 2 µs a row, text a tenth.
    """
    rows: list[tuple[Any, ...]] = []
    values: list[tuple[Any, ...]] = []
    bus_partition, offsets = origin if origin is not None else (None, {})
    for k, c in events.items():
        first = True
        offset = offsets.get(k)
        where = (bus_partition, None if offset is None else str(offset))
        for contrib in c.contributions:
            gid = group_ids[contrib.group_index]
            if contrib.values is None:
                rows.append((k[0], k[1], c.payload_hash, c.ts_us, first, gid,
                             contrib.key_id, str(contrib.amount), *where))
                first = False
            else:
                values.extend(
                    (k[0], k[1], gid, contrib.key_id, feature, c.ts_us, num, val, kept == 1)
                    for feature, num, val, kept in contrib.values)
        if first:
            rows.append((k[0], k[1], c.payload_hash, c.ts_us, True, 0, "", "0", *where))
    await conn.execute(_STAGING_TABLE)
    await conn.copy_records_to_table("ofp_batch", records=rows, columns=_STAGED_COLUMNS)
    if values:
        await conn.execute(_VALUES_STAGING_TABLE)
        await conn.copy_records_to_table("ofp_values", records=values,
                                         columns=_VALUES_COLUMNS)
    return bool(values)


async def _merge_sketches(
    conn: Conn, applied: list[tuple[tuple[int, str], Candidate]], group_ids: list[int]
) -> None:
    """Fold the applied events' approx_distinct_count values into their tiles' sketches.

    Read-modify-write under row locks, tiles in key order (as every tile write),
    so concurrent batches of other partitions wait rather than lose an update.
    """
    tiles: dict[tuple[int, int, str, int, int, int], list[str]] = {}
    for (scope_id, _), c in applied:
        for contrib in c.contributions:
            for feature, _, val, kept in contrib.values or ():
                if kept != 2 or val is None:
                    continue
                gid = group_ids[contrib.group_index]
                for size in SKETCH_TILE_SIZES_US:
                    start = c.ts_us - c.ts_us % size
                    tiles.setdefault((scope_id, gid, contrib.key_id, feature, size, start),
                                     []).append(val)
    if not tiles:
        return
    keys = sorted(tiles)
    hours_of_new_days = await _new_day_sketches(conn, [k for k in keys if k[4] == DAY_US])
    cols = list(zip(*keys, strict=True))
    rows = await conn.fetch(
        "SELECT s.scope_id, s.group_id, s.key_id, s.feature, s.tile_us, s.tile_start_us,"
        " s.sketch FROM fv_sketches s JOIN unnest($1::integer[], $2::smallint[], $3::text[],"
        " $4::smallint[], $5::bigint[], $6::bigint[]) AS u(a, b, c, d, e, f)"
        " ON (s.scope_id, s.group_id, s.key_id, s.feature, s.tile_us, s.tile_start_us)"
        " = (u.a, u.b, u.c, u.d, u.e, u.f)"
        ' ORDER BY s.scope_id, s.group_id, s.key_id, s.feature, s.tile_us, s.tile_start_us'
        " FOR UPDATE OF s",
        *[list(c) for c in cols],
    )
    existing = {tuple(r[:6]): bytes(r[6]) for r in rows}
    merged_rows = [(*k, sketches.merged(existing.get(k), tiles[k], hours_of_new_days.get(k, ())))
                   for k in keys]
    await conn.executemany(
        "INSERT INTO fv_sketches (scope_id, group_id, key_id, feature, tile_us, tile_start_us,"
        " sketch) VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (scope_id, group_id,"
        " key_id, feature, tile_us, tile_start_us) DO UPDATE SET sketch = EXCLUDED.sketch",
        merged_rows,
    )


async def _new_day_sketches(
    conn: Conn, days: list[tuple[int, int, str, int, int, int]]
) -> dict[tuple[int, int, str, int, int, int], list[bytes]]:
    """Create the missing day sketches of `days` (sorted keys), empty; the hour
    sketches of each day created, by day key.

    No fv_tiles row stands for a day, so the fv_tiles rows that serialize the
    writers of minute and hour sketches do not serialize a day sketch's: it is
    inserted first, and a concurrent batch creating the same one waits for this
    one to end, then updates the committed sketch. A day sketch starts as the
    union of its day's hour sketches, so it holds every value of its day even
    when some were written before day sketches existed (migration 0008): reads
    take a day sketch for the whole day (`ofp.store.reads._sketch_sources`).
    """
    if not days:
        return {}
    cols = [list(c) for c in zip(*days, strict=True)]
    created = await conn.fetch(
        "INSERT INTO fv_sketches (scope_id, group_id, key_id, feature, tile_us, tile_start_us,"
        " sketch) SELECT a, b, c, d, e, f, $7 FROM unnest($1::integer[], $2::smallint[],"
        " $3::text[], $4::smallint[], $5::bigint[], $6::bigint[]) WITH ORDINALITY"
        " AS u(a, b, c, d, e, f, o) ORDER BY o ON CONFLICT DO NOTHING"
        " RETURNING scope_id, group_id, key_id, feature, tile_us, tile_start_us",
        *cols, sketches.EMPTY,
    )
    if not created:
        return {}
    new = [tuple(r) for r in created]
    c = [list(x) for x in zip(*new, strict=True)]
    rows = await conn.fetch(
        "SELECT u.o, s.sketch FROM unnest($1::integer[], $2::smallint[], $3::text[],"
        " $4::smallint[], $5::bigint[]) WITH ORDINALITY AS u(a, b, c, d, e, o)"
        " JOIN fv_sketches s ON s.scope_id = u.a AND s.group_id = u.b AND s.key_id = u.c"
        f" AND s.feature = u.d AND s.tile_us = {HOUR_US} AND s.tile_start_us >= u.e"
        f" AND s.tile_start_us < u.e + {DAY_US}",
        c[0], c[1], c[2], c[3], c[5],
    )
    hours: dict[tuple[int, int, str, int, int, int], list[bytes]] = {}
    for r in rows:
        hours.setdefault(new[r[0] - 1], []).append(bytes(r[1]))
    return hours


async def _insert_quarantine(
    conn: Conn, stream: str, partition: int,
    quarantined: list[tuple[Record, Quarantined]],
) -> None:
    quarantined.sort(key=lambda x: x[0].offset)
    await conn.executemany(
        "INSERT INTO quarantine (stream, partition, record_offset, reason, detail,"
        " event_id, raw) VALUES ($1, $2, $3, $4, $5, $6, $7)"
        " ON CONFLICT (stream, partition, record_offset) DO NOTHING",
        [
            (stream, partition, Decimal(r.offset), q.reason.value, storable(q.detail),
             None if q.event_id is None else storable(q.event_id[:256]), r.raw)
            for r, q in quarantined
        ],
    )


async def _add_counters(
    conn: Conn, stream: str, partition: int,
    outcomes: Counter[tuple[str, str]],
) -> None:
    if not outcomes:
        return
    items = sorted(outcomes.items())
    await conn.execute(
        "INSERT INTO outcome_counters (stream, partition, outcome, reason, n)"
        " SELECT $1, $2, o, r, n FROM unnest($3::text[], $4::text[], $5::bigint[])"
        " AS u(o, r, n) ON CONFLICT (stream, partition, outcome, reason)"
        " DO UPDATE SET n = outcome_counters.n + EXCLUDED.n",
        stream,
        partition,
        [str(k[0]) for k, _ in items],
        [str(k[1]) for k, _ in items],
        [n for _, n in items],
    )


async def find_store_refusals(
    conn: Conn,
    records: list[Record],
    group_ids: list[int],
    scope_cache: dict[Pins, int],
) -> list[StoreRefusal]:
    """The records of a failed batch that the database refuses on their own.

    Runs the batch's store steps in a transaction that is always rolled back,
    halving the candidates under savepoints until each refusal is pinned to a
    single record (O(k log n) statements for k bad records among n). A failure
    that no single record reproduces is not the records' own: it is raised.
    """
    candidates = [(r, c) for r in records if isinstance(c := r.classified, Candidate)]
    found: list[StoreRefusal] = []
    tx = conn.transaction()
    await tx.start()
    try:
        await _bisect(conn, candidates, group_ids, dict(scope_cache), found)
    finally:
        await tx.rollback()
    return sorted(found)


async def _bisect(
    conn: Conn,
    candidates: list[tuple[Record, Candidate]],
    group_ids: list[int],
    scopes: dict[Pins, int],
    found: list[StoreRefusal],
) -> None:
    if not candidates:
        return
    try:
        async with conn.transaction():  # a savepoint inside the probe
            await _probe_store(conn, candidates, group_ids, scopes)
        return
    except asyncpg.PostgresError as exc:
        if not refused_by_store(exc):
            raise
        if len(candidates) == 1:
            found.append(StoreRefusal(
                candidates[0][0].offset, str(exc.sqlstate), str(exc).splitlines()[0][:200]
            ))
            return
        failure = exc
    mid = len(candidates) // 2
    before = len(found)
    await _bisect(conn, candidates[:mid], group_ids, scopes, found)
    await _bisect(conn, candidates[mid:], group_ids, scopes, found)
    if len(found) == before:
        raise failure


async def _probe_store(
    conn: Conn,
    candidates: list[tuple[Record, Candidate]],
    group_ids: list[int],
    scopes: dict[Pins, int],
) -> None:
    """The store steps of `_settle_and_store` for `candidates`, in the caller's savepoint."""
    probe_scopes = {**scopes, **await resolve_scopes(conn, {c.pins for _, c in candidates},
                                                     scopes)}
    events: dict[tuple[int, str], Candidate] = {}
    for _, c in candidates:
        events.setdefault((probe_scopes[c.pins], c.event_id), c)
    has_values = await _stage(conn, events, group_ids)
    await conn.execute(_INSERT_DEDUPE)
    await conn.execute(_INSERT_STATE, TILE_US)
    await conn.execute("DELETE FROM ofp_batch")
    if has_values:
        await conn.execute(_INSERT_VALUES)
        await conn.execute(_INSERT_DISTINCT)
        await _merge_sketches(conn, list(events.items()), group_ids)
        await conn.execute("DELETE FROM ofp_values")


def _conflict(c: Candidate) -> Quarantined:
    return Quarantined(
        QuarantineReason.PAYLOAD_CONFLICT,
        "event_id already applied in this scope with a different payload hash",
        c.event_id,
    )


def _in_future(c: Candidate, now_us: int, max_future_us: int) -> Quarantined:
    return Quarantined(
        QuarantineReason.TS_IN_FUTURE,
        f"ts_utc {format_micros(c.ts_us)} is more than {max_future_us // 1_000_000} s past"
        f" the database clock ({format_micros(now_us)}); replay it when its time has come",
        c.event_id,
    )


# Per-session staging of one batch; ON COMMIT DELETE ROWS empties it with each
# transaction, so a batch never sees another's rows.
_STAGING_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS ofp_batch (scope_id integer NOT NULL,"
    " event_id text NOT NULL, payload_hash bytea NOT NULL, ts_us bigint NOT NULL,"
    " first boolean NOT NULL, group_id smallint NOT NULL, key_id text NOT NULL,"
    " amount text NOT NULL, bus_partition integer, bus_offset text) ON COMMIT DELETE ROWS"
)
_STAGED_COLUMNS = [
    "scope_id", "event_id", "payload_hash", "ts_us", "first", "group_id", "key_id", "amount",
    "bus_partition", "bus_offset",
]
# Rows are inserted in key order (code point order, as Python sorts str) so
# concurrent batches of different partitions take row locks in one order.
_INSERT_DEDUPE = (
    "INSERT INTO event_dedupe (scope_id, event_id, payload_hash, ts_us, bus_partition,"
    " bus_offset) SELECT scope_id, event_id, payload_hash, ts_us, bus_partition,"
    " bus_offset::numeric FROM ofp_batch WHERE first"
    ' ORDER BY scope_id, event_id COLLATE "C"'
    " ON CONFLICT DO NOTHING"
)
# The staged keys this transaction did not insert: the store held them already
# (or another batch committed them while the insert waited). Only asked when
# the insert's count falls short; the batch's own rows carry its xid as xmin
# (the apply runs in one transaction without savepoints).
_REJECTED_DEDUPE = (
    "SELECT b.scope_id, b.event_id FROM ofp_batch b WHERE b.first AND NOT EXISTS"
    " (SELECT 1 FROM event_dedupe d WHERE d.scope_id = b.scope_id"
    " AND d.event_id = b.event_id AND d.xmin = pg_current_xact_id()::xid)"
)
# The batch's ids claimed in event_claims (migration 0009): a concurrent batch
# holding one of them makes the insert wait until it ends, after which its
# dedupe row is visible to the next statement, whatever time partition it
# went to. Deleted again at once: the wait is on the inserting transaction,
# which holds it until commit, not on the row. One round trip.
_CLAIM_IDS = (
    "INSERT INTO event_claims (scope_id, event_id) SELECT scope_id, event_id FROM ofp_batch"
    ' WHERE first ORDER BY scope_id, event_id COLLATE "C" ON CONFLICT DO NOTHING;'
    " DELETE FROM event_claims c USING ofp_batch b WHERE b.first"
    " AND c.scope_id = b.scope_id AND c.event_id = b.event_id"
)
# The staged ids the store holds above the retention floor ($1), at any event
# time: one index probe per time partition (a row at or below the floor counts
# as gone, as it did when retention deleted rows).
_HELD_DEDUPE = (
    "SELECT b.scope_id, b.event_id, h.payload_hash FROM ofp_batch b CROSS JOIN LATERAL"
    " (SELECT d.payload_hash FROM event_dedupe d WHERE d.scope_id = b.scope_id"
    " AND d.event_id = b.event_id AND d.ts_us > $1 LIMIT 1) h WHERE b.first"
)
_NO_FLOOR = -(2**63)


async def _held_ids(conn: Conn, floor_us: int | None) -> dict[tuple[int, str], bytes]:
    """Claim the staged ids, then the payload hash of each the store already holds."""
    await conn.execute(_CLAIM_IDS)
    rows = await conn.fetch(_HELD_DEDUPE, _NO_FLOOR if floor_us is None else floor_us)
    return {(int(r[0]), r[1]): bytes(r[2]) for r in rows}


# The applied events of the batch (the stage holds only those by now), for
# the backfill of a staged revision (ofp.store.rollout).
_INSERT_SEEN = (
    "INSERT INTO backfill_seen (scope_id, event_id) SELECT scope_id, event_id FROM ofp_batch"
    ' WHERE first ORDER BY scope_id, event_id COLLATE "C" ON CONFLICT DO NOTHING'
)
# The staged contributions become feature events, and their exact sums per
# (key, tile) are folded into the tiles by PostgreSQL: numeric addition there
# is exact, as it is in Decimal, and the rows cross the wire once. Tile starts
# floor to the tile ($1 µs) before 1970 too, as windows.tile_start does.
_INSERT_STATE = (
    "WITH ev AS (INSERT INTO feature_events (scope_id, group_id, key_id, ts_us, amount)"
    " SELECT scope_id, group_id, key_id, ts_us, amount::numeric FROM ofp_batch"
    " WHERE group_id > 0)"
    " INSERT INTO feature_tiles (scope_id, group_id, key_id, tile_start_us, event_count,"
    " amount_sum) SELECT scope_id, group_id, key_id, tile, count(*), sum(amount)"
    " FROM (SELECT scope_id, group_id, key_id, amount::numeric AS amount,"
    " ts_us - ((ts_us % $1::bigint) + $1::bigint) % $1::bigint AS tile"
    " FROM ofp_batch WHERE group_id > 0) s"
    ' GROUP BY scope_id, group_id, key_id, tile ORDER BY scope_id, group_id, key_id COLLATE "C",'
    " tile ON CONFLICT (scope_id, group_id, key_id, tile_start_us) DO UPDATE SET"
    " event_count = feature_tiles.event_count + EXCLUDED.event_count,"
    " amount_sum = feature_tiles.amount_sum + EXCLUDED.amount_sum"
)


# v1 feature values (docs/features.md): per (event, feature) rows, staged like
# the v0 contributions.
_VALUES_STAGING_TABLE = (
    "CREATE TEMP TABLE IF NOT EXISTS ofp_values (scope_id integer NOT NULL,"
    " event_id text NOT NULL, group_id smallint NOT NULL, key_id text NOT NULL,"
    " feature smallint NOT NULL, ts_us bigint NOT NULL, num text, val text,"
    " dist boolean NOT NULL) ON COMMIT DELETE ROWS"
)
_VALUES_COLUMNS = [
    "scope_id", "event_id", "group_id", "key_id", "feature", "ts_us", "num", "val", "dist"
]


def _pick(side: str, col: str) -> str:
    """The tile's earliest (`first`) or latest (`last`) event column after a merge."""
    newer = "<" if side == "first" else ">"
    cond = (f"(EXCLUDED.{side}_ts, EXCLUDED.{side}_eid) {newer}"
            f" (fv_tiles.{side}_ts, fv_tiles.{side}_eid)")
    return (f"{side}_{col} = CASE WHEN {cond} THEN EXCLUDED.{side}_{col}"
            f" ELSE fv_tiles.{side}_{col} END")


def _plus(col: str) -> str:
    return (f"{col} = CASE WHEN fv_tiles.{col} IS NULL THEN EXCLUDED.{col}"
            f" WHEN EXCLUDED.{col} IS NULL THEN fv_tiles.{col}"
            f" ELSE fv_tiles.{col} + EXCLUDED.{col} END")


# The staged values become fv_events rows, and each feature's intermediates per
# minute tile and per hour tile are folded into fv_tiles: exact numeric sums
# and sums of squares, min, max, and the earliest / latest event by
# (ts_us, event_id) with its value. Rows go in key order so concurrent batches
# lock tiles in one order.
_ORDER_ASC = 'ORDER BY ts_us, event_id COLLATE "C"'
_ORDER_DESC = 'ORDER BY ts_us DESC, event_id COLLATE "C" DESC'
_INSERT_VALUES = (
    "WITH ev AS (INSERT INTO fv_events (scope_id, group_id, key_id, feature, ts_us,"
    " event_id, num, val) SELECT scope_id, group_id, key_id, feature, ts_us, event_id,"
    " num::numeric, val FROM ofp_values)"
    " INSERT INTO fv_tiles (scope_id, group_id, key_id, feature, tile_us, tile_start_us,"
    " n, s, s2, mn, mx, first_ts, first_eid, first_val, last_ts, last_eid, last_val)"
    " SELECT scope_id, group_id, key_id, feature, l.tile_us,"
    " ts_us - ((ts_us % l.tile_us) + l.tile_us) % l.tile_us AS tile_start,"
    " count(*), sum(num), sum(num * num), min(num), max(num),"
    f" (array_agg(ts_us {_ORDER_ASC}))[1], (array_agg(event_id {_ORDER_ASC}))[1],"
    f" (array_agg(val {_ORDER_ASC}))[1],"
    f" (array_agg(ts_us {_ORDER_DESC}))[1], (array_agg(event_id {_ORDER_DESC}))[1],"
    f" (array_agg(val {_ORDER_DESC}))[1]"
    " FROM (SELECT scope_id, group_id, key_id, feature, ts_us, event_id,"
    " num::numeric AS num, val FROM ofp_values) v"
    f" CROSS JOIN (VALUES ({MINUTE_US}::bigint), ({HOUR_US}::bigint)) AS l(tile_us)"
    " GROUP BY scope_id, group_id, key_id, feature, l.tile_us, tile_start"
    ' ORDER BY scope_id, group_id, key_id COLLATE "C", feature, l.tile_us, tile_start'
    " ON CONFLICT (scope_id, group_id, key_id, feature, tile_us, tile_start_us) DO UPDATE SET"
    " n = fv_tiles.n + EXCLUDED.n, "
    + ", ".join([_plus("s"), _plus("s2"),
                 "mn = LEAST(fv_tiles.mn, EXCLUDED.mn)", "mx = GREATEST(fv_tiles.mx, EXCLUDED.mx)",
                 *(_pick(side, col) for side in ("first", "last") for col in ("ts", "eid", "val"))])
)


# distinct_count: each tile's distinct values, once each (docs/features.md), in
# minute, hour and day tiles (day tiles: migration 0008).
_INSERT_DISTINCT = (
    "INSERT INTO fv_distinct (scope_id, group_id, key_id, feature, tile_us, tile_start_us, val)"
    " SELECT DISTINCT scope_id, group_id, key_id, feature, l.tile_us,"
    " ts_us - ((ts_us % l.tile_us) + l.tile_us) % l.tile_us, val FROM ofp_values"
    f" CROSS JOIN (VALUES ({MINUTE_US}::bigint), ({HOUR_US}::bigint), ({DAY_US}::bigint))"
    " AS l(tile_us) WHERE dist ORDER BY 1, 2, 3, 4, 5, 6, 7 ON CONFLICT DO NOTHING"
)


async def prune_retention(
    conn: Conn, *, stream: str, horizon_us: int
) -> int | None:
    """Give up state at or below `min(watermark, database clock) - horizon`; return
    the new floor, or None.

    The database clock caps the cutoff, so no event time, however far in the
    future, can make retention give up what a request with an as-of near the
    present could need. Raising the floor is the whole of it here: from then
    on an as-of whose largest window reaches below the floor is refused (never
    answered with a partial sum), so no read needs the rows below it, and the
    time partitions wholly below it are dropped afterwards
    (`ofp.store.timeparts.maintain`): never a row DELETE. The exclusive
    retention lock waits for the batches in flight (they hold it shared), so
    none of them applies an event at or below the new floor, and a dedupe
    row at or below it counts as gone (`_HELD_DEDUPE`).
    """
    async with conn.transaction():
        await check_stream(conn, stream)
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtext($1))", retention_lock_key(stream)
        )
        row = await conn.fetchrow(
            f"SELECT {WATERMARK_EXPR} AS watermark_us,"
            " (extract(epoch FROM now()) * 1000000)::bigint AS now_us"
            " FROM checkpoints WHERE stream = $1",
            stream,
        )
        if row is None or row["watermark_us"] is None:
            return None
        cutoff = min(int(row["watermark_us"]), int(row["now_us"])) - horizon_us
        current = await conn.fetchval(
            "SELECT retained_from_us FROM retention WHERE stream = $1 FOR UPDATE", stream
        )
        if current is not None and cutoff <= int(current):
            return None
        await conn.execute(
            "INSERT INTO retention (stream, retained_from_us) VALUES ($1, $2)"
            " ON CONFLICT (stream) DO UPDATE SET retained_from_us = EXCLUDED.retained_from_us",
            stream,
            cutoff,
        )
        # Nothing is deleted: the rows at or below the new floor are never
        # read again (a window that reaches them is refused), and the weeks
        # that hold only such rows are dropped whole afterwards, outside this
        # transaction (`ofp.store.timeparts.maintain`, migration 0009).
    return cutoff


class StreamMismatchError(PolicyConflictError):
    """The database already serves another stream; one database serves one stream."""


async def claim_stream(conn: Conn, stream: str) -> None:
    """Record `stream` as the database's stream, or refuse if it serves another.

    Feature state, dedupe rows and retention deletes carry no stream: two
    streams in one database would share dedupe and prune each other's state.
    """
    async with conn.transaction():
        await conn.execute(
            "INSERT INTO bus_stream (singleton, stream) VALUES (true, $1)"
            " ON CONFLICT (singleton) DO NOTHING",
            stream,
        )
        await check_stream(conn, stream)


async def check_stream(conn: Conn, stream: str) -> None:
    served = await conn.fetchval("SELECT stream FROM bus_stream")
    if served is not None and served != stream:
        raise StreamMismatchError(
            f"this database serves stream {served!r}, not {stream!r}: one database serves"
            " one stream (state and retention are not kept per stream); use another database,"
            " or `ofp replay` into an empty one"
        )
