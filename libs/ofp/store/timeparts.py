"""Time partitions of the state tables (migration 0009; docs/architecture.md).

Every table that grows with events is range-partitioned by event time, one
partition per 7 days (`PERIOD_US`), with a DEFAULT partition that catches
whatever arrives for a period without one (so no insert ever fails, and a read
sees those rows as it sees any). The projector creates periods ahead of the
watermark and ahead of the event times it applies, moves anything the default
caught into its period, and retention drops the periods that end at or below
the retention floor: no row is ever deleted from these tables to age them out.

The DDL runs inside SECURITY DEFINER functions of the migration (the
projector's role may not run DDL), each call in a transaction of its own under
a short `lock_timeout`: creating or dropping a partition takes an exclusive
lock on its table for a moment, and a wait for it must never queue the
server's reads behind it for long. A call that cannot get its locks is retried
with backoff, and given up after a few attempts (the default partition holds
the rows meanwhile; the next maintenance moves them). Concurrent replicas are
serialized by an advisory lock inside the functions.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import asyncpg

from ofp.logs import get_logger
from ofp.store.db import Conn
from ofp.store.reads import WATERMARK_EXPR
from ofp.windows import DAY_US

# One partition per 7 days, edges at multiples of 7 days since the epoch (weeks
# from Thursday 00:00 UTC): a day tile never straddles an edge, and a 7-day
# window touches two partitions. Must equal the period of migration 0009.
PERIOD_US = 7 * DAY_US
# Weeks created after the watermark's (capped by the clock) at every maintenance.
AHEAD_PERIODS = 1
# How long one DDL statement may wait for its table locks (reads queue behind
# a waiting exclusive lock), and how often it is tried before it is left to
# the next maintenance.
LOCK_TIMEOUT_MS = 100
ATTEMPTS = 8
BATCH_ATTEMPTS = 3

_log = get_logger("ofp.store.timeparts")


def period_start(ts_us: int) -> int:
    """The start of the partition period (µs, UTC) holding `ts_us`, before 1970 too."""
    return ts_us - ts_us % PERIOD_US


@dataclass(frozen=True, slots=True)
class TimePartition:
    parent: str
    name: str
    lo_us: int
    hi_us: int  # exclusive


@dataclass(slots=True)
class Maintenance:
    """What one maintenance pass did."""

    created: int = 0  # partitions
    moved: list[int] = field(default_factory=list)  # periods moved out of the defaults
    dropped: int = 0  # partitions
    busy: int = 0  # calls given up because their locks stayed taken


class PartitionLocksBusyError(Exception):
    """A partition's table stayed locked through every attempt."""


async def _ddl(conn: Conn, sql: str, *args: object, attempts: int) -> int:
    """Run one partition function in a transaction of its own under lock_timeout."""
    for attempt in range(attempts):
        try:
            async with conn.transaction():
                await conn.execute(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT_MS}ms'")
                return int(await conn.fetchval(sql, *args) or 0)
        except asyncpg.LockNotAvailableError:
            if attempt + 1 == attempts:
                break
            await asyncio.sleep(min(2.0, 0.05 * 2**attempt) * (0.5 + random.random()))
    raise PartitionLocksBusyError(sql)


async def time_partitioned(conn: Conn) -> list[tuple[str, str]]:
    """(table, partition column) of every time-partitioned table."""
    rows = await conn.fetch("SELECT tbl, col FROM ofp_time_partitioned()")
    return [(str(r[0]), str(r[1])) for r in rows]


async def list_partitions(conn: Conn) -> list[TimePartition]:
    """Every period partition, by table and start (the default partitions excluded)."""
    rows = await conn.fetch(
        "SELECT parent, name, lo, hi FROM ofp_time_partitions() ORDER BY parent, lo")
    return [TimePartition(str(r[0]), str(r[1]), int(r[2]), int(r[3])) for r in rows]


