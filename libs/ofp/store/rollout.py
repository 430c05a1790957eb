"""Rolling out a policy revision: stage, backfill, activate, roll back.

A staged revision's groups that no maintained revision has ("new" groups)
need the bus's history. The live projector starts applying them at a
per-partition offset `live_from`, recorded under its lease before its first
batch that does; the backfill replays each partition's [start, live_from)
into those groups only. An event reaches the new groups once: the applied
copy of its event_id (the dedupe row's payload hash), and only if no other
copy reached them already (`backfill_seen`, written by both sides while the
rollout runs). When every partition is replayed the staged revision has
caught up and may be activated; the previous revision stays maintained so a
rollback is instant and exact.

Every change of the applied set moves `active_policy.epoch`; batches check it
under their lease lock (`writes.ProjectionChangedError`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from ofp.events import Candidate
from ofp.model import Pins
from ofp.policy import Policy, policy_from_normalized, union_policy
from ofp.windows import TILE_US

from .db import Conn
from .writes import (
    _INSERT_DISTINCT,
    _INSERT_STATE,
    _INSERT_VALUES,
    Fence,
    PolicyConflictError,
    ProjectionChangedError,
    Record,
    _merge_sketches,
    _stage,
    lock_lease,
    lock_policies,
    record_group,
    record_revision,
    resolve_scopes,
    retention_lock_key,
    unstage,
)

# Tables holding a group's state, cleared when a group is staged afresh.
_STATE_TABLES = ("feature_events", "feature_tiles", "fv_events", "fv_tiles", "fv_distinct",
                 "fv_sketches")


@dataclass(frozen=True, slots=True)
class Rollout:
    """The recorded revisions and what the projector must apply, read together."""

    epoch: int
    active: Policy
    previous: Policy | None
    staged: Policy | None
    staged_caught_up: bool
    group_ids: dict[tuple[str, str], int]
    pending: frozenset[int]  # the staged revision's groups still being backfilled

    def applied(self) -> Policy:
        """The groups the projector applies: active, previous and staged."""
        return union_policy(self.active, [p for p in (self.previous, self.staged) if p])

    def servable(self, revision: str) -> Policy | None:
        """A revision a request may name: the active one, the previous one (still
        maintained), or the staged one once it has caught up."""
        if revision == self.active.revision:
            return self.active
        if self.previous is not None and revision == self.previous.revision:
            return self.previous
        if self.staged is not None and revision == self.staged.revision and self.staged_caught_up:
            return self.staged
        return None


async def read_rollout(conn: Conn) -> Rollout | None:
    """None before any revision is active."""
    row = await conn.fetchrow(
        "SELECT a.epoch, act.content AS active, prev.content AS previous,"
        " stg.content AS staged, s.caught_up_at IS NOT NULL AS caught_up,"
        " (SELECT array_agg(group_id) FROM backfill_groups) AS pending"
        " FROM active_policy a"
        " JOIN policies act ON (act.policy_id, act.revision) = (a.policy_id, a.revision)"
        " LEFT JOIN policies prev"
        "   ON (prev.policy_id, prev.revision) = (a.previous_policy_id, a.previous_revision)"
        " LEFT JOIN staged_policy s ON true"
        " LEFT JOIN policies stg ON (stg.policy_id, stg.revision) = (s.policy_id, s.revision)"
    )
    if row is None:
        return None
    groups = await conn.fetch("SELECT group_id, name, version FROM feature_groups")

    def pol(content: Any) -> Policy | None:
        if content is None:
            return None
        return policy_from_normalized(json.loads(content) if isinstance(content, str)
                                      else content)

    active = pol(row["active"])
    assert active is not None
    return Rollout(
        epoch=int(row["epoch"]),
        active=active,
        previous=pol(row["previous"]),
        staged=pol(row["staged"]),
        staged_caught_up=bool(row["caught_up"]),
        group_ids={(g["name"], g["version"]): int(g["group_id"]) for g in groups},
        pending=frozenset(int(g) for g in row["pending"] or ()),
    )


async def read_epoch(conn: Conn) -> int | None:
    value = await conn.fetchval("SELECT epoch FROM active_policy")
    return None if value is None else int(value)


@dataclass(frozen=True, slots=True)
class Staged:
    revision: str
    new_groups: list[str]  # "name version" of the groups to backfill
    already: bool  # this revision was staged before (a repeated stage resumes it)


async def stage_policy(
    conn: Conn, policy: Policy, required_platform_run_id: str | None
) -> Staged:
    """Record `policy` as the staged revision, its new groups to be backfilled."""
    async with conn.transaction():
        await lock_policies(conn)
        current = await conn.fetchrow(
            "SELECT a.policy_id, a.revision, a.previous_revision, p.content->>'source_topic'"
            " AS topic FROM active_policy a JOIN policies p USING (policy_id, revision)")
        if current is None:
            raise PolicyConflictError(
                "no revision is active yet: start the projector with a policy first"
                " (the first revision needs no backfill)")
        if policy.revision == current["revision"]:
            raise PolicyConflictError(f"revision {policy.revision} is already active")
        if policy.policy_id != current["policy_id"]:
            raise PolicyConflictError(
                f"the active policy is {current['policy_id']!r}, this file is"
                f" {policy.policy_id!r}: a revision must keep the policy id")
        if policy.source_topic != current["topic"]:
            raise PolicyConflictError(
                f"revision {policy.revision} reads {policy.source_topic!r}, the active revision"
                f" reads {current['topic']!r}: one database serves one stream")
        staged = await conn.fetchrow("SELECT revision FROM staged_policy")
        if staged is not None and staged["revision"] != policy.revision:
            raise PolicyConflictError(
                f"revision {staged['revision']} is staged: activate it or discard it"
                " (`ofp policy discard`) before staging another")
        await record_revision(conn, policy, required_platform_run_id)
        ids = {(g.name, g.version): await record_group(conn, g) for g in policy.groups}
        if staged is not None:
            pending = await conn.fetch(
                "SELECT g.name, g.version FROM backfill_groups b JOIN feature_groups g"
                " USING (group_id) ORDER BY 1, 2")
            return Staged(policy.revision, [f"{r[0]} {r[1]}" for r in pending], already=True)
        maintained = await conn.fetch(
            "SELECT DISTINCT g.group_id FROM active_policy a JOIN policies p"
            " ON (p.policy_id, p.revision) IN ((a.policy_id, a.revision),"
            " (a.previous_policy_id, a.previous_revision))"
            " CROSS JOIN LATERAL jsonb_array_elements(p.content->'feature_groups') fg"
            " JOIN feature_groups g ON (g.name, g.version) = (fg->>'name', fg->>'version')")
        have = {int(r[0]) for r in maintained}
        new = sorted(k for k, gid in ids.items() if gid not in have)
        new_ids = [ids[k] for k in new]
        # A group maintained once and dropped since holds stale partial state.
        for table in _STATE_TABLES:
            await conn.execute(f"DELETE FROM {table} WHERE group_id = ANY($1::smallint[])",
                               new_ids)
        await conn.execute("DELETE FROM backfill_partitions")
        await conn.execute("DELETE FROM backfill_groups")
        await conn.execute("TRUNCATE backfill_seen")
        await conn.executemany("INSERT INTO backfill_groups (group_id) VALUES ($1)",
                               [(i,) for i in new_ids])
        await conn.execute(
            "INSERT INTO staged_policy (singleton, policy_id, revision, caught_up_at)"
            " VALUES (true, $1, $2, CASE WHEN $3 THEN now() END)",
            policy.policy_id, policy.revision, not new_ids)
        await conn.execute("UPDATE active_policy SET epoch = epoch + 1")
    return Staged(policy.revision, [f"{name} {version}" for name, version in new],
                  already=False)


async def record_live_from(
    conn: Conn, *, stream: str, partition: int, fence: Fence | None, epoch: int
) -> int:
    """Record (once) where the live projector starts applying the pending groups on
    `partition`: its checkpoint, taken under its lease and at `epoch`. Returns it."""
    async with conn.transaction():
        if fence is not None:
            await lock_lease(conn, stream, partition, fence)
        now = await read_epoch(conn)
        if now != epoch:
            raise ProjectionChangedError(
                f"{stream}/{partition}: rollout epoch {epoch}, the store is at {now}")
        value = await conn.fetchval(
            "INSERT INTO backfill_partitions AS b (stream, partition, live_from)"
            " VALUES ($1, $2, coalesce((SELECT next_offset FROM checkpoints"
            " WHERE stream = $1 AND partition = $2), 0))"
            " ON CONFLICT (stream, partition) DO UPDATE"
            " SET live_from = coalesce(b.live_from, EXCLUDED.live_from), updated_at = now()"
            " RETURNING live_from",
            stream, partition)
    return int(value)


@dataclass(frozen=True, slots=True)
class PartitionProgress:
    partition: int
    live_from: int | None  # None: the live projector has not started the new groups here
    reached: int
    done: bool
    events_applied: int
    first_event_us: int | None


async def backfill_plan(conn: Conn, stream: str) -> list[PartitionProgress]:
    """Every partition of the stream and how far its backfill is. Closed
    partitions (a resharded Kinesis parent) receive nothing more: their
    checkpoint is their live_from."""
    await conn.execute(
        "INSERT INTO backfill_partitions (stream, partition, live_from)"
        " SELECT stream, partition, next_offset FROM checkpoints WHERE stream = $1 AND closed"
        " ON CONFLICT (stream, partition) DO UPDATE SET live_from = EXCLUDED.live_from"
        " WHERE backfill_partitions.live_from IS NULL",
        stream)
    rows = await conn.fetch(
        "SELECT c.partition, b.live_from, coalesce(b.reached, 0) AS reached,"
        " coalesce(b.done, false) AS done, coalesce(b.events_applied, 0) AS events_applied,"
        " b.first_event_us FROM checkpoints c LEFT JOIN backfill_partitions b"
        " USING (stream, partition) WHERE c.stream = $1 ORDER BY c.partition",
        stream)
    return [PartitionProgress(int(r[0]), None if r[1] is None else int(r[1]), int(r[2]),
                              bool(r[3]), int(r[4]), r[5]) for r in rows]


class BackfillConflictError(Exception):
    """Another backfill moved this partition's progress: re-read it."""


