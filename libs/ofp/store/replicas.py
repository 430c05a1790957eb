"""Read replicas: which PostgreSQL streaming replica a GetFeatures read goes to.

The projector writes to the primary; the feature server may read from replicas
(OFP_DATABASE_READ_URLS). An answer stays truthful on a replica because its
values, basis and policy come from ONE statement (ofp.store.reads), so from
one snapshot of that replica: a replica that lags gives an older answer with
its real basis and freshness, never a mix.

`ReadRouter` holds one pool per replica and measures them every
`check_interval_s` in the background:

- on the primary, `pg_current_wal_lsn()`, kept in a short history;
- on each replica, `pg_is_in_recovery()` and `pg_last_wal_replay_lsn()`.

Lag in bytes is the primary's position minus the replica's replay position.
Lag in seconds is an upper bound that does not grow while the primary is
idle: the smaller of the time since the primary was last measured at a
position the replica has replayed (everything committed before that
measurement is on the replica) and the age of the last commit the replica
replayed (commits replay in WAL order). A replica is in rotation while it answers,
is still in recovery (a promoted replica would never see another write) and
its lag is within `max_lag_s`. Reads are spread round robin over the replicas
in rotation; a read that fails on a replica with a connection-class error
takes it out at once (`failed`), and the next measurement brings it back.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg

from ofp.contracts.timefmt import format_micros
from ofp.logs import get_logger

from .db import create_pool

FALLBACKS = ("primary", "unavailable")
# Replica states (the status contract's ReadReplicaState names).
UNKNOWN, IN_ROTATION, LAGGING, PROMOTED, UNREACHABLE = (
    "UNKNOWN", "IN_ROTATION", "LAGGING", "PROMOTED", "UNREACHABLE")
# A measurement that takes longer than this counts as not answering.
CHECK_TIMEOUT_S = 2.0
# Opening a connection to a replica: a replica that does not answer costs a
# request its fallback, not its deadline.
CONNECT_TIMEOUT_S = 1.0

PRIMARY_LSN_SQL = (
    "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END"
)
REPLICA_SQL = """
SELECT pg_is_in_recovery() AS in_recovery,
       pg_last_wal_replay_lsn()::text AS replay_lsn,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS replay_age_s
