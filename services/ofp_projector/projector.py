"""The projector: the lease coordinator over one partition worker per lease.

A control loop (every lease_ttl/3, at most 1 s) discovers the bus's
partitions, heartbeats this replica, renews its leases, takes free or expired
ones up to its fair share and gives back extras while others are short. Each
lease it takes gets one `worker.PartitionWorker` run (read ahead, classify,
apply under the lease's fencing token); the coordinator keeps one
`PartitionRun` per held lease and nothing else per partition. A lost lease
stops its run at once; a graceful stop releases every lease. Transient
failures roll the batch back and retry it with backoff from the same offset:
nothing is skipped and the checkpoint never moves without the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import asyncpg

from ofp.config import Settings
from ofp.logs import get_logger
from ofp.policy import Policy
from ofp.store.db import is_transient, migrate
from ofp.store.leases import Lease, LeaseManager, plan_balance
from ofp.store.partitions import read_partition_states, record_partitions, workable
from ofp.store.rollout import Projection, read_epoch
from ofp.store.schema import check_schema
from ofp.store.timeparts import maintain
from ofp.store.writes import claim_stream, prune_retention, record_policy

from . import file_bus
from .bus import Bus, PartitionInfo
from .metrics import ProjectorMetrics
from .retry import StoreRetrier, backoff_s
from .worker import PartitionWorker, RunEnd, Totals, WorkerContext

__all__ = ["Projector", "Totals", "default_owner", "make_bus"]

_log = get_logger("ofp.projector")
# First-generation threshold of the cyclic GC while consuming (CPython's default is 700).
GC_YOUNG_THRESHOLD = 20_000
RETENTION_INTERVAL_S = 300.0


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


@dataclass
class PartitionRun:
    """A held lease and the worker run on it (`task` is None once reaped)."""

    lease: Lease
    worker: PartitionWorker
    task: asyncio.Task[RunEnd] | None


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
        self.store = StoreRetrier(pool, on_retry=self._count_retry)
        self._stopping = asyncio.Event()
        self._ctx = WorkerContext(
            settings=settings, projection=Projection(0, policy, (), frozenset()), bus=self.bus,
            owner=self.owner, store=self.store,
            metrics=self.metrics, totals=self.totals, stopping=self._stopping,
        )
        self._runs: dict[int, PartitionRun] = {}  # one per held lease
        self._known: set[int] = set()
        self._done: set[int] = set()  # --once: drained in this run
        self._workable: list[int] = []
        self._pending_release: list[Lease] = []

    @property
    def held_partitions(self) -> list[int]:
        return sorted(self._runs)

    def _count_retry(self) -> None:
        self.totals.retries += 1

    async def prepare(self) -> None:
        self.settings.check_retention(self.policy)
        if self.settings.auto_migrate:
            await self.store.run("migrate", migrate)
        await self.store.run("check_schema", check_schema)
        await self.store.run("claim_stream", partial(claim_stream, stream=self.stream))
        await self.maintain_partitions()
        await self.store.run(
            "record_policy",
            partial(record_policy, policy=self.policy,
                    required_platform_run_id=self.settings.required_platform_run_id),
        )
        # What is applied comes from the store: the active revision (which the
        # file's need not be, after `ofp policy activate`), the previous and the staged.
        proj = await self._ctx.reload_projection()
        self.settings.check_retention(proj.policy)
        _log.info(
            "projector_prepared",
            stream=self.stream,
            owner=self.owner,
            policy_id=self.policy.policy_id,
            revision=self.policy.revision,
            active_revision=proj.policy.revision,
            epoch=proj.epoch,
            groups=len(proj.group_ids),
        )

    def stop(self) -> None:
        self._stopping.set()
        for run in self._runs.values():
            run.worker.stop.set()

    async def run(self, *, once: bool = False) -> Totals:
        """Follow the bus until stopped; with `once`, drain to the current end and return."""
        if not self._ctx.projection.epoch:
            await self.prepare()
        await self.bus.start()
        _settle_gc()
        tick_s = min(1.0, self.settings.lease_ttl_s / 3)
        next_prune = time.monotonic() + RETENTION_INTERVAL_S
        try:
            while not self._stopping.is_set():
                await self._tick(once=once)
                if once:
                    if not self._running() and all(p in self._done for p in self._workable):
                        await self.prune()
                        break
                    await self._wait_for_a_run(tick_s)
                    continue
                if time.monotonic() >= next_prune:
                    await self.prune()
                    next_prune = time.monotonic() + RETENTION_INTERVAL_S
                await self._sleep_unless_stopped(tick_s)
        finally:
            await self._shutdown()
        return self.totals

    def _running(self) -> list[asyncio.Task[RunEnd]]:
        return [r.task for r in self._runs.values() if r.task is not None]

    async def _tick(self, *, once: bool) -> None:
        epoch = await self.store.run("read_epoch", read_epoch)
        if epoch is not None and epoch != self._ctx.projection.epoch:
            await self._ctx.reload_projection()
        infos = await self._discover()
        listed = {i.partition for i in infos}
        new = [i for i in infos if i.partition not in self._known]
        if new:
            await self.store.run(
                "record_partitions",
                partial(record_partitions, stream=self.stream, offset_kind=self.bus.offset_kind,
                        partitions=[(i.partition, i.parents) for i in new]),
            )
            self._known.update(i.partition for i in new)
        self._reap()
        if self._pending_release:
            closed, self._pending_release = self._pending_release, []
            await self.store.run("release_leases", partial(self.leases.release, leases=closed))
            self.totals.leases_released += len(closed)
        states = await self.store.run(
            "read_partition_states", partial(read_partition_states, stream=self.stream)
        )
        membership = await self.store.run("heartbeat", self.leases.heartbeat)
        held = [r.lease for r in self._runs.values()]
        lost = await self.store.run("renew_leases", partial(self.leases.renew, leases=held))
        for lease in lost:
            self._lose(lease.partition, "renewal_refused")
        self._workable = [p for p in workable(states, listed) if p not in self._done]
        if once:
            take, give = len(self._workable), 0
        else:
            take, give = plan_balance(me=self.owner, held=len(self._runs),
                                      partitions=len(self._workable), membership=membership)
        candidates = [p for p in self._workable if p not in self._runs]
        if take and candidates:
            got = await self.store.run(
                "acquire_leases", partial(self.leases.acquire, partitions=candidates, limit=take)
            )
            for lease in got:
                self.totals.leases_acquired += 1
                _log.info("lease_acquired", stream=self.stream, partition=lease.partition,
                          token=lease.token, owner=self.owner)
                self._start(lease, states[lease.partition].next_offset, once=once)
        if give:
            for p in sorted(self._runs)[-give:]:
                await self._release(p, "rebalanced")
        self.metrics.leases_held(len(self._runs))

    async def _discover(self) -> list[PartitionInfo]:
        attempt = 0
        while True:
            try:
                return await self.bus.discover()
            except Exception as exc:
                if not self.bus.is_retryable(exc):
                    raise
                attempt += 1
                delay = backoff_s(attempt)
                _log.warning("bus_retrying", operation="discover", attempt=attempt,
                             error=type(exc).__name__, delay_ms=round(delay * 1000))
                await asyncio.sleep(delay)

    def _start(self, lease: Lease, checkpoint: int, *, once: bool) -> None:
        worker = PartitionWorker(self._ctx, lease, checkpoint, once=once)
        if self._stopping.is_set():
            worker.stop.set()
        task = asyncio.create_task(worker.run(), name=f"partition-{lease.partition}")
        self._runs[lease.partition] = PartitionRun(lease, worker, task)

    def _reap(self) -> None:
        """Collect finished runs; a run's crash (a bug) stops the projector."""
        for p, run in list(self._runs.items()):
            task = run.task
            if task is None or not task.done():
                continue
            run.task = None
            if task.cancelled():
                continue
            exc = task.exception()
            if exc is not None:
                raise exc
            end = task.result()
            if end is RunEnd.DRAINED:
                self._done.add(p)
            elif end is RunEnd.LOST:
                del self._runs[p]
                self.totals.leases_lost += 1
            elif end is RunEnd.CLOSED:
                # Nothing follows SHARD_END: the lease is of no use to anybody.
                self._pending_release.append(self._runs.pop(p).lease)

    def _lose(self, partition: int, why: str) -> None:
        """Stop a partition whose lease is gone, at once: it could not commit anyway."""
        run = self._runs.pop(partition, None)
        self.totals.leases_lost += 1
        self.metrics.partition_released(partition)
        if run is not None and run.task is not None:
            run.task.cancel()
        _log.warning("lease_lost", stream=self.stream, partition=partition, owner=self.owner,
                     reason=why)

    async def _release(self, partition: int, why: str) -> None:
        """Stop the partition after its batch in flight, then give the lease back."""
        run = self._runs.pop(partition, None)
        if run is None:
            return
        run.worker.stop.set()
        if run.task is not None:
            # Bounded well below the ttl: the other leases must be renewed meanwhile.
            # Cancelling a batch in flight is safe: it either committed or it did not.
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(run.task, timeout=self.settings.lease_ttl_s / 4)
        self.metrics.partition_released(partition)
        await self.store.run("release_leases", partial(self.leases.release, leases=[run.lease]))
        self.totals.leases_released += 1
        _log.info("lease_released", stream=self.stream, partition=partition,
                  token=run.lease.token, owner=self.owner, reason=why)

    async def _wait_for_a_run(self, timeout_s: float) -> None:
        running = self._running()
        if not running:
            await self._sleep_unless_stopped(timeout_s)
            return
        await asyncio.wait(running, timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)

    async def _shutdown(self) -> None:
        """Graceful stop: finish batches in flight, release every lease, leave."""
        for run in self._runs.values():
            run.worker.stop.set()
        tasks = self._running()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.settings.lease_ttl_s)
            for t in pending:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        leases = [r.lease for r in self._runs.values()] + self._pending_release
        self._runs.clear()
        self._pending_release = []
        # With the database down, a stop must still end: the leases expire
        # by themselves after their ttl, so giving up after one ttl loses nothing.
        budget = self.settings.lease_ttl_s
        try:
            if leases:
                await self.store.run("release_leases",
                                     partial(self.leases.release, leases=leases),
                                     give_up_after_s=budget)
                self.totals.leases_released += len(leases)
                _log.info("leases_released", stream=self.stream, owner=self.owner,
                          partitions=sorted(x.partition for x in leases))
            await self.store.run("leave", self.leases.leave, give_up_after_s=budget)
        except Exception as exc:
            if not is_transient(exc):
                raise
            _log.warning("leases_left_to_expire", stream=self.stream, owner=self.owner,
                         error=type(exc).__name__)
        finally:
            await self.bus.close()

    async def prune(self) -> None:
        """Drop state older than the retention horizon (contract 6; docs/decisions.md)."""
        horizon_us = self.settings.retention_days * 86_400 * 1_000_000
        floor = await self.store.run(
            "prune_retention",
            partial(prune_retention, stream=self.stream, horizon_us=horizon_us),
        )
        if floor is not None:
            _log.info("retention_pruned", stream=self.stream, retained_from_us=floor)
        await self.maintain_partitions()

    async def maintain_partitions(self) -> None:
        """Time partitions: weeks ahead created, defaults emptied, retired weeks dropped."""
        done = await self.store.run("maintain_time_partitions", maintain)
        if done.created or done.dropped or done.busy:
            _log.info("time_partitions_maintained", stream=self.stream, created=done.created,
                      dropped=done.dropped, moved=len(done.moved), busy=done.busy)

    async def _sleep_unless_stopped(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)


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
