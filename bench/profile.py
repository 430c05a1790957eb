"""The evidence recorded next to a figure: where a process's CPU goes under load.

- `Sampling`: py-spy samples of a running process (no restart, no
  instrumentation), grouped by what the sampled frame belongs to;
- `ThreadCpu`: the CPU each thread of a process used during a span (the
  event-loop thread against grpc's own threads);
- `snapshot_statement_cost`: what PostgreSQL itself spends on one snapshot
  statement, sent alone with the server's parameters and generic plan.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]

from ofp.contracts.request import request_to_json, validate_request_json
from ofp.model import pins_of
from ofp.policy import policy_from_normalized
from ofp.snapshot import plan_read
from ofp.store.reads import (
    SNAPSHOTS_SQL,
    active_groups,
    active_policy_content,
    read_snapshots,
    snapshot_args,
)

from . import workload

PY_SPY = Path(sys.executable).parent / "py-spy"

# Leaf frame -> what it belongs to, first match wins. Without --native, time in
# compiled code is charged to the nearest Python frame: the event loop's
# `run` frame carries uvloop and grpc.aio's Cython, asyncpg's `_do_execute`
# its Cython protocol (binding parameters, decoding the row).
_BUCKETS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("grpc threads (completion queue, polling)", ("threading.py",)),
    ("event loop + grpc.aio (compiled)", ("asyncio/runners.py", "uvloop/")),
    ("asyncpg (driver, compiled protocol)", ("asyncpg/",)),
    ("logging + metrics", ("structlog/", "prometheus_client/", "logging/")),
    ("protobuf", ("google/protobuf", "google/rpc")),
    ("OFP code (validate, plan, assemble, hash, proto)",
     ("ofp/", "ofp_server/")),
    ("asyncio (Python)", ("asyncio/",)),
)


def _bucket(leaf: str) -> str:
    for name, needles in _BUCKETS:
        if any(n in leaf for n in needles):
            return name
    return "other"


@dataclass(frozen=True)
class Profile:
    samples: int
    shares: list[tuple[str, float]]  # (bucket, share of samples), largest first
    top: list[tuple[str, float]]  # (leaf frame, share), largest first

    def summary(self, top_n: int = 5) -> str:
        parts = ", ".join(f"{name} {share:.0%}" for name, share in self.shares)
        frames = "; ".join(f"`{frame}` {share:.1%}" for frame, share in self.top[:top_n])
        return f"{self.samples} samples: {parts}. Busiest frames: {frames}"


def parse_raw(text: str) -> Profile:
    """py-spy's `--format raw` output (`frame;frame;... count` per line) -> shares."""
    by_bucket: Counter[str] = Counter()
    by_leaf: Counter[str] = Counter()
    total = 0
    for line in text.splitlines():
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        leaf = stack.split(";")[-1]
        total += n
        by_bucket[_bucket(leaf)] += n
        by_leaf[leaf] += n
    if not total:
        return Profile(0, [], [])
    return Profile(
        total,
        [(k, v / total) for k, v in by_bucket.most_common()],
        [(k, v / total) for k, v in by_leaf.most_common()],
    )


class Sampling:
    """`py-spy record` of `pid` for `duration_s`, started on entry, read on exit.

    `profile` stays None when py-spy is missing or cannot attach (it needs
    ptrace rights): the figure is still measured, only without this evidence.
    """

    def __init__(self, pid: int, duration_s: float, out: Path, rate: int = 250) -> None:
        self.out = out
        self.profile: Profile | None = None
        self.error: str | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        if not PY_SPY.exists():
            self.error = f"py-spy not found at {PY_SPY}"
            return
        self._argv = [str(PY_SPY), "record", "-p", str(pid), "-d", f"{max(1, round(duration_s))}",
                      "-r", str(rate), "-f", "raw", "-o", str(out), "--nonblocking"]

    def __enter__(self) -> Sampling:
        if self.error is None:
            self._proc = subprocess.Popen(self._argv, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE)
        return self

    def __exit__(self, *_: object) -> None:
        if self._proc is None:
            return
        try:
            err = self._proc.communicate(timeout=60)[1]
        except subprocess.TimeoutExpired:
            self._proc.kill()
            err = self._proc.communicate()[1]
        if self._proc.returncode != 0 or not self.out.exists():
            self.error = f"py-spy exited {self._proc.returncode}: {err.decode()[-300:]}"
            return
        self.profile = parse_raw(self.out.read_text())


