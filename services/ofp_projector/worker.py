"""One partition run: read ahead, classify, apply with retry, record lag.

A `PartitionWorker` consumes one partition under one lease, from a checkpoint,
until it is stopped, drained (--once), closed (SHARD_END) or fenced out; its
`run()` says which (`RunEnd`). The lease coordinator (`projector.Projector`)
starts one per lease it takes and never shares its state with another.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from ofp.config import Settings
from ofp.events import Candidate, Classified, Outcome, Quarantined, QuarantineReason, classify
from ofp.logs import get_logger
from ofp.model import Pins
from ofp.policy import Policy
from ofp.store.leases import Lease
from ofp.store.partitions import record_lag
from ofp.store.rollout import Projection, read_projection, record_live_from
from ofp.store.timeparts import ensure_periods, period_start
from ofp.store.writes import (
    BatchResult,
    CheckpointConflictError,
    Fence,
    LeaseLostError,
    ProjectionChangedError,
    Record,
    apply_batch,
    find_store_refusals,
    read_checkpoints,
    refused_by_store,
)

from .bus import Batch, Bus, PartitionSource
from .metrics import ProjectorMetrics
from .retry import StoreRetrier

_log = get_logger("ofp.projector")
# Records classified between two yields to the event loop (about 3 ms of CPU).
CLASSIFY_SLICE = 250
LAG_RECORD_INTERVAL_S = 1.0


class RunEnd(enum.Enum):
    """How a partition run ended."""

    DRAINED = "drained"  # --once: caught up with the bus
    CLOSED = "closed"  # SHARD_END applied: nothing follows, the lease is of no use
    LOST = "lost"  # fenced out at commit: another replica holds the partition now
    STOPPED = "stopped"  # asked to stop


class BatchEnd(enum.Enum):
    """How applying one batch ended."""

    COMMITTED = "committed"
    CONFLICT = "conflict"  # the checkpoint moved elsewhere: re-read from the store's
    LOST = "lost"


@dataclass
class Totals:
    records: int = 0
    batches: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    leases_acquired: int = 0
    leases_lost: int = 0
    leases_released: int = 0


@dataclass
class WorkerContext:
    """What every partition run of one projector shares."""

    settings: Settings
    projection: Projection  # replaced (never changed in place) when the rollout epoch moves
    bus: Bus
    owner: str
    store: StoreRetrier
    metrics: ProjectorMetrics
    totals: Totals
    stopping: asyncio.Event  # the whole projector is stopping
    scopes: dict[Pins, int] = field(default_factory=dict)  # run scope ids, grown by commits
    # Periods whose time partitions exist (or end below the retention floor).
    periods: set[int] = field(default_factory=set)

    @property
    def stream(self) -> str:
        return self.bus.stream

    async def reload_projection(self) -> Projection:
        """The applied groups as the store has them now (after a ProjectionChangedError,
        or when the coordinator sees the epoch move)."""
        found = await self.store.run("read_projection", read_projection)
        if found is not None and found.epoch != self.projection.epoch:
            _log.info("projection_changed", stream=self.stream, epoch=found.epoch,
                      revision=found.policy.revision, groups=len(found.group_ids),
                      backfilling=len(found.pending))
            self.projection = found
        return self.projection


class PartitionWorker:
    """Consumes one partition under `lease` from `checkpoint`."""

    def __init__(self, ctx: WorkerContext, lease: Lease, checkpoint: int, *, once: bool) -> None:
        self.ctx = ctx
        self.lease = lease
        self.partition = lease.partition
        self.checkpoint = checkpoint
        self.once = once
        self.stop = asyncio.Event()
        self._fence = Fence(ctx.owner, lease.token)
        self._high: int | None = None  # largest valid event time this run applied
        self._next_lag_at = 0.0
        self._live_from_epoch: int | None = None  # epoch whose live_from this run recorded

    async def run(self) -> RunEnd:
        ctx, p = self.ctx, self.partition
        source = ctx.bus.open(p, self.checkpoint)
        # The next batch is read and classified while this one is applied, so
        # the CPU work and the database round trips of a partition overlap.
        ahead: asyncio.Future[tuple[Batch, list[Record], Projection]] | None = None
        try:
            while not self.stop.is_set() and not ctx.stopping.is_set():
                if ahead is not None:
                    batch, records, proj = await ahead
                    ahead = None
                else:
                    batch, records, proj = await self._read(source)
                await self._observe(batch)
                if batch.records or batch.closes:
                    if not batch.closes:  # nothing follows SHARD_END
                        ahead = asyncio.ensure_future(self._read(source))
                    end = await self._apply(batch, records, proj)
                    if end is BatchEnd.LOST:
                        return RunEnd.LOST
                    if end is BatchEnd.CONFLICT:
                        await _discard(ahead)
                        ahead = None
                        await source.close()
                        self.checkpoint = await self._stored_checkpoint()
                        source = ctx.bus.open(p, self.checkpoint)
                        continue
                    self.checkpoint = batch.next_offset
                    if batch.closes:
                        _log.info("partition_closed", stream=ctx.stream, partition=p,
                                  next_offset=self.checkpoint)
                        if batch.left_retention:  # records past the checkpoint lost upstream
                            ctx.metrics.partition_left_retention(p)
                        return RunEnd.CLOSED
                    continue
                # An idle partition starts a staged revision's groups too, so
                # that its backfill can end.
                if await self._start_pending_groups(ctx.projection) is not None:
                    return RunEnd.LOST
                if self.once and batch.at_end:
                    return RunEnd.DRAINED
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), timeout=ctx.bus.idle_s)
            return RunEnd.STOPPED
        finally:
            await _discard(ahead)
            await source.close()

    async def _read(self, source: PartitionSource) -> tuple[Batch, list[Record], Projection]:
        batch = await source.read(self.ctx.settings.batch_size)
        proj = self.ctx.projection
        return batch, await self._classify(batch, proj.policy), proj

    async def _observe(self, batch: Batch) -> None:
        """Lag and watermark-age metrics; the bus's lag to the store at most once a second."""
        ctx, high = self.ctx, self._high
        ctx.metrics.partition_observed(
            partition=self.partition,
            lag_records=None,
            lag_ms=batch.lag_ms,
            watermark_age_s=None if high is None else (time.time_ns() // 1000 - high) / 1e6,
        )
        if batch.lag_ms is not None and time.monotonic() >= self._next_lag_at:
            self._next_lag_at = time.monotonic() + LAG_RECORD_INTERVAL_S
            await ctx.store.run("record_lag", partial(
                record_lag, stream=ctx.stream, partition=self.partition,
                token=self.lease.token, lag_ms=batch.lag_ms))

    async def _stored_checkpoint(self) -> int:
        checkpoints = await self.ctx.store.run(
            "read_checkpoints", partial(read_checkpoints, stream=self.ctx.stream)
        )
        return checkpoints.get(self.partition, 0)

    async def _classify(self, batch: Batch, policy: Policy) -> list[Record]:
        """Classify a batch, yielding to the event loop between slices.

        Classification is pure CPU (tens of milliseconds for a batch); done in
        one go it would hold up the database round trips of the other
        partitions' batches, and their apply transactions would stretch by as
        much. In slices, those round trips are served in between.
        """
        run_id = self.ctx.settings.required_platform_run_id
        records: list[Record] = []
        pending = batch.records
        for start in range(0, len(pending), CLASSIFY_SLICE):
            if start:
                await asyncio.sleep(0)
            records.extend(
                Record(off, raw, _classify_one(raw, policy, run_id))
                for off, raw in pending[start:start + CLASSIFY_SLICE]
            )
        return records

    async def _start_pending_groups(self, proj: Projection) -> BatchEnd | None:
        """While a staged revision is backfilled, record (once per epoch, under the
        lease) the offset from which this partition applies its new groups live."""
        if not proj.pending or self._live_from_epoch == proj.epoch:
            return None
        ctx = self.ctx
        try:
            live_from = await ctx.store.run("record_live_from", partial(
                record_live_from, stream=ctx.stream, partition=self.partition,
                fence=self._fence, epoch=proj.epoch))
        except ProjectionChangedError:
            await ctx.reload_projection()
            return None
        except LeaseLostError:
            _log.warning("lease_lost", stream=ctx.stream, partition=self.partition,
                         owner=ctx.owner, token=self._fence.token, reason="fenced_at_live_from")
            return BatchEnd.LOST
        self._live_from_epoch = proj.epoch
        _log.info("backfill_live_from", stream=ctx.stream, partition=self.partition,
                  live_from=str(live_from), epoch=proj.epoch)
        return None

    async def _apply(self, batch: Batch, records: list[Record], proj: Projection) -> BatchEnd:
        """Apply one batch in one transaction, retrying transient failures; a batch
        classified under an older rollout epoch is classified again first."""
        ctx, p = self.ctx, self.partition
        t0 = time.perf_counter()
        try:
            while True:
                if proj.epoch != ctx.projection.epoch:
                    proj = ctx.projection
                    records = await self._classify(batch, proj.policy)
                if (lost := await self._start_pending_groups(proj)) is not None:
                    return lost
                if proj.pending and self._live_from_epoch != proj.epoch:
                    continue  # the epoch moved while live_from was recorded
                try:
                    result = await self._apply_refusing_nothing(batch, records, proj)
                    break
                except ProjectionChangedError:
                    await ctx.reload_projection()
        except CheckpointConflictError as exc:
            _log.warning("batch_conflicted", stream=ctx.stream, partition=p, detail=str(exc))
            return BatchEnd.CONFLICT
        except LeaseLostError:
            _log.warning("lease_lost", stream=ctx.stream, partition=p, owner=ctx.owner,
                         token=self._fence.token, reason="fenced_at_commit")
            return BatchEnd.LOST
        self._account(batch, records, result, time.perf_counter() - t0)
        return BatchEnd.COMMITTED

    async def _apply_refusing_nothing(
        self, batch: Batch, records: list[Record], proj: Projection
    ) -> BatchResult:
        """apply_batch; when the database refuses the data itself, without those records.

        No single record may stop a partition: the records the database refuses
        are found, quarantined, and the rest of the batch is applied.
        """
        ctx = self.ctx
        await self._ensure_time_partitions(records)
        while True:
            try:
                return await ctx.store.run(
                    "apply_batch",
                    partial(
                        apply_batch,
                        stream=ctx.stream,
                        partition=self.partition,
                        start_offset=self.checkpoint,
                        next_offset=batch.next_offset,
                        records=records,
                        group_ids=list(proj.group_ids),
                        scope_cache=ctx.scopes,
                        fence=self._fence,
                        closes_partition=batch.closes,
                        max_future_us=ctx.settings.max_future_skew_s * 1_000_000,
                        epoch=proj.epoch,
                        mark_seen=bool(proj.pending),
                    ),
                )
            except Exception as exc:
                if not refused_by_store(exc):
                    raise
                records = await self._quarantine_refused(records, exc, proj)

    async def _ensure_time_partitions(self, records: list[Record]) -> None:
        """Create the time partitions the batch's events go to before applying
        it, outside its transaction (one created inside it would lock its tables
        for the whole batch). A period that cannot be created now takes its rows
        into the default partitions; the next maintenance moves them."""
        ctx = self.ctx
        periods = {period_start(c.ts_us) for r in records
                   if isinstance(c := r.classified, Candidate)} - ctx.periods
        if periods:
            ctx.periods |= await ctx.store.run(
                "ensure_time_partitions",
                partial(ensure_periods, starts=periods,
                        max_future_us=ctx.settings.max_future_skew_s * 1_000_000))

    async def _quarantine_refused(
        self, records: list[Record], failure: Exception, proj: Projection
    ) -> list[Record]:
        """`records` with every record the store refuses on its own made QUARANTINED.

        A refusal that no single record reproduces is not the records' own
        (a bug, or a broken database): the original failure is raised.
        """
        ctx = self.ctx
        refusals = await ctx.store.run(
            "find_store_refusals",
            partial(find_store_refusals, records=records, group_ids=list(proj.group_ids),
                    scope_cache=ctx.scopes),
        )
        if not refusals:
            raise failure
        by_offset = {r.offset: r for r in refusals}
        _log.warning("records_refused_by_store", stream=ctx.stream, partition=self.partition,
                     offsets=[str(r.offset) for r in refusals],
                     sqlstates=sorted({r.sqlstate for r in refusals}))
        out = []
        for rec in records:
            refusal = by_offset.get(rec.offset)
            if refusal is None:
                out.append(rec)
                continue
            out.append(rec._replace(classified=Quarantined(
                QuarantineReason.STORE_REFUSED,
                f"the store refused the record: SQLSTATE {refusal.sqlstate}: {refusal.message}",
                getattr(rec.classified, "event_id", None),
            )))
        return out

    def _account(
        self, batch: Batch, records: list[Record], result: BatchResult, duration_s: float
    ) -> None:
        """Totals, metrics and the batch's canonical log line."""
        ctx, p = self.ctx, self.partition
        ctx.totals.batches += 1
        ctx.totals.records += len(records)
        ctx.metrics.batch_applied(
            partition=p,
            outcomes={(str(o), str(r)): n for (o, r), n in result.outcomes.items()},
            records=len(records),
            duration_s=duration_s,
        )
        if result.max_event_us is not None:
            self._high = max(self._high or result.max_event_us, result.max_event_us)
        counts: Counter[str] = Counter()
        for (outcome, _reason), n in result.outcomes.items():
            counts[str(outcome)] += n
            ctx.totals.by_outcome[str(outcome)] = ctx.totals.by_outcome.get(str(outcome), 0) + n
        _log.info(
            "batch_applied",
            stream=ctx.stream,
            partition=p,
            owner=self._fence.owner,
            token=self._fence.token,
            start_offset=str(self.checkpoint),
            next_offset=str(batch.next_offset),
            records=len(records),
            applied=counts[Outcome.APPLIED],
            duplicate=counts[Outcome.DUPLICATE],
            ignored=counts[Outcome.IGNORED],
            quarantined=counts[Outcome.QUARANTINED],
            closes_partition=batch.closes,
            lag_ms=batch.lag_ms,
            duration_ms=round(duration_s * 1000, 2),
        )


def _classify_one(raw: bytes, policy: Policy, run_id: str | None) -> Classified:
    """classify, which decides every record; should it ever raise, the record is
    quarantined with the error rather than stopping the partition (and logged as
    the bug it is)."""
    try:
        return classify(raw, policy, run_id)
    except Exception as exc:
        _log.exception("classify_failed", error=type(exc).__name__)
        return Quarantined(QuarantineReason.ENVELOPE_INVALID,
                           f"could not be classified: {type(exc).__name__}: {exc}"[:300])


async def _discard(ahead: asyncio.Future[Any] | None) -> None:
    """Cancel a read-ahead that will not be applied, and let it finish."""
    if ahead is None:
        return
    ahead.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await ahead
