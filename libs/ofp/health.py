"""The health ladder (docs/contract.md 4.6) and the status report built around it: pure functions.

Input: facts read in one database snapshot (`ofp.store.status.StatusFacts`) and the
"now" those facts are measured against (the database clock of the same snapshot, so
every replica and the CLI agree; tests inject their own). Output: the status document,
which is the JSON form of `ofp.v1.GetStatusResponse`.

The rules, each giving a reason with a state (the overall state is the worst):

    code               state          when
    NO_ACTIVE_POLICY   RED            the projector never recorded a policy
    NO_PARTITIONS      RED            no checkpoint row for the stream
    NO_WATERMARK       RED            no valid consumed record yet (GetFeatures says RED too)
    CHECKPOINT_STALE   AMBER / RED    a partition was last known current >= amber / red ago
    BEHIND_BUS         AMBER / RED    the bus says a partition is >= amber / red behind its tip
    WATERMARK_STALE    AMBER / RED    now - watermark >= amber / red
    QUARANTINE_OPEN    AMBER          >= quarantine_amber rows wait in the quarantine table

"Last known current" is the later of the partition's last commit and the last time the
projector observed it with nothing left to read (lag 0): an idle but caught-up
partition is not stale, a stuck one is. Closed shards are never stale. The watermark
age is event time against the clock, as contract 4.6 says: it measures how far the
features lag the world, whatever the reason (a stuck projector or a quiet producer).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

from ofp.config import Settings
from ofp.contracts.timefmt import format_micros

OUTCOMES = ("APPLIED", "DUPLICATE", "IGNORED", "QUARANTINED")
_US_PER_S = 1_000_000


class State(IntEnum):
    """Ordered by severity, so the overall state is `max()` of the reasons."""

    GREEN = 0
    AMBER = 1
    RED = 2


@dataclass(frozen=True, slots=True)
class Thresholds:
    checkpoint_amber_s: int = 120
    checkpoint_red_s: int = 300
    watermark_amber_s: int = 120
    watermark_red_s: int = 300
    quarantine_amber: int = 1  # 0 disables the rule

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        return cls(
            checkpoint_amber_s=settings.status_checkpoint_amber_s,
            checkpoint_red_s=settings.status_checkpoint_red_s,
            watermark_amber_s=settings.status_watermark_amber_s,
            watermark_red_s=settings.status_watermark_red_s,
            quarantine_amber=settings.status_quarantine_amber,
        )

    def as_json(self) -> dict[str, int]:
        return {
            "checkpoint_amber_s": self.checkpoint_amber_s,
            "checkpoint_red_s": self.checkpoint_red_s,
            "watermark_amber_s": self.watermark_amber_s,
            "watermark_red_s": self.watermark_red_s,
            "quarantine_amber": self.quarantine_amber,
        }


@dataclass(frozen=True, slots=True)
class PartitionFacts:
    """One checkpoint row (times in microseconds since the epoch)."""

    partition: int
    offset_kind: str
    next_offset: str
    updated_us: int
    max_event_us: int | None = None
    last_applied_us: int | None = None
    lag_records: int | None = None
    lag_ms: int | None = None
    lag_observed_us: int | None = None
    closed: bool = False
    lease_owner: str | None = None


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    state: State
    detail: str
    partition: int | None = None

    def as_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"code": self.code, "state": self.state.name, "detail": self.detail}
        if self.partition is not None:
            doc["partition"] = self.partition
        return doc


@dataclass(frozen=True, slots=True)
class Health:
    state: State
    reasons: tuple[Reason, ...]


def last_current_us(p: PartitionFacts) -> int:
    """When the partition was last known current: last commit, or a lag-0 observation."""
    marks = [p.last_applied_us if p.last_applied_us is not None else p.updated_us]
    caught_up = p.lag_records == 0 or p.lag_ms == 0
    if caught_up and p.lag_observed_us is not None:
        marks.append(p.lag_observed_us)
    return max(marks)


def checkpoint_age_us(p: PartitionFacts, now_us: int) -> int:
    return max(0, now_us - last_current_us(p))


def watermark_us(partitions: Iterable[PartitionFacts]) -> int | None:
    """contract 4.3 as amended: the least high mark over open partitions that hold one.

    Closed partitions (a Kinesis parent after a reshard) receive nothing more
    and leave the minimum; with no open partition holding a record, the
    largest closed high mark stands (`ofp.store.reads.WATERMARK_EXPR`).
    """
    parts = list(partitions)
    open_highs = [p.max_event_us for p in parts if not p.closed and p.max_event_us is not None]
    if open_highs:
        return min(open_highs)
    closed_highs = [p.max_event_us for p in parts if p.closed and p.max_event_us is not None]
    return max(closed_highs) if closed_highs else None


def _by_age(age_us: int, amber_s: int, red_s: int) -> State:
    if age_us >= red_s * _US_PER_S:
        return State.RED
    if age_us >= amber_s * _US_PER_S:
        return State.AMBER
    return State.GREEN


def _seconds(us: int) -> str:
    return f"{us / _US_PER_S:.1f} s"


def assess(
    *,
    policy_active: bool,
    partitions: Sequence[PartitionFacts],
    quarantine_open: int,
    now_us: int,
    thresholds: Thresholds,
) -> Health:
    """The ladder state with every reason, worst first (see the module docstring)."""
    t = thresholds
    reasons: list[Reason] = []
    if not policy_active:
        reasons.append(Reason("NO_ACTIVE_POLICY", State.RED, "no active feature policy yet"))
    if not partitions:
        reasons.append(Reason("NO_PARTITIONS", State.RED, "no partition has a checkpoint yet"))
    limits_cp = f"(AMBER at {t.checkpoint_amber_s} s, RED at {t.checkpoint_red_s} s)"
    for p in partitions:
        if p.closed:
            continue
        age = checkpoint_age_us(p, now_us)
        state = _by_age(age, t.checkpoint_amber_s, t.checkpoint_red_s)
        if state is not State.GREEN:
            reasons.append(Reason(
                "CHECKPOINT_STALE", state,
                f"partition {p.partition} last known current {_seconds(age)} ago {limits_cp}",
                p.partition,
            ))
        if p.lag_ms is not None:
            state = _by_age(p.lag_ms * 1000, t.checkpoint_amber_s, t.checkpoint_red_s)
            if state is not State.GREEN:
                reasons.append(Reason(
                    "BEHIND_BUS", state,
                    f"partition {p.partition} is {_seconds(p.lag_ms * 1000)} behind the bus "
                    f"{limits_cp}",
                    p.partition,
                ))
    mark = watermark_us(partitions)
    if partitions and mark is None:
        reasons.append(Reason("NO_WATERMARK", State.RED, "no valid consumed record yet"))
    if mark is not None:
        age = now_us - mark
        state = _by_age(age, t.watermark_amber_s, t.watermark_red_s)
        if state is not State.GREEN:
            reasons.append(Reason(
                "WATERMARK_STALE", state,
                f"watermark {format_micros(mark)} is {_seconds(age)} old "
                f"(AMBER at {t.watermark_amber_s} s, RED at {t.watermark_red_s} s)",
            ))
    if t.quarantine_amber > 0 and quarantine_open >= t.quarantine_amber:
        reasons.append(Reason(
            "QUARANTINE_OPEN", State.AMBER,
            f"{quarantine_open} quarantined record(s) wait for an operator",
        ))
    reasons.sort(key=lambda r: (-r.state, r.code, -1 if r.partition is None else r.partition))
    overall = max((r.state for r in reasons), default=State.GREEN)
    return Health(overall, tuple(reasons))


# --------------------------------------------------------------------------- report


def empty_counts() -> dict[str, Any]:
    return {**{o.lower(): 0 for o in OUTCOMES}, "by_reason": []}


def outcome_counts(rows: Iterable[tuple[str, str, int]]) -> dict[str, Any]:
    """(outcome, reason, n) rows -> the OutcomeCounts JSON (reasons sorted, merged)."""
    doc = empty_counts()
    reasons: dict[tuple[str, str], int] = {}
    for outcome, reason, n in rows:
        key = outcome.lower()
        if key in doc:
            doc[key] += n
        if reason:
            reasons[(outcome, reason)] = reasons.get((outcome, reason), 0) + n
    doc["by_reason"] = [
        {"outcome": o, "reason": r, "count": n} for (o, r), n in sorted(reasons.items())
    ]
    return doc


@dataclass(frozen=True, slots=True)
class PolicyFacts:
    policy_id: str
    revision: str
    content_digest: str
    activated_us: int


@dataclass(frozen=True, slots=True)
class StatusFacts:
    """What one status read saw (`ofp.store.status.read_status`), at `now_us`."""

    stream: str | None  # None: no stream asked for and no active policy to name one
    now_us: int
    policy: PolicyFacts | None
    partitions: tuple[PartitionFacts, ...]
    counters: tuple[tuple[int, str, str, int], ...]  # (partition, outcome, reason, n)
    quarantine_open: int


def status_report(
    facts: StatusFacts, thresholds: Thresholds, *, request_id: str | None = None
) -> dict[str, Any]:
    """The status document: the JSON form of GetStatusResponse (and `ofp status --json`)."""
    stream, now_us, policy = facts.stream, facts.now_us, facts.policy
    partitions, counters, quarantine_open = (
        facts.partitions, facts.counters, facts.quarantine_open)
    per_partition: dict[int, list[tuple[str, str, int]]] = {}
    for partition, outcome, reason, n in counters:
        per_partition.setdefault(partition, []).append((outcome, reason, n))
    all_rows = [row for rows in per_partition.values() for row in rows]
    health = assess(
        policy_active=policy is not None,
        partitions=partitions,
        quarantine_open=quarantine_open,
        now_us=now_us,
        thresholds=thresholds,
    )
    doc: dict[str, Any] = {"status": "OK"}
    if stream is not None:  # unknown only before any policy, when none was asked for
        doc["stream"] = stream
    doc["observed_at_utc"] = format_micros(now_us)
    if policy is not None:
        doc["policy"] = {
            "policy_id": policy.policy_id,
            "revision": policy.revision,
            "content_digest": policy.content_digest,
        }
        doc["policy_activated_at_utc"] = format_micros(policy.activated_us)
    mark = watermark_us(partitions)
    if mark is not None:
        doc["watermark_utc"] = format_micros(mark)
        doc["watermark_age_ms"] = (now_us - mark) // 1000
    doc["partitions"] = [
        _partition_json(p, now_us, per_partition.get(p.partition, ())) for p in partitions
    ]
    doc["totals"] = outcome_counts(all_rows)
    doc["quarantine_open"] = quarantine_open
    doc["health"] = {
        "state": health.state.name,
        "reasons": [r.as_json() for r in health.reasons],
        "thresholds": thresholds.as_json(),
    }
    if request_id is not None:
        doc["request_id"] = request_id
    return doc


def _partition_json(
    p: PartitionFacts, now_us: int, counters: Iterable[tuple[str, str, int]]
) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "partition": p.partition,
        "offset_kind": p.offset_kind,
        "next_offset": p.next_offset,
    }
    optional: Mapping[str, Any] = {
        "event_time_high_utc": None if p.max_event_us is None else format_micros(p.max_event_us),
        "last_applied_at_utc": (
            None if p.last_applied_us is None else format_micros(p.last_applied_us)
        ),
    }
    doc.update({k: v for k, v in optional.items() if v is not None})
    doc["updated_at_utc"] = format_micros(p.updated_us)
    doc["checkpoint_age_ms"] = checkpoint_age_us(p, now_us) // 1000
    lag: Mapping[str, Any] = {
        "lag_records": p.lag_records,
        "lag_ms": p.lag_ms,
        "lag_observed_at_utc": (
            None if p.lag_observed_us is None else format_micros(p.lag_observed_us)
        ),
    }
    doc.update({k: v for k, v in lag.items() if v is not None})
    doc["closed"] = p.closed
    if p.lease_owner:
        doc["lease_owner"] = p.lease_owner
    doc["outcomes"] = outcome_counts(counters)
    return doc
