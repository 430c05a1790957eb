"""The snapshot recorder: served snapshots to the snapshot log, off the hot path.

A GetFeatures answer hands `record()` the canonical bytes its hash was computed
from (no encoding on the request path); they wait in a bounded asyncio queue
that one background task drains in batches, every `snapshot_log_flush_ms` or
at `snapshot_log_batch` entries, with one COPY into the primary's
`snapshot_log` table or one PUT per snapshot to S3. A full queue drops the
entry and counts it (`snapshot_log_overflow: drop`, the default: a call never
fails or waits for the log) or makes the call wait for room (`block`). A
failed write drops its batch, counted and logged; the server keeps serving.
`stop()` drains the queue: a graceful shutdown loses nothing queued.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import asyncpg
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from ofp.config import Settings
from ofp.contracts.request import ValidRequest
from ofp.contracts.timefmt import parse_micros
from ofp.logs import get_logger
from ofp.store.snapshot_log import (
    SnapshotEntry,
    days_covered,
    ensure_partitions,
    fetch_entry,
    insert_entries,
    partition_days,
    request_record,
)
from ofp.store.snapshot_s3 import S3SnapshotStore

_log = get_logger("ofp.server.snapshot_log")
PG_REF_PREFIX = "pg:snapshot_log/"
# How long after the last drop GetStatus still says the log is shedding.
SHEDDING_RECENT_S = 60.0

_Item = tuple[int, str, str, ValidRequest, bytes]


class SnapshotLogMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.recorded = Counter(
            "ofp_snapshot_log_recorded",
            "Snapshots written to the snapshot log", registry=registry)
        self.dropped = Counter(
            "ofp_snapshot_log_dropped",
            "Snapshots not recorded: queue_full (overflow policy drop) or write_failed",
            ["reason"], registry=registry)
        self.blocked = Counter(
            "ofp_snapshot_log_blocked",
            "GetFeatures calls that waited for room in the snapshot log queue (policy block)",
            registry=registry)
        self.queue_depth = Gauge(
            "ofp_snapshot_log_queue_depth",
            "Snapshots waiting to be written, at the last flush", registry=registry,
            multiprocess_mode="livesum")
        self.flush_seconds = Histogram(
            "ofp_snapshot_log_flush_seconds", "Time to write one batch to the snapshot log",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=registry)
        for reason in ("queue_full", "write_failed"):
            self.dropped.labels(reason=reason)
        self._queue_full = self.dropped.labels(reason="queue_full")
        self.write_failed = self.dropped.labels(reason="write_failed")

    def drop(self) -> None:
        self._queue_full.inc()


class SnapshotRecorder:
    """The queue, its drainer and the sink (the primary pool or an S3 bucket)."""

    def __init__(self, settings: Settings, pool: asyncpg.Pool,
                 registry: CollectorRegistry) -> None:
        self.kind = settings.snapshot_log
        self.sample = settings.snapshot_log_sample
        self.block = settings.snapshot_log_overflow == "block"
        self.batch = settings.snapshot_log_batch
        self.flush_s = settings.snapshot_log_flush_ms / 1000
        self.retention_days = settings.snapshot_log_retention_days
        self.pool = pool
        self.metrics = SnapshotLogMetrics(registry)
        self.queue: asyncio.Queue[_Item | None] = asyncio.Queue(settings.snapshot_log_queue)
        self.s3: S3SnapshotStore | None = None
        if self.kind == "s3":
            assert settings.snapshot_log_s3_bucket is not None  # Settings.validate
            self.s3 = S3SnapshotStore(
                settings.snapshot_log_s3_bucket, settings.snapshot_log_s3_prefix,
                endpoint_url=settings.snapshot_log_s3_endpoint_url, region=settings.aws_region)
            self._ref_prefix = f"s3://{self.s3.bucket}/{self.s3.prefix}"
            self._ref_suffix = ".json"
        else:
            self._ref_prefix, self._ref_suffix = PG_REF_PREFIX, ""
        self._days: set[Any] = set()  # days whose partitions exist
        self._task: asyncio.Task[None] | None = None
        self.dropped = 0
        self.failed = 0
        self.last_drop: float | None = None  # time.monotonic() of the last drop

    # ------------------------------------------------------------------ hot path

    async def record(self, req: ValidRequest, snapshot: dict[str, Any], hashed: bytes) -> None:
        """Queue the served snapshot; set its snapshot_ref when it was queued."""
        if self.sample < 1.0 and random.random() >= self.sample:
            return
        digest = snapshot["snapshot_hash"]
        item = (time.time_ns() // 1000, digest, snapshot["created_at_utc"], req, hashed)
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            if not self.block:
                self.dropped += 1
                self.last_drop = time.monotonic()
                self.metrics.drop()
                return
            self.metrics.blocked.inc()
            await self.queue.put(item)
        snapshot["snapshot_ref"] = f"{self._ref_prefix}{digest}{self._ref_suffix}"

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        if self.s3 is not None:
            await self.s3.open()
        self._task = asyncio.create_task(self._drain(), name="snapshot_log")

    async def stop(self) -> None:
        """Write everything queued, then stop (after the server stopped taking calls)."""
        if self._task is None:
            return
        await self.queue.put(None)
        try:
            await self._task
        finally:
            self._task = None
            if self.s3 is not None:
                await self.s3.close()

    def shedding(self) -> bool:
        """True when an entry was dropped within the last SHEDDING_RECENT_S."""
        return self.last_drop is not None and (
            time.monotonic() - self.last_drop < SHEDDING_RECENT_S)

    async def _drain(self) -> None:
        stopping = False
        while not stopping:
            first = await self.queue.get()
            if first is None:
                break
            if self.queue.qsize() < self.batch - 1:
                await asyncio.sleep(self.flush_s)  # let a batch gather
            items = [first]
            while len(items) < self.batch:
                try:
                    item = self.queue.get_nowait()
                except asyncio.QueueEmpty:
                    break
                if item is None:
                    stopping = True
                    break
                items.append(item)
            self.metrics.queue_depth.set(self.queue.qsize())
            await self._flush(items)

    async def _flush(self, items: list[_Item]) -> None:
        t0 = time.perf_counter()
        try:
            entries = [
                SnapshotEntry(digest, recorded_us, parse_micros(created), req.as_of_us, hashed,
                              request_record(req.keys, req.groups, req.policy_revision))
                for recorded_us, digest, created, req, hashed in items
            ]
            await self.write(entries)
        except Exception as exc:  # the log must never take the server (or its drainer) down
            self.failed += len(items)
            self.metrics.write_failed.inc(len(items))
            _log.warning("snapshot_log_write_failed", error=type(exc).__name__,
                         detail=str(exc)[:200], snapshots=len(items))
            return
        self.metrics.flush_seconds.observe(time.perf_counter() - t0)
        self.metrics.recorded.inc(len(items))

    async def write(self, entries: list[SnapshotEntry]) -> None:
        if self.s3 is not None:
            await self.s3.put_entries(entries)
            return
        async with self.pool.acquire() as conn:
            days = partition_days(entries)
            if not days <= self._days:
                now_us = max(e.recorded_at_us for e in entries)
                dropped = await ensure_partitions(conn, now_us,
                                                  retention_days=self.retention_days)
                if dropped:
                    _log.info("snapshot_log_partitions_dropped", partitions=dropped)
                self._days = days_covered(now_us) | days
            await insert_entries(conn, entries)

    # ------------------------------------------------------------------ reads

    async def fetch(self, snapshot_hash: str) -> tuple[SnapshotEntry, str] | None:
        """A recorded snapshot and the snapshot_ref it was served with."""
        if self.s3 is not None:
            entry = await self.s3.get_entry(snapshot_hash)
        else:
            entry = await fetch_entry(self.pool, snapshot_hash)
        if entry is None:
            return None
        return entry, f"{self._ref_prefix}{snapshot_hash}{self._ref_suffix}"
