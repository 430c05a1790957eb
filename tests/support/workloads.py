"""The workloads as real processes under fault: start, watch their JSON log lines, signal
them, and judge the state they leave (the fault-injection and graceful-stop suites).

A projection is judged against a single clean pass over the same bus: the same
answers (snapshot hashes included) and outcome totals, every commit made under
the partition's current lease token, and each partition's commits chained from
offset 0 to its end without gap or overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import grpc

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.contracts.timefmt import format_micros
from tests.support.harness import get_features, request_proto, running_server
from tests.support.streams import TOPIC, Stream, pins


def script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


def default_sigint() -> None:
    """Let the children started next see SIGINT's default action, as under a
    terminal: a test runner started in the background inherits SIGINT ignored, and
    an ignored signal stays ignored across exec (a handled one does not). Not a
    preexec_fn: forking a process whose gRPC threads run aborts the child."""
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


class Workload:
    """One `ofp-projector` / `ofp-server` process; its stdout JSON lines are kept."""

    def __init__(self, proc: asyncio.subprocess.Process, name: str) -> None:
        self.proc = proc
        self.name = name
        self.lines: list[dict[str, Any]] = []
        self.stderr = b""
        self._pump = asyncio.create_task(self._read())
        self._err = asyncio.create_task(self._read_err())

    @classmethod
    async def start(cls, name: str, env: dict[str, str], cwd: Path, *args: str) -> Workload:
        default_sigint()
        proc = await asyncio.create_subprocess_exec(
            script(name), *args, env=env, cwd=cwd,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        return cls(proc, name)

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        async for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                self.lines.append(json.loads(raw))

    async def _read_err(self) -> None:
        assert self.proc.stderr is not None
        self.stderr = await self.proc.stderr.read()

    def events(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        return [x for x in self.lines if x.get("event") == event
                and all(x.get(k) == v for k, v in fields.items())]

    @property
    def owner(self) -> str | None:
        found = self.events("projector_prepared")
        return str(found[0]["owner"]) if found else None

    async def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> float:
        """Signal it and wait for the exit; the seconds it took."""
        t0 = time.monotonic()
        mark = len(self.lines)
        if self.proc.returncode is None:
            self.proc.send_signal(sig)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout_s)
        except TimeoutError:
            raise AssertionError(
                f"{self.name} did not stop within {timeout_s} s of {signal.Signals(sig).name};"
                f" its stacks:\n{await self.stacks()}\n"
                f"its lines since: {self.lines[max(0, mark - 2):][:20]}"
            ) from None
        await asyncio.gather(self._pump, self._err)
        return time.monotonic() - t0

    async def stacks(self) -> str:
        """Where its threads are (py-spy), to tell why it hangs."""
        spy = await asyncio.create_subprocess_exec(
            script("py-spy"), "dump", "--pid", str(self.proc.pid),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await spy.communicate()
        return out.decode(errors="replace")

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()
        await asyncio.gather(self._pump, self._err, return_exceptions=True)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float,
                     what: str = "condition") -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        with contextlib.suppress(OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            if await predicate():
                return time.monotonic() - t0
        await asyncio.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout_s} s")


def write_prefix(stream: Stream, root: Path, shares: list[float]) -> Path:
    """Write the first `shares[p]` of each partition (the rest is appended later)."""
    d = root / TOPIC
    d.mkdir(parents=True, exist_ok=True)
    for p, lines in enumerate(stream.partitions):
        n = int(len(lines) * shares[p])
        (d / f"partition={p}.jsonl").write_text("".join(x + "\n" for x in lines[:n]))
    return d


def append_share(stream: Stream, root: Path, upto: float) -> None:
    """Grow every partition file to the first `upto` of its lines."""
    d = root / TOPIC
    for p, lines in enumerate(stream.partitions):
        path = d / f"partition={p}.jsonl"
        have = path.read_bytes().count(b"\n") if path.exists() else 0
        want = int(len(lines) * upto)
        if want > have:
            with path.open("a") as f:
                f.write("".join(x + "\n" for x in lines[have:want]))


async def checkpoints(pool: asyncpg.Pool) -> dict[int, int]:
    rows = await pool.fetch("SELECT partition, next_offset FROM checkpoints")
    return {int(r["partition"]): int(r["next_offset"]) for r in rows}


async def drained(pool: asyncpg.Pool, stream: Stream) -> bool:
    try:
        got = await checkpoints(pool)
    except asyncpg.UndefinedTableError:
        return False
    return got == {p: len(lines) for p, lines in enumerate(stream.partitions)}


async def holdings(pool: asyncpg.Pool) -> dict[str, list[int]]:
    """Live leases by owner."""
    rows = await pool.fetch(
        "SELECT owner, partition FROM partition_leases"
        " WHERE owner IS NOT NULL AND expires_at > now() ORDER BY partition")
    out: dict[str, list[int]] = {}
    for r in rows:
        out.setdefault(r["owner"], []).append(int(r["partition"]))
    return out


def answer_requests(stream: Stream) -> list[dict[str, Any]]:
    ts = sorted(e.ts_us for e in stream.truth)
    keys = [{"key_type": "flow_id", "key_id": k} for k in stream.keys]
    return [
        {"pins": pins(run), "as_of_time_utc": format_micros(t), "feature_keys": keys,
         "feature_groups": [{"name": "core_features", "version": "v1"}]}
        for run in ("A", "B") for t in (ts[len(ts) // 3], ts[-1])
    ]


async def projection_state(pool: asyncpg.Pool, stream: Stream) -> tuple[Any, ...]:
    """The answers (snapshot hashes included) and outcome totals a projection gives."""
    async with running_server(pool) as (_, stub):
        snaps = []
        for req in answer_requests(stream):
            snap = (await get_features(stub, req))["snapshot"]
            snap.pop("created_at_utc")
            snaps.append(snap)
    # Summed over partitions: which partition applies a re-delivered event first
    # (APPLIED there, DUPLICATE elsewhere) depends on timing, the totals do not.
    counters = await pool.fetch(
        "SELECT outcome, reason, sum(n)::bigint FROM outcome_counters"
        " GROUP BY outcome, reason ORDER BY outcome, reason")
    return snaps, [tuple(r) for r in counters]


async def assert_commits_fenced_and_chained(pool: asyncpg.Pool, stream: Stream) -> int:
    """No commit under a stale token; each partition's commits chain 0 -> end. The
    number of commits."""
    fenced_out = await pool.fetch(
        "SELECT c.* FROM checkpoint_commits c WHERE c.token IS NULL"
        " OR NOT EXISTS (SELECT 1 FROM lease_history h WHERE h.stream = c.stream"
        "   AND h.partition = c.partition AND h.token = c.token AND h.owner = c.owner"
        "   AND h.acquired_at <= c.committed_at)"
        " OR EXISTS (SELECT 1 FROM lease_history h WHERE h.stream = c.stream"
        "   AND h.partition = c.partition AND h.token > c.token"
        "   AND h.acquired_at < c.committed_at)")
    assert fenced_out == [], fenced_out[:3]
    commits = await pool.fetch(
        "SELECT partition, from_offset, next_offset FROM checkpoint_commits"
        " ORDER BY partition, committed_at, next_offset")
    for p, lines in enumerate(stream.partitions):
        chain = [(int(c["from_offset"]), int(c["next_offset"]))
                 for c in commits if c["partition"] == p]
        assert chain and chain[0][0] == 0 and chain[-1][1] == len(lines), (p, chain[-3:])
        assert all(b[0] == a[1] for a, b in itertools.pairwise(chain)), p
    return len(commits)


def get_features_call(port: int) -> tuple[grpc.aio.Channel, Any]:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    return channel, pb_grpc.FeatureServiceStub(channel).GetFeatures


class LoadResult:
    """Status codes of a load run, with the time each call ended."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str, float]] = []  # (end time, code, latency s)
        self.hashes: set[str] = set()

    def codes(self, since: float = 0.0, until: float = float("inf")) -> dict[str, int]:
        out: dict[str, int] = {}
        for t, code, _ in self.calls:
            if since <= t < until:
                out[code] = out.get(code, 0) + 1
        return out

    def latencies(self, since: float = 0.0, until: float = float("inf")) -> list[float]:
        return sorted(lat for t, code, lat in self.calls if since <= t < until and code == "OK")