"""

_log = get_logger("ofp.server")


def parse_lsn(text: str) -> int:
    """`16/B374D848` -> its 64-bit WAL position."""
    hi, _, lo = text.partition("/")
    return (int(hi, 16) << 32) | int(lo, 16)


def replica_name(dsn: str, index: int) -> str:
    """host:port/database, never the credentials; `replica<index>` for a DSN that is
    not a URL (key=value form)."""
    parts = urlsplit(dsn)
    if not parts.scheme or not parts.netloc:
        return f"replica{index}"
    host = parts.netloc.rpartition("@")[2] or "localhost"
    return f"{host}{parts.path or '/'}"


@dataclass(slots=True)
class Replica:
    name: str
    pool: asyncpg.Pool
    state: str = UNKNOWN
    lag_bytes: int | None = None
    lag_s: float | None = None
    checked_at_us: int | None = None  # wall clock of the last measurement
    error: str | None = None

    @property
    def in_rotation(self) -> bool:
        return self.state == IN_ROTATION

    def status(self) -> dict[str, Any]:
        """The ReadReplicaStatus document (GetStatus, `ofp status`)."""
        doc: dict[str, Any] = {"name": self.name, "state": self.state,
                               "in_rotation": self.in_rotation}
        if self.lag_bytes is not None:
            doc["lag_bytes"] = self.lag_bytes
        if self.lag_s is not None:
            doc["lag_ms"] = int(self.lag_s * 1000)
        if self.checked_at_us is not None:
            doc["checked_at_utc"] = format_micros(self.checked_at_us)
        if self.error is not None:
            doc["error"] = self.error
        return doc


class NoReplicaInRotation(Exception):
    """With replica_fallback `unavailable`: no replica may serve the read now."""


class ReadRouter:
    def __init__(
        self,
        primary: Any,
        replicas: Sequence[Replica],
        *,
        max_lag_s: float,
        fallback: str = "primary",
        check_interval_s: float = 0.5,
        on_check: Callable[[Replica], None] | None = None,
    ) -> None:
        """`primary` is a pool or a connection on the primary (measured, never read
        from here); `on_check(replica)` is told each measurement (metrics)."""
        if fallback not in FALLBACKS:
            raise ValueError(f"fallback must be one of {FALLBACKS}")
        self.primary = primary
        self.replicas = list(replicas)
        self.max_lag_s = max_lag_s
        self.fallback = fallback
        self.check_interval_s = check_interval_s
        self.on_check = on_check
        self.checks = 0  # measurement rounds made
        # (monotonic time, primary WAL position): long enough to tell any lag up
        # to twice the limit at the measuring interval.
        self._history: deque[tuple[float, int]] = deque(
            maxlen=max(16, int(2 * max_lag_s / check_interval_s) + 2))
        self._rotation: list[Replica] = []
        self._next = 0
        self._task: asyncio.Task[None] | None = None

    @classmethod
    async def open(
        cls, primary: Any, dsns: Sequence[str], *, max_lag_s: float, fallback: str,
        check_interval_s: float, pool_max: int, on_check: Callable[[Replica], None] | None = None,
    ) -> ReadRouter:
        """Pools for `dsns` (empty at first: a replica that is down does not stop
        the server starting) under names unique within the list."""
        replicas: list[Replica] = []
        seen: set[str] = set()
        for i, dsn in enumerate(dsns):
            name = replica_name(dsn, i)
            if name in seen:
                name = f"{name}#{i}"
            seen.add(name)
            pool = await create_pool(dsn, min_size=0, max_size=pool_max, generic_plans=True,
                                     connect_timeout_s=CONNECT_TIMEOUT_S)
            replicas.append(Replica(name, pool))
        return cls(primary, replicas, max_lag_s=max_lag_s, fallback=fallback,
                   check_interval_s=check_interval_s, on_check=on_check)

    def choose(self) -> Replica | None:
        """The replica the next read goes to (round robin over those in rotation), or
        None: read from the primary. Raises NoReplicaInRotation instead of None when
        the fallback is `unavailable`."""
        rotation = self._rotation
        if rotation:
            self._next += 1
            return rotation[self._next % len(rotation)]
        if self.fallback == "primary":
            return None
        raise NoReplicaInRotation

    def failed(self, replica: Replica, exc: BaseException) -> None:
        """A read on `replica` failed with a connection-class error: out of rotation
        until the next measurement finds it answering."""
        if replica.state != UNREACHABLE:
            _log.warning("read_replica_failed", replica=replica.name, error=type(exc).__name__)
        replica.state, replica.error = UNREACHABLE, type(exc).__name__
        self._update_rotation()

    async def start(self) -> None:
        """Measure once (so the first requests already use the replicas), then keep
        measuring in the background."""
        await self.check()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(),
                                                                name="replica-lag")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for r in self.replicas:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(r.pool.close(), 5)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.check_interval_s)
            try:
                await self.check()
            except Exception as exc:  # a measurement must never end the loop
                _log.warning("read_replica_check_failed", error=type(exc).__name__)

    async def check(self) -> None:
        """Measure the primary, then every replica, and update the rotation."""
        now = time.monotonic()
        primary_lsn: int | None = None
        try:
            text = await asyncio.wait_for(self.primary.fetchval(PRIMARY_LSN_SQL),
                                          CHECK_TIMEOUT_S)
            if text is not None:
                primary_lsn = parse_lsn(text)
                self._history.append((now, primary_lsn))
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            _log.warning("read_replica_primary_unmeasured", error=type(exc).__name__)
        await asyncio.gather(*(self._check(r, primary_lsn, now) for r in self.replicas))
        self.checks += 1
        self._update_rotation()

    async def _check(self, r: Replica, primary_lsn: int | None, now: float) -> None:
        before = r.state
        try:
            row = await asyncio.wait_for(r.pool.fetchrow(REPLICA_SQL), CHECK_TIMEOUT_S)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            r.state, r.error = UNREACHABLE, type(exc).__name__
            r.lag_bytes = r.lag_s = None
        else:
            assert row is not None
            r.error = None
            if not row["in_recovery"] or row["replay_lsn"] is None:
                r.state, r.lag_bytes, r.lag_s = PROMOTED, None, None
            else:
                replay = parse_lsn(row["replay_lsn"])
                r.lag_bytes = None if primary_lsn is None else max(0, primary_lsn - replay)
                r.lag_s = self._lag_s(replay, primary_lsn, row["replay_age_s"], now)
                r.state = (IN_ROTATION if r.lag_s is not None and r.lag_s <= self.max_lag_s
                           else LAGGING)
        r.checked_at_us = time.time_ns() // 1000
        if r.state != before:
            _log.info("read_replica_state", replica=r.name, state=r.state, previous=before,
                      lag_bytes=r.lag_bytes,
                      lag_s=None if r.lag_s is None else round(r.lag_s, 3), error=r.error)
        if self.on_check is not None:
            self.on_check(r)

    def _lag_s(self, replay: int, primary_lsn: int | None, replay_age_s: float | None,
               now: float) -> float | None:
        """How old the replica's data may be at most; None: unknown."""
        if primary_lsn is not None and replay >= primary_lsn:
            return 0.0
        bounds: list[float] = []
        # The latest measurement of the primary at a position the replica has
        # replayed: everything committed before it is on the replica.
        for t, lsn in reversed(self._history):
            if lsn <= replay:
                bounds.append(now - t)
                break
        # Commits replay in WAL order: everything committed before the last
        # replayed commit is on the replica too (the primary's clock against
        # the replica's: only as exact as their clocks agree).
        if replay_age_s is not None:
            bounds.append(max(0.0, replay_age_s))
        if bounds:
            return min(bounds)
        return None

    def _update_rotation(self) -> None:
        self._rotation = [r for r in self.replicas if r.in_rotation]

    def status(self) -> list[dict[str, Any]]:
        return [r.status() for r in self.replicas]
