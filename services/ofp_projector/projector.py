"""The projector: bus -> classification -> one transaction per batch, under leases.

A control loop (every lease_ttl/3, at most 1 s) discovers the bus's
partitions, heartbeats this replica, renews its leases, takes free or expired
ones up to its fair share and gives back extras while others are short. One
task per held partition reads a batch from the checkpoint, classifies the
records (pure) and applies them with `ofp.store.writes.apply_batch` under the
lease's fencing token. A lost lease stops the partition's task at once; a
graceful stop releases every lease. Transient failures roll the batch back and
retry it with backoff from the same offset: nothing is skipped and the
checkpoint never moves without the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import socket
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar, cast

import asyncpg

from ofp.config import Settings
from ofp.events import Outcome, Quarantined, QuarantineReason, classify
from ofp.logs import get_logger
from ofp.model import Pins
from ofp.policy import Policy
from ofp.store.db import is_transient, migrate
from ofp.store.leases import Lease, LeaseManager, plan_balance
from ofp.store.partitions import (
    read_partition_states,
    record_lag,
    record_partitions,
    workable,
)
from ofp.store.writes import (
    CheckpointConflictError,
    Fence,
    LeaseLostError,
    Record,
    apply_batch,
    claim_stream,
    find_store_refusals,
    prune_retention,
    read_checkpoints,
    record_policy,
    refused_by_store,
)

from . import file_bus
from .bus import Batch, Bus, PartitionInfo, PartitionSource
from .observability import ProjectorMetrics

_log = get_logger("ofp.projector")
MAX_BACKOFF_S = 5.0
# First-generation threshold of the cyclic GC while consuming (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000
RETENTION_INTERVAL_S = 300.0
# Records classified between two yields to the event loop (about 3 ms of CPU).
CLASSIFY_SLICE = 250
LAG_RECORD_INTERVAL_S = 1.0
T = TypeVar("T")


def backoff_s(attempt: int) -> float:
    """Exponential backoff with jitter, capped."""
    return float(min(MAX_BACKOFF_S, 0.05 * 2**attempt) * (0.5 + random.random() / 2))


@dataclass
class Totals:
    records: int = 0
    batches: int = 0
    by_outcome: dict[str, int] = field(default_factory=dict)
    retries: int = 0
    leases_acquired: int = 0
    leases_lost: int = 0
    leases_released: int = 0


def default_owner() -> str:
    """`<hostname>-<pid>-<random>`: unique per projector instance, readable in lease rows."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def make_bus(
    settings: Settings, policy: Policy, *, client_hook: Callable[[Any], None] | None = None
) -> Bus:
    """The configured bus. `client_hook` sees the Kinesis client once it exists (tests
    register botocore event hooks through it to inject throttling)."""
    if settings.bus_kind == "kinesis":
        from .kinesis_bus import KinesisBus

        return KinesisBus(
            stream_name=settings.bus_stream(policy.source_topic),
            region=settings.aws_region,
            endpoint_url=settings.kinesis_endpoint_url,
            start_position=settings.kinesis_start_position,
            get_records_limit=settings.kinesis_get_records_limit,
            idle_s=settings.kinesis_poll_interval_ms / 1000,
            connect_timeout_s=settings.kinesis_connect_timeout_ms / 1000,
            read_timeout_s=settings.kinesis_read_timeout_ms / 1000,
            client_hook=client_hook,
        )
    return file_bus.FileBus(settings.file_bus_root, policy.source_topic,
                            idle_s=settings.poll_interval_ms / 1000)


class _Outcome:
    APPLIED = "applied"
    CONFLICT = "conflict"
    LOST = "lost"