async def create_period(conn: Conn, start: int, *, attempts: int = ATTEMPTS) -> bool:
    """Create the period starting at `start` in every table that lacks it (moving
    the rows a default partition caught for it); False when its locks stayed busy."""
    try:
        created = await _ddl(conn, "SELECT ofp_create_time_partitions($1)", start,
                             attempts=attempts)
    except PartitionLocksBusyError:
        _log.warning("time_partition_busy", period_start_us=start)
        return False
    if created:
        _log.info("time_partitions_created", period_start_us=start, tables=created)
    return True


async def ensure_periods(
    conn: Conn, starts: Iterable[int], *, max_future_us: int, attempts: int = BATCH_ATTEMPTS
) -> set[int]:
    """Create the periods starting at `starts` in every table that lacks them;
    return the starts that need nothing more (created, present, or ending at or
    below the retention floor, where no event is applied). Periods past the
    database clock plus `max_future_us` are skipped (their events are
    quarantined, not applied) and so is a period whose locks stayed busy:
    neither is returned."""
    wanted = sorted(set(starts))
    if not wanted:
        return set()
    row = await conn.fetchrow(
        "SELECT (SELECT r.retained_from_us FROM retention r JOIN bus_stream s USING (stream))"
        " AS floor_us, (extract(epoch FROM now()) * 1000000)::bigint AS now_us")
    assert row is not None
    floor_us = row["floor_us"]
    limit_us = int(row["now_us"]) + max_future_us
    ready: set[int] = set()
    for start in wanted:
        retired = floor_us is not None and start + PERIOD_US <= int(floor_us) + 1
        if retired or (start <= limit_us and await create_period(conn, start,
                                                                   attempts=attempts)):
            ready.add(start)
    return ready


async def periods_in_defaults(conn: Conn) -> list[int]:
    """The periods of the rows the default partitions hold (normally none)."""
    tables = await time_partitioned(conn)
    union = " UNION ".join(
        f"SELECT DISTINCT {col} - ((({col} % {PERIOD_US}) + {PERIOD_US}) % {PERIOD_US})"
        f" FROM {tbl}_default" for tbl, col in tables)
    return sorted(int(r[0]) for r in await conn.fetch(union))


async def drop_retired(conn: Conn, *, attempts: int = ATTEMPTS) -> int:
    """Drop every period that ends at or below the retention floor, one period
    per transaction; return how many partitions were dropped."""
    dropped = 0
    while True:
        n = await _ddl(conn, "SELECT ofp_drop_time_partitions()", attempts=attempts)
        if not n:
            return dropped
        dropped += n


async def maintain(conn: Conn) -> Maintenance:
    """Create the periods ahead of the watermark, move what the defaults
    caught into its period (one at or below the floor too: it is then dropped
    like any other), and drop the periods retention gave up. Safe to run from every replica."""
    done = Maintenance()
    # Ahead of the stream's watermark, capped by the clock: a live stream's is
    # the present; a replay of history needs no week of the present yet (its
    # batches make their own), and a store without events needs none.
    row = await conn.fetchrow(
        f"SELECT {WATERMARK_EXPR} AS watermark_us,"
        " (extract(epoch FROM now()) * 1000000)::bigint AS now_us"
        " FROM checkpoints WHERE stream = (SELECT stream FROM bus_stream)")
    before = len(await list_partitions(conn))
    if row is not None and row["watermark_us"] is not None:
        current = period_start(min(int(row["watermark_us"]), int(row["now_us"])))
        for i in range(AHEAD_PERIODS + 1):
            if not await create_period(conn, current + i * PERIOD_US):
                done.busy += 1
    for start in await periods_in_defaults(conn):
        if await create_period(conn, start):
            done.moved.append(start)
        else:
            done.busy += 1
    if done.moved:
        _log.warning("time_partition_defaults_moved", periods=len(done.moved))
    done.created = len(await list_partitions(conn)) - before
    try:
        done.dropped = await drop_retired(conn)
    except PartitionLocksBusyError:
        done.busy += 1
        _log.warning("time_partition_drop_busy")
    return done