async def apply_backfill(
    conn: Conn,
    *,
    stream: str,
    partition: int,
    start_offset: int,
    next_offset: int,
    done: bool,
    records: list[Record],
    group_ids: list[int],
    scope_cache: dict[Pins, int],
    epoch: int,
) -> int:
    """Apply `records` (classified with the pending groups only, `group_ids`
    aligned with them) to those groups and move the partition's progress
    start_offset -> next_offset, in one transaction. Returns the events applied.

    A record reaches the groups when it is the applied copy of its event (its
    payload hash is the dedupe row's), it is above the retention floor, and no
    other copy reached them (`backfill_seen`).
    """
    async with conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock_shared(hashtext($1))", retention_lock_key(stream))
        moved = await conn.fetchrow(
            "UPDATE backfill_partitions SET reached = $4, done = $5, updated_at = now()"
            " WHERE stream = $1 AND partition = $2 AND reached = $3 AND NOT done"
            " RETURNING (SELECT retained_from_us FROM retention WHERE stream = $1) AS floor_us,"
            " (SELECT epoch FROM active_policy) AS epoch",
            stream, partition, Decimal(start_offset), Decimal(next_offset), done)
        if moved is None:
            raise BackfillConflictError(f"{stream}/{partition}: backfill is not at {start_offset}")
        if moved["epoch"] != epoch:
            raise ProjectionChangedError(
                f"{stream}/{partition}: backfill at rollout epoch {epoch},"
                f" the store is at {moved['epoch']}")
        floor = moved["floor_us"]
        cands = [c for r in records if isinstance(c := r.classified, Candidate)
                 and (floor is None or c.ts_us > floor)]
        if not cands:
            return 0
        scopes = {**scope_cache, **await resolve_scopes(conn, {c.pins for c in cands},
                                                        scope_cache)}
        keys = sorted({(scopes[c.pins], c.event_id) for c in cands})
        # A dedupe row at or below the floor counts as gone (its time partition
        # may not be dropped yet).
        rows = await conn.fetch(
            "SELECT d.scope_id, d.event_id, d.payload_hash FROM event_dedupe d"
            " JOIN unnest($1::integer[], $2::text[]) AS u(s, e)"
            " ON d.scope_id = u.s AND d.event_id = u.e AND d.ts_us > $3",
            [k[0] for k in keys], [k[1] for k in keys],
            -(2**63) if floor is None else floor)
        applied_hash = {(int(r[0]), r[1]): bytes(r[2]) for r in rows}
        events: dict[tuple[int, str], Candidate] = {}
        for c in cands:
            k = (scopes[c.pins], c.event_id)
            if k not in events and applied_hash.get(k) == c.payload_hash:
                events[k] = c
        if not events:
            return 0
        has_values = await _stage(conn, events, group_ids)
        # Claim the events; those another copy (or the live projector) claimed
        # already leave the stage.
        claimed = await conn.fetch(
            "INSERT INTO backfill_seen (scope_id, event_id) SELECT scope_id, event_id"
            ' FROM ofp_batch WHERE first ORDER BY scope_id, event_id COLLATE "C"'
            " ON CONFLICT DO NOTHING RETURNING scope_id, event_id")
        won = {(int(r[0]), r[1]) for r in claimed}
        lost = [k for k in events if k not in won]
        if lost:
            await unstage(conn, lost, has_values=has_values)
        if won:
            await conn.execute(_INSERT_STATE, TILE_US)
            if has_values:
                await conn.execute(_INSERT_VALUES)
                await conn.execute(_INSERT_DISTINCT)
                await _merge_sketches(conn, [(k, c) for k, c in events.items() if k in won],
                                      group_ids)
            await conn.execute(
                "UPDATE backfill_partitions SET events_applied = events_applied + $3,"
                " first_event_us = least(first_event_us, $4)"
                " WHERE stream = $1 AND partition = $2",
                stream, partition, len(won), min(events[k].ts_us for k in won))
    scope_cache.update({p: s for p, s in scopes.items() if p not in scope_cache})
    return len(won)