class Projector:
    def __init__(
        self,
        settings: Settings,
        pool: asyncpg.Pool,
        policy: Policy,
        *,
        bus: Bus | None = None,
        metrics: ProjectorMetrics | None = None,
    ) -> None:
        self.metrics = metrics or ProjectorMetrics()
        self.settings = settings
        self.pool = pool
        self.policy = policy
        self.bus = bus or make_bus(settings, policy)
        self.stream = self.bus.stream
        self.owner = settings.projector_id or default_owner()
        self.leases = LeaseManager(stream=self.stream, owner=self.owner,
                                   ttl_s=settings.lease_ttl_s)
        self.totals = Totals()
        self._group_ids: list[int] = []
        self._scopes: dict[Pins, int] = {}
        self._stopping = asyncio.Event()
        self._held: dict[int, Lease] = {}
        self._tasks: dict[int, asyncio.Task[str]] = {}
        self._part_stop: dict[int, asyncio.Event] = {}
        self._known: set[int] = set()
        self._done: set[int] = set()  # --once: drained in this run
        self._workable: list[int] = []
        self._pending_release: list[Lease] = []
        self._high: dict[int, int] = {}  # partition -> largest valid event time applied

    @property
    def held_partitions(self) -> list[int]:
        return sorted(self._held)

    async def prepare(self) -> None:
        self.settings.check_retention(self.policy)
        await self._retrying("migrate", migrate)
        await self._retrying("claim_stream", lambda conn: claim_stream(conn, self.stream))
        self._group_ids = await self._retrying(
            "record_policy",
            lambda conn: record_policy(conn, self.policy, self.settings.required_platform_run_id),
        )
        _log.info(
            "projector_prepared",
            stream=self.stream,
            owner=self.owner,
            policy_id=self.policy.policy_id,
            revision=self.policy.revision,
        )

    def stop(self) -> None:
        self._stopping.set()
        for ev in self._part_stop.values():
            ev.set()

    async def run(self, *, once: bool = False) -> Totals:
        """Follow the bus until stopped; with `once`, drain to the current end and return."""
        if not self._group_ids:
            await self.prepare()
        await self.bus.start()
        _settle_gc()
        tick_s = min(1.0, self.settings.lease_ttl_s / 3)
        next_prune = time.monotonic() + RETENTION_INTERVAL_S
        try:
            while not self._stopping.is_set():
                await self._tick(once=once)
                if once:
                    if not self._tasks and all(p in self._done for p in self._workable):
                        await self.prune()
                        break
                    await self._wait_for_a_task(tick_s)
                    continue
                if time.monotonic() >= next_prune:
                    await self.prune()
                    next_prune = time.monotonic() + RETENTION_INTERVAL_S
                await self._sleep_unless_stopped(tick_s)
        finally:
            await self._shutdown()
        return self.totals

    async def _tick(self, *, once: bool) -> None:
        infos = await self._discover()
        listed = {i.partition for i in infos}
        new = [i for i in infos if i.partition not in self._known]
        if new:
            await self._retrying(
                "record_partitions",
                partial(record_partitions, stream=self.stream, offset_kind=self.bus.offset_kind,
                        partitions=[(i.partition, i.parents) for i in new]),
            )
            self._known.update(i.partition for i in new)
        self._reap()
        if self._pending_release:
            closed, self._pending_release = self._pending_release, []
            await self._retrying("release_leases", lambda c: self.leases.release(c, closed))
            self.totals.leases_released += len(closed)
        states = await self._retrying(
            "read_partition_states", lambda conn: read_partition_states(conn, self.stream)
        )
        membership = await self._retrying("heartbeat", self.leases.heartbeat)
        held = list(self._held.values())
        lost = await self._retrying("renew_leases", lambda conn: self.leases.renew(conn, held))
        for lease in lost:
            self._lose(lease.partition, "renewal_refused")
        self._workable = [p for p in workable(states, listed) if p not in self._done]
        if once:
            take, give = len(self._workable), 0
        else:
            take, give = plan_balance(me=self.owner, held=len(self._held),
                                      partitions=len(self._workable), membership=membership)
        candidates = [p for p in self._workable if p not in self._held]
        if take and candidates:
            got = await self._retrying(
                "acquire_leases", lambda conn: self.leases.acquire(conn, candidates, take)
            )
            for lease in got:
                self._held[lease.partition] = lease
                self.totals.leases_acquired += 1
                _log.info("lease_acquired", stream=self.stream, partition=lease.partition,
                          token=lease.token, owner=self.owner)
                self._spawn(lease, states[lease.partition].next_offset, once=once)
        if give:
            for p in sorted(self._held)[-give:]:
                await self._release(p, "rebalanced")
        self.metrics.leases_held(len(self._held))

    async def _discover(self) -> list[PartitionInfo]:
        attempt = 0
        while True:
            try:
                return await self.bus.discover()
            except Exception as exc:
                from .kinesis_bus import error_kind

                if error_kind(exc) is None:
                    raise
                attempt += 1
                delay = backoff_s(attempt)
                _log.warning("bus_retrying", operation="discover", attempt=attempt,
                             error=type(exc).__name__, delay_ms=round(delay * 1000))
                await asyncio.sleep(delay)

    def _spawn(self, lease: Lease, checkpoint: int, *, once: bool) -> None:
        stop = asyncio.Event()
        if self._stopping.is_set():
            stop.set()
        self._part_stop[lease.partition] = stop
        self._tasks[lease.partition] = asyncio.create_task(
            self._run_partition(lease, checkpoint, stop, once=once),
            name=f"partition-{lease.partition}",
        )

    def _reap(self) -> None:
        """Collect finished partition tasks; a task's crash (a bug) stops the projector."""
        for p, task in list(self._tasks.items()):
            if not task.done():
                continue
            del self._tasks[p]
            self._part_stop.pop(p, None)
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                raise exc
            reason = task.result()
            if reason == "drained":
                self._done.add(p)
            elif reason == "lost":
                self._held.pop(p, None)
                self.totals.leases_lost += 1
            elif reason == "closed" and p in self._held:
                # Nothing follows SHARD_END: the lease is of no use to anybody.
                self._pending_release.append(self._held.pop(p))

    def _lose(self, partition: int, why: str) -> None:
        """Stop a partition whose lease is gone, at once: it could not commit anyway."""
        self._held.pop(partition, None)
        self.totals.leases_lost += 1
        self.metrics.partition_released(partition)
        task = self._tasks.pop(partition, None)
        self._part_stop.pop(partition, None)
        if task is not None:
            task.cancel()
        _log.warning("lease_lost", stream=self.stream, partition=partition, owner=self.owner,
                     reason=why)

    async def _release(self, partition: int, why: str) -> None:
        """Stop the partition after its batch in flight, then give the lease back."""
        stop = self._part_stop.get(partition)
        if stop is not None:
            stop.set()
        task = self._tasks.pop(partition, None)
        if task is not None:
            # Bounded well below the ttl: the other leases must be renewed meanwhile.
            # Cancelling a batch in flight is safe: it either committed or it did not.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(task, timeout=self.settings.lease_ttl_s / 4)
        self._part_stop.pop(partition, None)
        self.metrics.partition_released(partition)
        lease = self._held.pop(partition, None)
        if lease is not None:
            await self._retrying("release_leases", lambda c: self.leases.release(c, [lease]))
            self.totals.leases_released += 1
            _log.info("lease_released", stream=self.stream, partition=partition,
                      token=lease.token, owner=self.owner, reason=why)

    async def _wait_for_a_task(self, timeout_s: float) -> None:
        if not self._tasks:
            await self._sleep_unless_stopped(timeout_s)
            return
        await asyncio.wait(list(self._tasks.values()), timeout=timeout_s,
                           return_when=asyncio.FIRST_COMPLETED)

    async def _shutdown(self) -> None:
        """Graceful stop: finish batches in flight, release every lease, leave."""
        for ev in self._part_stop.values():
            ev.set()
        tasks = list(self._tasks.values())
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.lease_ttl_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()
        self._part_stop.clear()
        leases = list(self._held.values()) + self._pending_release
        self._held.clear()
        self._pending_release = []
        # With the database down, a stop must still end: the leases expire
        # by themselves after their ttl, so giving up after one ttl loses nothing.
        budget = self.settings.lease_ttl_s
        try:
            if leases:
                await self._retrying("release_leases", lambda c: self.leases.release(c, leases),
                                     give_up_after_s=budget)
                self.totals.leases_released += len(leases)
                _log.info("leases_released", stream=self.stream, owner=self.owner,
                          partitions=sorted(x.partition for x in leases))
            await self._retrying("leave", self.leases.leave, give_up_after_s=budget)
        except Exception as exc:
            if not is_transient(exc):
                raise
            _log.warning("leases_left_to_expire", stream=self.stream, owner=self.owner,
                         error=type(exc).__name__)
        finally:
            await self.bus.close()

    async def prune(self) -> None:
        """Drop state older than the retention horizon behind the watermark (SPEC 6)."""
        horizon_us = self.settings.retention_days * 86_400 * 1_000_000
        floor = await self._retrying(
            "prune_retention",
            partial(prune_retention, stream=self.stream, horizon_us=horizon_us),
        )
        if floor is not None:
            _log.info("retention_pruned", stream=self.stream, retained_from_us=floor)

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _run_partition(
        self, lease: Lease, checkpoint: int, stop: asyncio.Event, *, once: bool
    ) -> str:
        """Consume one partition under `lease`.

        Returns 'drained' (--once, caught up), 'closed' (SHARD_END applied), 'lost'
        (fenced out at commit) or 'stopped'.
        """
        p = lease.partition
        fence = Fence(self.owner, lease.token)
        source = self.bus.open(p, checkpoint)
        next_lag_at = 0.0
        # The next batch is read and classified while this one is applied, so
        # the CPU work and the database round trips of a partition overlap.
        ahead: asyncio.Future[tuple[Batch, list[Record]]] | None = None
        try:
            while not stop.is_set() and not self._stopping.is_set():
                if ahead is not None:
                    batch, records = await ahead
                    ahead = None
                else:
                    batch = await source.read(self.settings.batch_size)
                    records = await self._classify(batch)
                high = self._high.get(p)
                self.metrics.partition_observed(
                    partition=p,
                    lag_records=None,
                    lag_ms=batch.lag_ms,
                    watermark_age_s=None if high is None else (time.time_ns() // 1000 - high) / 1e6,
                )
                if batch.lag_ms is not None and time.monotonic() >= next_lag_at:
                    next_lag_at = time.monotonic() + LAG_RECORD_INTERVAL_S
                    lag = batch.lag_ms
                    await self._retrying("record_lag", partial(
                        record_lag, stream=self.stream, partition=p, token=lease.token,
                        lag_ms=lag))
                if batch.records or batch.closes:
                    if not batch.closes:  # nothing follows SHARD_END
                        ahead = asyncio.ensure_future(self._read_ahead(source))
                    outcome = await self._apply_with_retry(p, fence, checkpoint, batch, records)
                    if outcome == _Outcome.LOST:
                        return "lost"
                    if outcome == _Outcome.CONFLICT:
                        await _discard(ahead)
                        ahead = None
                        await source.close()
                        checkpoint = await self._checkpoint(p)
                        source = self.bus.open(p, checkpoint)
                        continue
                    checkpoint = batch.next_offset
                    if batch.closes:
                        _log.info("partition_closed", stream=self.stream, partition=p,
                                  next_offset=checkpoint)
                        if batch.left_retention:  # records past the checkpoint lost upstream
                            self.metrics.partition_left_retention(p)
                        return "closed"
                    continue
                if once and batch.at_end:
                    return "drained"
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=self.bus.idle_s)
            return "stopped"
        finally:
            await _discard(ahead)
            await source.close()

    async def _read_ahead(self, source: PartitionSource) -> tuple[Batch, list[Record]]:
        batch = await source.read(self.settings.batch_size)
        return batch, await self._classify(batch)

    async def _checkpoint(self, partition: int) -> int:
        checkpoints = await self._retrying(
            "read_checkpoints", lambda conn: read_checkpoints(conn, self.stream)
        )
        return checkpoints.get(partition, 0)

    async def _retrying(
        self,
        what: str,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        give_up_after_s: float | None = None,
    ) -> T:
        """Run `work` on a pooled connection, retrying transient failures with backoff.

        Without `give_up_after_s` it retries for as long as it takes (a batch is
        never skipped); with it, the last transient error is raised once the
        time is up (for work that has a fallback, such as releasing leases that
        expire anyway).
        """
        attempt = 0
        deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
        while True:
            try:
                async with self.pool.acquire() as conn:
                    try:
                        return await work(cast(asyncpg.Connection, conn))
                    except Exception as exc:
                        if is_transient(exc):
                            # Never hand a connection that failed mid-work back to the pool.
                            conn.terminate()
                        raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                attempt += 1
                self.totals.retries += 1
                delay = backoff_s(attempt)
                _log.warning("store_retrying", operation=what, attempt=attempt,
                             error=type(exc).__name__, delay_ms=round(delay * 1000))
                await asyncio.sleep(delay)

    async def _classify(self, batch: Batch) -> list[Record]:
        """Classify a batch, yielding to the event loop between slices.

        Classification is pure CPU (tens of milliseconds for a batch); done in
        one go it would hold up the database round trips of the other
        partitions' batches, and their apply transactions would stretch by as
        much. In slices, those round trips are served in between.
        """
        policy, run_id = self.policy, self.settings.required_platform_run_id
        records: list[Record] = []
        pending = batch.records
        for start in range(0, len(pending), CLASSIFY_SLICE):
            if start:
                await asyncio.sleep(0)
            records.extend(
                Record(off, raw, classify(raw, policy, run_id))
                for off, raw in pending[start:start + CLASSIFY_SLICE]
            )
        return records

    async def _quarantine_refused(
        self, partition: int, records: list[Record], failure: Exception
    ) -> list[Record]:
        """`records` with every record the store refuses on its own made QUARANTINED.

        A refusal that no single record reproduces is not the records' own
        (a bug, or a broken database): the original failure is raised.
        """
        refusals = await self._retrying(
            "find_store_refusals",
            lambda conn: find_store_refusals(conn, records, self._group_ids, self._scopes),
        )
        if not refusals:
            raise failure
        by_offset = {r.offset: r for r in refusals}
        _log.warning("records_refused_by_store", stream=self.stream, partition=partition,
                     offsets=[str(r.offset) for r in refusals],
                     sqlstates=sorted({r.sqlstate for r in refusals}))
        out = []
        for rec in records:
            refusal = by_offset.get(rec.offset)
            if refusal is None:
                out.append(rec)
                continue
            event_id = getattr(rec.classified, "event_id", None)
            out.append(rec._replace(classified=Quarantined(
                QuarantineReason.STORE_REFUSED,
                f"the store refused the record: SQLSTATE {refusal.sqlstate}: {refusal.message}",
                event_id,
            )))
        return out

    async def _apply_with_retry(
        self, partition: int, fence: Fence, start: int, batch: Batch, records: list[Record]
    ) -> str:
        """APPLIED; CONFLICT when the checkpoint moved elsewhere (re-read); LOST (stop)."""
        t0 = time.perf_counter()
        try:
            while True:
                try:
                    result = await self._retrying(
                        "apply_batch",
                        partial(
                            apply_batch,
                            stream=self.stream,
                            partition=partition,
                            start_offset=start,
                            next_offset=batch.next_offset,
                            records=records,
                            group_ids=self._group_ids,
                            scope_cache=self._scopes,
                            fence=fence,
                            closes_partition=batch.closes,
                            max_future_us=self.settings.max_future_skew_s * 1_000_000,
                        ),
                    )
                    break
                except Exception as exc:
                    if not refused_by_store(exc):
                        raise
                    # No single record may stop a partition: find the records the
                    # database refuses, quarantine them, and apply the rest.
                    records = await self._quarantine_refused(partition, records, exc)
        except CheckpointConflictError as exc:
            _log.warning("batch_conflicted", stream=self.stream, partition=partition,
                         detail=str(exc))
            return _Outcome.CONFLICT
        except LeaseLostError:
            _log.warning("lease_lost", stream=self.stream, partition=partition,
                         owner=self.owner, token=fence.token, reason="fenced_at_commit")
            return _Outcome.LOST
        self.totals.batches += 1
        self.totals.records += len(records)
        self.metrics.batch_applied(
            partition=partition,
            outcomes={(str(o), str(r)): n for (o, r), n in result.outcomes.items()},
            records=len(records),
            duration_s=time.perf_counter() - t0,
        )
        if result.max_event_us is not None:
            self._high[partition] = max(self._high.get(partition, 0), result.max_event_us)
        counts: dict[str, int] = {}
        for (outcome, _reason), n in result.outcomes.items():
            counts[str(outcome)] = counts.get(str(outcome), 0) + n
            self.totals.by_outcome[str(outcome)] = (
                self.totals.by_outcome.get(str(outcome), 0) + n
            )
        _log.info(
            "batch_applied",
            stream=self.stream,
            partition=partition,
            owner=fence.owner,
            token=fence.token,
            start_offset=str(start),
            next_offset=str(batch.next_offset),
            records=len(records),
            applied=counts.get(Outcome.APPLIED, 0),
            duplicate=counts.get(Outcome.DUPLICATE, 0),
            ignored=counts.get(Outcome.IGNORED, 0),
            quarantined=counts.get(Outcome.QUARANTINED, 0),
            closes_partition=batch.closes,
            lag_ms=batch.lag_ms,
            duration_ms=round((time.perf_counter() - t0) * 1000, 2),
        )
        return _Outcome.APPLIED


_gc_settled = False


def _settle_gc() -> None:
    """Tune the cyclic GC for consuming, once per process.

    What startup built (modules, policy, pool) lives as long as the process:
    frozen, it is no longer rescanned by every full collection. A batch
    allocates a few objects per record that reference counting frees; with the
    default threshold of 700 they still set off a young collection every few
    records (in a classify micro-benchmark, about a quarter of its time).
    """
    global _gc_settled
    if _gc_settled:
        return
    _gc_settled = True
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


async def _discard(ahead: asyncio.Future[Any] | None) -> None:
    """Cancel a read-ahead that will not be applied, and let it finish."""
    if ahead is None:
        return
    ahead.cancel()
    with contextlib.suppress(asyncio.CancelledError, Exception):
        await ahead