def _ticks(pid: int) -> dict[int, int]:
    """thread id -> user + system clock ticks, for every thread of `pid`."""
    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue  # the thread ended meanwhile
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(task.name)] = int(fields[11]) + int(fields[12])
    return out


class ThreadCpu:
    """CPU per thread of `pid` between entry and exit, split main thread / the rest."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.main_s = 0.0
        self.others_s = 0.0

    def __enter__(self) -> ThreadCpu:
        self._t0 = _ticks(self.pid)
        return self

    def __exit__(self, *_: object) -> None:
        hz = os.sysconf("SC_CLK_TCK")
        for tid, ticks in _ticks(self.pid).items():
            used = (ticks - self._t0.get(tid, 0)) / hz
            if tid == self.pid:
                self.main_s += used
            else:
                self.others_s += used


# The bench's own PostgreSQL server (its postmaster's pid), when it runs on this
# box: its processes are counted, not a neighbour's cluster (other test runs on
# a shared box). None: every `postgres` process counts.
_POSTMASTER: int | None = None


async def find_postmaster(dsn: str) -> int | None:
    """The postmaster of the server behind `dsn` when it runs on this box, else None."""
    conn = await asyncpg.connect(dsn)
    try:
        backend = int(await conn.fetchval("SELECT pg_backend_pid()"))
        try:
            proc = psutil.Process(backend)
            if proc.name() != "postgres":
                return None
            parent = proc.parent()
        except psutil.Error:
            return None  # a remote server, or another PID namespace
        return None if parent is None or parent.name() != "postgres" else int(parent.pid)
    finally:
        await conn.close()


def count_postgres_of(postmaster: int | None) -> None:
    """Charge `BoxCpu`'s PostgreSQL time to this postmaster's processes only."""
    global _POSTMASTER
    _POSTMASTER = postmaster


def _postgres_procs() -> list[psutil.Process]:
    if _POSTMASTER is not None:
        try:
            root = psutil.Process(_POSTMASTER)
            return [root, *root.children(recursive=True)]
        except psutil.Error:
            pass
    return [p for p in psutil.process_iter(["name"]) if p.info["name"] == "postgres"]


def _postgres_times() -> dict[int, float]:
    """pid -> CPU seconds used so far, per process of the bench's PostgreSQL."""
    out: dict[int, float] = {}
    for proc in _postgres_procs():
        try:
            t = proc.cpu_times()
        except psutil.Error:
            continue  # gone meanwhile
        out[int(proc.pid)] = t.user + t.system
    return out


def _postgres_cpu_s() -> float:
    """CPU seconds used so far by the bench's PostgreSQL (see `count_postgres_of`)."""
    return sum(_postgres_times().values())


class PostgresCpu:
    """PostgreSQL's CPU over a span whose backends come and go (a projector's
    connections end with it, and an ended process's CPU can no longer be read):
    `sample()` it often; each process counts up to its last sample."""

    def __init__(self) -> None:
        self._start: dict[int, float] = {}
        self._last: dict[int, float] = {}

    def __enter__(self) -> PostgresCpu:
        self._start = _postgres_times()
        self._last = dict(self._start)
        return self

    def sample(self) -> None:
        self._last.update(_postgres_times())

    def __exit__(self, *_: object) -> None:
        self.sample()

    @property
    def seconds(self) -> float:
        return sum(t - self._start.get(pid, 0.0) for pid, t in self._last.items())