async def finish_backfill(conn: Conn, stream: str) -> bool:
    """Mark the staged revision caught up when every partition is replayed; True then."""
    async with conn.transaction():
        await lock_policies(conn)
        staged = await conn.fetchrow("SELECT caught_up_at FROM staged_policy")
        if staged is None:
            return False
        if staged["caught_up_at"] is not None:
            return True
        await conn.execute(
            "UPDATE backfill_partitions SET done = true"
            " WHERE stream = $1 AND live_from IS NOT NULL AND reached >= live_from", stream)
        missing = await conn.fetchval(
            "SELECT count(*) FROM checkpoints c LEFT JOIN backfill_partitions b"
            " USING (stream, partition) WHERE c.stream = $1 AND coalesce(b.done, false) = false",
            stream)
        if missing:
            return False
        await conn.execute("UPDATE staged_policy SET caught_up_at = now()")
        await conn.execute("DELETE FROM backfill_groups")
        await conn.execute("TRUNCATE backfill_seen")
        await conn.execute("UPDATE active_policy SET epoch = epoch + 1")
    return True


async def activate(conn: Conn, revision: str) -> str:
    """Make `revision` active: the staged revision once caught up, or the previous
    one (a roll forward after a rollback). Returns the revision it replaced."""
    async with conn.transaction():
        await lock_policies(conn)
        a = await conn.fetchrow(
            "SELECT policy_id, revision, previous_revision FROM active_policy")
        if a is None:
            raise PolicyConflictError("no revision is active yet")
        if revision == a["revision"]:
            raise PolicyConflictError(f"revision {revision} is already active")
        staged = await conn.fetchrow("SELECT revision, caught_up_at FROM staged_policy")
        if staged is not None and staged["revision"] == revision:
            if staged["caught_up_at"] is None:
                raise PolicyConflictError(
                    f"revision {revision} is still being backfilled (`ofp policy status`);"
                    " it can be activated once it has caught up")
            await conn.execute("DELETE FROM staged_policy")
        elif revision != a["previous_revision"]:
            raise PolicyConflictError(
                f"revision {revision} is neither staged nor the previous revision:"
                " stage it first (`ofp policy stage <file>`)")
        await conn.execute(
            "UPDATE active_policy SET previous_policy_id = policy_id,"
            " previous_revision = revision, revision = $1, activated_at = now(),"
            " epoch = epoch + 1", revision)
    return str(a["revision"])


