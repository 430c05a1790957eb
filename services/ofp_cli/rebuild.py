"""Rebuild feature state from the bus into a fresh database with the real projector.

Shared by `ofp replay` and `ofp verify --replay`: the same Projector the
workload runs, with `once=True`, so a rebuild can never disagree with
production on how a record is applied. It reads a file-bus directory, or the
configured Kinesis stream from TRIM_HORIZON (what the stream still retains).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import asyncpg

from ofp.config import Settings
from ofp.policy import Policy
from ofp.store.db import create_pool
from ofp_projector.projector import Projector, Totals

from .errors import CliError

PROGRESS_INTERVAL_S = 0.5
Progress = Callable[[int, float], None]


def file_bus_records(root: str | Path, topic: str) -> int:
    """Complete lines in the topic's partition files: the total a file-bus rebuild reads."""
    total = 0
    for path in sorted((Path(root) / topic).glob("partition=*.jsonl")):
        with path.open("rb") as f:
            while chunk := f.read(1 << 20):
                total += chunk.count(b"\n")
    return total


async def ensure_empty(pool: asyncpg.Pool, stream: str) -> None:
    if not await pool.fetchval("SELECT to_regclass('checkpoints') IS NOT NULL"):
        return
    n = await pool.fetchval("SELECT count(*) FROM checkpoints WHERE stream = $1", stream)
    if n:
        raise CliError(f"the target database already holds checkpoints of {stream}; "
                       "replay needs an empty database")


async def rebuild(
    settings: Settings,
    policy: Policy,
    target_dsn: str,
    bus_root: str | Path | None,
    *,
    progress: Progress | None = None,
) -> Totals:
    """Drain the bus into the (empty) database at `target_dsn`; the projector's totals.

    `bus_root` is the file-bus directory to read; None reads the configured bus
    (a Kinesis stream from TRIM_HORIZON)."""
    if bus_root is not None:
        replay_settings = dataclasses.replace(settings, file_bus_root=str(bus_root),
                                              bus_kind="file")
    else:
        replay_settings = dataclasses.replace(settings, kinesis_start_position="TRIM_HORIZON")
    pool = await create_pool(target_dsn, max_size=max(2, settings.db_pool_max))
    try:
        await ensure_empty(pool, settings.bus_stream(policy.source_topic))
        projector = Projector(replay_settings, pool, policy)
        t0 = time.monotonic()
        task = asyncio.create_task(projector.run(once=True), name="replay")
        reporter = None
        if progress is not None:
            reporter = asyncio.create_task(_report(projector, t0, progress), name="progress")
        try:
            totals = await task
        finally:
            if reporter is not None:
                reporter.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reporter
        if progress is not None:
            progress(totals.records, time.monotonic() - t0)
        return totals
    finally:
        await pool.close()


async def _report(projector: Projector, t0: float, progress: Progress) -> None:
    while True:
        progress(projector.totals.records, time.monotonic() - t0)
        await asyncio.sleep(PROGRESS_INTERVAL_S)
