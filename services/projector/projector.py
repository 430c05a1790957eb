"""The projector: bus -> classification -> one transaction per batch.

One task per partition; each reads a batch from its checkpoint, classifies the
records (pure), and applies them with `ofp.store.writes.apply_batch`. Transient
failures roll the batch back and retry it with backoff from the same offset:
nothing is skipped and the checkpoint never moves without the state.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import TypeVar, cast

import asyncpg

from ofp.config import Settings
from ofp.events import Outcome, classify
from ofp.logs import get_logger
from ofp.policy import Policy
from ofp.store.db import is_transient, migrate
from ofp.store.writes import (
    CheckpointConflictError,
    Pins,
    Record,
    apply_batch,
    ensure_partitions,
    prune_retention,
    read_checkpoints,
    record_policy,
)

from . import file_bus

_log = get_logger("ofp.projector")
MAX_BACKOFF_S = 5.0
RETENTION_INTERVAL_S = 300.0
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


class Projector:
    def __init__(self, settings: Settings, pool: asyncpg.Pool, policy: Policy) -> None:
        self.settings = settings
        self.pool = pool
        self.policy = policy
        self.stream = policy.source_topic
        self.totals = Totals()
        self._group_ids: list[int] = []
        self._scopes: dict[Pins, int] = {}
        self._stopping = asyncio.Event()
        self._tasks: dict[int, asyncio.Task[None]] = {}

    async def prepare(self) -> None:
        await self._retrying("migrate", migrate)
        self._group_ids = await self._retrying(
            "record_policy",
            lambda conn: record_policy(conn, self.policy, self.settings.required_platform_run_id),
        )
        _log.info(
            "projector_prepared",
            stream=self.stream,
            policy_id=self.policy.policy_id,
            revision=self.policy.revision,
        )

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, *, once: bool = False) -> Totals:
        """Follow the bus until stopped; with `once`, drain to the current end and return."""
        if not self._group_ids:
            await self.prepare()
        root = self.settings.file_bus_root
        next_prune = time.monotonic() + RETENTION_INTERVAL_S
        while not self._stopping.is_set():
            partitions = file_bus.list_partitions(root, self.stream)
            new = [p for p in partitions if p not in self._tasks]
            if new:
                await self._retrying(
                    "ensure_partitions",
                    partial(ensure_partitions, stream=self.stream,
                            offset_kind=file_bus.OFFSET_KIND, partitions=new),
                )
                for p in new:
                    self._tasks[p] = asyncio.create_task(
                        self._run_partition(p, once=once), name=f"partition-{p}"
                    )
            if once:
                if self._tasks:
                    await asyncio.gather(*self._tasks.values())
                await self.prune()
                break
            if time.monotonic() >= next_prune:
                await self.prune()
                next_prune = time.monotonic() + RETENTION_INTERVAL_S
            await self._sleep_unless_stopped(1.0)
        if self._tasks:
            await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        return self.totals

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

    async def _run_partition(self, partition: int, *, once: bool) -> None:
        path = file_bus.partition_path(self.settings.file_bus_root, self.stream, partition)
        reader = await self._reader_at_checkpoint(path, partition)
        idle_s = self.settings.poll_interval_ms / 1000
        while not self._stopping.is_set():
            lines = reader.read(self.settings.batch_size)
            if not lines:
                if once:
                    return
                await self._sleep_unless_stopped(idle_s)
                continue
            start = lines[0][0]
            records = [
                Record(off, raw, classify(raw, self.policy, self.settings.required_platform_run_id))
                for off, raw in lines
            ]
            ok = await self._apply_with_retry(partition, start, reader.next_offset, records)
            if not ok:
                reader = await self._reader_at_checkpoint(path, partition)

    async def _reader_at_checkpoint(
        self, path: Path, partition: int
    ) -> file_bus.PartitionReader:
        checkpoints = await self._retrying(
            "read_checkpoints", lambda conn: read_checkpoints(conn, self.stream)
        )
        return file_bus.PartitionReader(path, checkpoints.get(partition, 0))

    async def _retrying(
        self, what: str, work: Callable[[asyncpg.Connection], Awaitable[T]]
    ) -> T:
        """Run `work` on a pooled connection, retrying transient failures with backoff."""
        attempt = 0
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
                attempt += 1
                self.totals.retries += 1
                delay = backoff_s(attempt)
                _log.warning("store_retrying", operation=what, attempt=attempt,
                             error=type(exc).__name__, delay_ms=round(delay * 1000))
                await asyncio.sleep(delay)

    async def _apply_with_retry(
        self, partition: int, start: int, next_offset: int, records: list[Record]
    ) -> bool:
        """True when applied; False when the checkpoint moved elsewhere (re-read)."""
        t0 = time.perf_counter()
        try:
            result = await self._retrying(
                "apply_batch",
                lambda conn: apply_batch(
                    conn,
                    stream=self.stream,
                    partition=partition,
                    start_offset=start,
                    next_offset=next_offset,
                    records=records,
                    group_ids=self._group_ids,
                    scope_cache=self._scopes,
                ),
            )
        except CheckpointConflictError as exc:
            _log.warning("batch_conflicted", partition=partition, detail=str(exc))
            return False
        self.totals.batches += 1
        self.totals.records += len(records)
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
            start_offset=start,
            next_offset=next_offset,
            records=len(records),
            applied=counts.get(Outcome.APPLIED, 0),
            duplicate=counts.get(Outcome.DUPLICATE, 0),
            ignored=counts.get(Outcome.IGNORED, 0),
            quarantined=counts.get(Outcome.QUARANTINED, 0),
            duration_ms=round((time.perf_counter() - t0) * 1000, 2),
        )
        return True
