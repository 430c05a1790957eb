"""The backfill of a staged revision's new groups from the bus (ofp.store.rollout).

Each partition is replayed from its start (the file-bus's first line, Kinesis's
TRIM_HORIZON) to the offset where the live projector began applying the new
groups (`live_from`). Records are classified with the new groups only and
applied through `rollout.apply_backfill`, which moves the partition's progress
in the same transaction: a backfill killed at any point resumes where it
committed, and two running at once never apply a record twice. When every
partition is replayed the staged revision is marked caught up.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import asyncpg

from ofp.config import Settings
from ofp.events import classify
from ofp.logs import get_logger
from ofp.model import Pins
from ofp.policy import Policy
from ofp.store.rollout import (
    BackfillConflictError,
    PartitionProgress,
    Rollout,
    apply_backfill,
    backfill_plan,
    finish_backfill,
    read_rollout,
)
from ofp.store.writes import PolicyConflictError, ProjectionChangedError, Record

from . import file_bus
from .bus import Bus
from .projector import make_bus
from .retry import StoreRetrier

_log = get_logger("ofp.backfill")


class NothingStagedError(PolicyConflictError):
    """No revision is staged (or it was discarded while the backfill ran)."""


@dataclass
class BackfillProgress:
    """What a progress display needs; `total` is None where offsets are not dense."""

    revision: str
    groups: list[str]
    records_read: int = 0
    events_applied: int = 0
    remaining: int | None = None  # records left (file-bus), None when unknown
    partitions_done: int = 0
    partitions: int = 0
    waiting_for: list[int] = field(default_factory=list)  # partitions without live_from
    caught_up: bool = False
    first_event_us: dict[int, int] = field(default_factory=dict)


Report = Callable[[BackfillProgress], None]


@dataclass(frozen=True, slots=True)
class _Target:
    epoch: int
    revision: str
    policy: Policy  # the staged revision's pending groups only
    group_ids: list[int]


def _target(rollout: Rollout) -> _Target | None:
    staged = rollout.staged
    if staged is None:
        return None
    groups = tuple(g for g in staged.groups
                   if rollout.group_ids[(g.name, g.version)] in rollout.pending)
    return _Target(rollout.epoch, staged.revision, dataclasses.replace(staged, groups=groups),
                   [rollout.group_ids[(g.name, g.version)] for g in groups])


class Backfill:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, *, bus: Bus | None = None,
                 report: Report | None = None, wait_s: float = 0.5) -> None:
        self.settings = settings
        self.pool = pool
        self._bus = bus
        self.report = report or (lambda _: None)
        self.wait_s = wait_s
        self.store = StoreRetrier(pool)
        self.scopes: dict[Pins, int] = {}

    async def run(self, *, timeout_s: float | None = None) -> BackfillProgress:
        """Replay until the staged revision has caught up; its final progress."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        rollout = await self.store.run("read_rollout", read_rollout)
        if rollout is None or rollout.staged is None:
            raise NothingStagedError("no revision is staged (`ofp policy stage <file>`)")
        bus = self._bus or make_bus(
            dataclasses.replace(self.settings, kinesis_start_position="TRIM_HORIZON"),
            rollout.active)
        await bus.start()
        try:
            return await self._run(bus, rollout, deadline)
        finally:
            if self._bus is None:
                await bus.close()

    async def _run(self, bus: Bus, rollout: Rollout, deadline: float | None
                   ) -> BackfillProgress:
        assert rollout.staged is not None
        names = sorted(f"{g.name} {g.version}" for g in rollout.staged.groups
                       if rollout.group_ids[(g.name, g.version)] in rollout.pending)
        prog = BackfillProgress(rollout.staged.revision, names)
        staged_revision = rollout.staged.revision
        while True:
            if rollout.staged is None or rollout.staged.revision != staged_revision:
                raise NothingStagedError(
                    f"revision {staged_revision} is no longer staged (discarded or activated)")
            if rollout.staged_caught_up:
                prog.caught_up = True
                prog.remaining = 0
                self.report(prog)
                return prog
            target = _target(rollout)
            assert target is not None
            plan = await self.store.run("backfill_plan", partial(backfill_plan,
                                                                  stream=bus.stream))
            self._account(prog, plan, bus)
            self.report(prog)
            try:
                for part in plan:
                    if part.live_from is not None and not part.done:
                        await self._replay(bus, target, part, prog)
            except (ProjectionChangedError, BackfillConflictError) as exc:
                _log.info("backfill_restarting", reason=str(exc))
            else:
                if await self.store.run("finish_backfill", partial(finish_backfill,
                                                                    stream=bus.stream)):
                    prog.caught_up = True
                    prog.remaining = 0
                    prog.partitions_done = prog.partitions
                    prog.waiting_for = []
                    self.report(prog)
                    _log.info("backfill_caught_up", revision=staged_revision,
                              events_applied=prog.events_applied)
                    return prog
                if deadline is not None and time.monotonic() > deadline:
                    raise TimeoutError(
                        f"the backfill of {staged_revision} has not caught up: partitions"
                        f" {prog.waiting_for} wait for the live projector to start the new"
                        " groups (is a projector running?)")
                await asyncio.sleep(self.wait_s)
            found = await self.store.run("read_rollout", read_rollout)
            if found is None:
                raise NothingStagedError("no revision is active")
            rollout = found

    def _account(self, prog: BackfillProgress, plan: list[PartitionProgress], bus: Bus) -> None:
        prog.partitions = len(plan)
        prog.partitions_done = sum(1 for p in plan if p.done or (
            p.live_from is not None and p.reached >= p.live_from))
        prog.waiting_for = [p.partition for p in plan if p.live_from is None]
        if bus.offset_kind == file_bus.OFFSET_KIND:  # offsets count records
            prog.remaining = sum(max(0, p.live_from - p.reached) for p in plan
                                 if p.live_from is not None and not p.done)
        for p in plan:
            if p.first_event_us is not None:
                prog.first_event_us[p.partition] = p.first_event_us

    async def _replay(self, bus: Bus, target: _Target, part: PartitionProgress,
                      prog: BackfillProgress) -> None:
        assert part.live_from is not None
        live_from, reached = part.live_from, part.reached
        run_id = self.settings.required_platform_run_id
        source = bus.open(part.partition, reached)
        try:
            while reached < live_from:
                batch = await source.read(self.settings.batch_size)
                raw = [(o, r) for o, r in batch.records if o < live_from]
                # The end of the replay: a record at or past live_from, or a
                # partition with nothing more (a closed or trimmed shard).
                ends = (len(raw) < len(batch.records) or batch.closes
                        or batch.next_offset >= live_from
                        or (batch.at_end and not batch.records))
                next_offset = live_from if ends else batch.next_offset
                records = [Record(o, r, classify(r, target.policy, run_id)) for o, r in raw]
                applied = await self.store.run("apply_backfill", partial(
                    apply_backfill, stream=bus.stream, partition=part.partition,
                    start_offset=reached, next_offset=next_offset, done=ends, records=records,
                    group_ids=target.group_ids, scope_cache=self.scopes, epoch=target.epoch))
                prog.records_read += len(raw)
                prog.events_applied += applied
                if prog.remaining is not None:
                    prog.remaining = max(0, prog.remaining - (next_offset - reached))
                reached = next_offset
                if ends:
                    prog.partitions_done += 1
                self.report(prog)
                if not batch.records and not ends:
                    await asyncio.sleep(bus.idle_s)
        finally:
            await source.close()
        _log.info("backfill_partition_done", stream=bus.stream, partition=part.partition,
                  live_from=str(live_from), events_applied=prog.events_applied)
