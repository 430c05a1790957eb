"""Rebuild feature state from a file-bus into a fresh database with the real projector.

Shared by `ofp replay` and `ofp verify --replay`: the same Projector the
workload runs, with `once=True`, so a rebuild can never disagree with
production on how a record is applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import sys
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


def stderr_progress(label: str) -> Progress:
    """A progress line on stderr: rewritten in place on a terminal, one per tick otherwise."""
    tty = sys.stderr.isatty()

    def show(records: int, elapsed_s: float) -> None:
        rate = records / elapsed_s if elapsed_s > 0 else 0.0
        line = f"{label}: {records} records, {rate:,.0f} records/s, {elapsed_s:.1f} s"
        print(f"\r{line}" if tty else line, end="" if tty else "\n", file=sys.stderr, flush=True)

    return show


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
    bus_root: str | Path,
    *,
    progress: Progress | None = None,
) -> Totals:
    """Drain `bus_root` into the (empty) database at `target_dsn`; the projector's totals."""
    replay_settings = dataclasses.replace(settings, file_bus_root=str(bus_root))
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