async def offered_load(call: Any, doc: dict[str, Any], *, rate: float, stop: asyncio.Event,
                       result: LoadResult, timeout_s: float = 5.0) -> None:
    """Open loop: one call every 1/rate s, whatever the answers do, until `stop`."""
    request: pb.GetFeaturesRequest = request_proto(doc)
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        t0 = time.monotonic()
        try:
            resp = await call(request, timeout=timeout_s)
            code = "OK"
            result.hashes.add(resp.snapshot.snapshot_hash)
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        result.calls.append((time.monotonic(), code, time.monotonic() - t0))

    interval = 1.0 / rate
    due = time.monotonic()
    while not stop.is_set():
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        due += interval
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        elif delay < -1.0:
            due = time.monotonic()  # the client fell behind: do not burst to catch up
    if pending:
        await asyncio.wait(pending, timeout=timeout_s + 1)


PG15_BIN = Path("/usr/lib/postgresql/15/bin")


class OwnCluster:
    """A PostgreSQL cluster this test owns and may restart or crash: initdb'd into a
    temporary directory with the PG15 binaries, run as the OS user `postgres` (the
    server refuses root), listening on 127.0.0.1 on a free port."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.data = root / "data"
        self.port = port

    @classmethod
    def available(cls) -> bool:
        import pwd
        import shutil

        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return False
        return (PG15_BIN / "pg_ctl").exists() and shutil.which("runuser") is not None

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    async def _as_postgres(self, *args: str) -> None:
        import os

        cmd = ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)
        proc = await asyncio.create_subprocess_exec(
            *cmd, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        out, _ = await proc.communicate()
        assert proc.returncode == 0, (args, out.decode()[-2000:])

    async def init(self) -> None:
        import os
        import shutil

        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        await self._as_postgres(str(PG15_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
                                "-U", "postgres", "--no-sync", "-E", "UTF8")

    async def start(self) -> None:
        await self._as_postgres(
            str(PG15_BIN / "pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"),
            "-w", "-t", "60", "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
            " -c max_connections=200", "start")

    async def stop(self, mode: str = "fast") -> None:
        await self._as_postgres(str(PG15_BIN / "pg_ctl"), "-D", str(self.data), "-m", mode,
                                "-w", "-t", "60", "stop")

    async def restart(self, mode: str = "fast") -> None:
        """Stop (`fast`: sessions terminated; `immediate`: a crash, recovery at start)
        and start again."""
        await self.stop(mode)
        await self.start()
