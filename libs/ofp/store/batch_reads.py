"""Many GetFeatures answers from one statement: `ofp export` and GetFeaturesBatch.

A training spine asks for features at millions of (key, as-of) rows. Each row is
a GetFeatures request; a chunk of them is planned with the online path's pure
planner (`ofp.snapshot.plan_read`), read by the online path's set-based
snapshot statement (`ofp.store.reads.read_snapshots`, which already answers many
requests, each with its own pins, as-of, windows and cells, in one statement)
and assembled row by row by the online path's `assemble_snapshot`. Nothing
here computes a value or a hash of its own, so a row's snapshot_hash is the one
GetFeatures returns at the same as-of on the same state, by construction.

A row that cannot be answered (a refusal of `plan_read` or `assemble_snapshot`:
unknown group, unknown pins, as-of reaching before the retention floor, ...)
gets its ContractError in its place; the other rows of the chunk are answered.

    plan_batch(requests, policy, group_ids)       pure: request -> plan, or its refusal
    fetch_batch(conn, stream=, planned=, revision=) ONE statement for every planned row
    assemble_batch(planned, rows, ...)           pure: row -> snapshot + typed values
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ofp.contracts.errors import ContractError, ErrorCode
from ofp.contracts.request import ValidRequest
from ofp.model import Pins, ReadProbes, SnapshotRow, pins_of
from ofp.policy import Policy
from ofp.snapshot import ReadPlan, TypedCell, assemble_snapshot, plan_read

from .reads import read_snapshots


@dataclass(frozen=True, slots=True)
class Planned:
    """One request of a batch and its read plan."""

    req: ValidRequest
    plan: ReadPlan


@dataclass(slots=True)
class BatchAnswer:
    """One request's answer: its snapshot (contract JSON form, hash included) and
    typed values, or the refusal GetFeatures would have given it."""

    snapshot: dict[str, Any] | None = None
    typed: list[TypedCell] = field(default_factory=list)
    error: ContractError | None = None
    # The refusal is the retention one: the as-of's longest window reaches before
    # the retained state (docs/training.md, "Rows outside retention").
    outside_retention: bool = False


def plan_batch(
    requests: Sequence[ValidRequest | ContractError],
    policy: Policy,
    group_ids: dict[tuple[str, str], int],
) -> list[Planned | ContractError]:
    """Each request's plan with `policy`, or its refusal (a refusal passed in stays)."""
    out: list[Planned | ContractError] = []
    for req in requests:
        if isinstance(req, ContractError):
            out.append(req)
            continue
        try:
            out.append(Planned(req, plan_read(req, policy, group_ids)))
        except ContractError as exc:
            out.append(exc)
    return out


async def fetch_batch(
    conn: asyncpg.Connection | asyncpg.Pool,
    *,
    stream: str,
    planned: Sequence[Planned | ContractError],
    revision: tuple[str, str] | None,
) -> list[SnapshotRow | None] | None:
    """The snapshot row of every planned request (None where it was refused), read
    by one snapshot statement (plus the v1 feature statement in the same
    repeatable-read transaction when a plan has v1 features). None: the revision
    is not recorded (or none is active)."""
    reads: list[tuple[Pins, ReadProbes]] = []
    where: list[int] = []
    for i, p in enumerate(planned):
        if isinstance(p, Planned):
            reads.append((pins_of(p.req.pins), p.plan.probes))
            where.append(i)
    out: list[SnapshotRow | None] = [None] * len(planned)
    if not reads:
        return out
    rows = await read_snapshots(conn, stream=stream, reads=reads, revision=revision)
    if rows is None:
        return None
    for i, row in zip(where, rows, strict=True):
        out[i] = row
    return out


def reaches_before_retention(req: ValidRequest, plan: ReadPlan, row: SnapshotRow) -> bool:
    """The retention refusal's condition (`ofp.snapshot.check_row`)."""
    if row.retained_from_us is None or not plan.groups:
        return False
    return req.as_of_us - max(g.max_window_us for g in plan.groups) < row.retained_from_us


def assemble_batch(
    planned: Sequence[Planned | ContractError],
    rows: Sequence[SnapshotRow | None],
    *,
    stream: str,
    max_basis_lag_us: int,
    created_at_us: int,
) -> list[BatchAnswer]:
    """Every request's answer, exactly as GetFeatures assembles it."""
    answers: list[BatchAnswer] = []
    for p, row in zip(planned, rows, strict=True):
        if isinstance(p, ContractError):
            answers.append(BatchAnswer(error=p))
            continue
        assert row is not None
        typed: list[TypedCell] = []
        try:
            snapshot = assemble_snapshot(
                p.req, p.plan, row, stream=stream, max_basis_lag_us=max_basis_lag_us,
                created_at_us=created_at_us, typed=typed)
        except ContractError as exc:
            retention = (exc.code is ErrorCode.UNAVAILABLE and not exc.retryable
                         and reaches_before_retention(p.req, p.plan, row))
            answers.append(BatchAnswer(error=exc, outside_retention=retention))
            continue
        answers.append(BatchAnswer(snapshot=snapshot, typed=typed))
    return answers