def _children_cpu_s() -> float:
    """CPU seconds of this process's waited-for children (the h2load runs)."""
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


class BoxCpu:
    """CPU of the box's parties between entry and exit: PostgreSQL (the bench's
    server's processes when `count_postgres_of` named its postmaster, else every
    `postgres` process on the box) and the load generator (children of this
    process that ended meanwhile)."""

    def __init__(self) -> None:
        self.postgres_s = 0.0
        self.generator_s = 0.0

    def __enter__(self) -> BoxCpu:
        self._pg0, self._gen0 = _postgres_cpu_s(), _children_cpu_s()
        return self

    def __exit__(self, *_: object) -> None:
        self.postgres_s = _postgres_cpu_s() - self._pg0
        self.generator_s = _children_cpu_s() - self._gen0


@dataclass(frozen=True)
class StatementCost:
    wall_us: float  # one statement, sent and answered, one after another
    postgres_cpu_us: float  # CPU of the PostgreSQL processes per statement
    runs: int


async def snapshot_statement_cost(dsn: str, keys: list[int], *, runs: int = 500
                                  ) -> StatementCost:
    """The snapshot statement for `keys` alone, as the server sends it, `runs` times.

    The parameters are built by the server's own code (validation, plan,
    `snapshot_args`) and the session uses its generic plans; the statements
    go one after another on one connection, after as many warm-up runs.
    (EXPLAIN ANALYZE was tried: it plans the statement on every call and its
    instrumentation doubles the execution time, so it overstates the cost.)
    """
    conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        found = await active_policy_content(conn)
        if found is None:
            raise RuntimeError("no active policy: no statement to measure")
        policy = policy_from_normalized(found[0])
        group_ids = await active_groups(conn)
        proto = workload.request_proto(workload.request_doc(keys))
        req = validate_request_json(request_to_json(proto), max_keys=len(keys), max_groups=8)
        plan = plan_read(req, policy, group_ids)
        args, _ = snapshot_args(policy.source_topic, [(pins_of(req.pins), plan.probes)])
        stmt = await conn.prepare(SNAPSHOTS_SQL)
        for _ in range(runs):
            await stmt.fetchrow(*args)
        with BoxCpu() as box:
            t0 = time.perf_counter()
            for _ in range(runs):
                await stmt.fetchrow(*args)
            wall = time.perf_counter() - t0
        return StatementCost(wall * 1e6 / runs, box.postgres_s * 1e6 / runs, runs)
    finally:
        await conn.close()


async def read_cost(dsn: str, keys: Sequence[workload.Key], groups: Sequence[dict[str, str]], *,
                    runs: int = 200) -> StatementCost:
    """The store read of one request, as the server makes it, `runs` times one after another.

    `read_snapshots` with the server's plan: for v1 groups the snapshot
    statement and the feature values statement in one repeatable-read
    transaction (docs/features.md); generic plans, after as many warm-up runs.
    """
    conn = await asyncpg.connect(dsn, server_settings={"plan_cache_mode": "force_generic_plan"})
    try:
        found = await active_policy_content(conn)
        if found is None:
            raise RuntimeError("no active policy: no statement to measure")
        policy = policy_from_normalized(found[0])
        group_ids = await active_groups(conn)
        proto = workload.request_proto(workload.request_doc(keys, groups=groups))
        req = validate_request_json(request_to_json(proto), max_keys=100, max_groups=16)
        plan = plan_read(req, policy, group_ids)
        reads = [(pins_of(req.pins), plan.probes)]
        for _ in range(runs):
            await read_snapshots(conn, stream=policy.source_topic, reads=reads)
        with BoxCpu() as box:
            t0 = time.perf_counter()
            for _ in range(runs):
                await read_snapshots(conn, stream=policy.source_topic, reads=reads)
            wall = time.perf_counter() - t0
        return StatementCost(wall * 1e6 / runs, box.postgres_s * 1e6 / runs, runs)
    finally:
        await conn.close()