async def rollback(conn: Conn) -> tuple[str, str]:
    """Return to the previous revision; (from, to)."""
    async with conn.transaction():
        await lock_policies(conn)
        a = await conn.fetchrow("SELECT revision, previous_revision FROM active_policy")
        if a is None or a["previous_revision"] is None:
            raise PolicyConflictError("there is no previous revision to roll back to")
    await activate(conn, a["previous_revision"])
    return str(a["revision"]), str(a["previous_revision"])


async def discard(conn: Conn) -> str | None:
    """Drop the staged revision (its groups stop being applied); its revision or None."""
    async with conn.transaction():
        await lock_policies(conn)
        staged = await conn.fetchrow("SELECT revision FROM staged_policy")
        if staged is None:
            return None
        for table in ("staged_policy", "backfill_groups", "backfill_partitions"):
            await conn.execute(f"DELETE FROM {table}")
        await conn.execute("TRUNCATE backfill_seen")
        await conn.execute("UPDATE active_policy SET epoch = epoch + 1")
    return str(staged["revision"])


@dataclass(frozen=True, slots=True)
class Projection:
    """What the projector applies at one rollout epoch: the union of the maintained
    revisions' groups, their ids (aligned with `policy.groups`), and the groups
    still being backfilled (their applied events are marked in `backfill_seen`)."""

    epoch: int
    policy: Policy
    group_ids: tuple[int, ...]
    pending: frozenset[int]

    @classmethod
    def of(cls, rollout: Rollout) -> Projection:
        policy = rollout.applied()
        return cls(rollout.epoch, policy,
                   tuple(rollout.group_ids[(g.name, g.version)] for g in policy.groups),
                   rollout.pending)


async def read_projection(conn: Conn) -> Projection | None:
    rollout = await read_rollout(conn)
    return None if rollout is None else Projection.of(rollout)
