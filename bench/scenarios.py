"""The benchmark figures, each measured against its reference in the same run."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import statistics
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import asyncpg
import grpc
import orjson

from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.events import classify
from ofp.policy import load_policy

from . import h2load, pg_replica, policies, procs, profile, workload
from .export import export_scenario
from .pg import BenchPostgres
from .policies import BenchPolicy
from .report import Figure, fmt, now_utc
from .state_partitions import retention_churn, state_realistic

SMALL_STATE_KEYS = 1_000
HOT_KEY = 900_000_000
MB = 1024 * 1024


@dataclass(frozen=True)
class Sizes:
    repeats: int = 3
    # 1: closed loop
    sat_requests_echo: int = 20_000
    sat_requests_features: int = 5_000
    sat_clients: int = 8
    sat_streams: int = 8
    # ofp-server processes sharing the port (OFP_GRPC_REUSEPORT), the echo reference alike
    server_processes: int = 1
    # open-loop runs
    duration_s: int = 10
    warmup_s: float = 2.0
    p99_rate: float = 1_000
    p99_clients: int = 10
    multi_keys: int = 50
    multi_rate: float = 100
    hot_events: int = 100_000
    hot_rate: float = 200
    state_keys: int = 1_000_000
    state_rate: float = 200
    # ingest and memory
    ingest_events: int = 2_000_000
    ingest_partitions: int = 2
    # Projector processes sharing the partitions through leases (one per partition).
    ingest_replicas: int = 2
    ingest_repeats: int = 1
    copy_repeats: int = 3
    memory_events: int = 10_000_000
    freshness_repeats: int = 200
    # the rich v1 policy (bench/policies.py): ingest, and per kind one run of
    # this many seconds each for the hot and the one-event key
    rich_ingest_events: int = 200_000
    kind_duration_s: int = 8
    # 50 rich keys x 3 groups cost the box 35-57 ms of CPU per request (docs/performance.md,
    # "The rich v1 policy"): 100 req/s would overload 2 cores, so that figure runs at this rate
    rich_multi_rate: float = 20
    # the rich hot-key figure's open-loop rate (the v0 figure's by default)
    rich_hot_rate: float = 200
    # training export (bench/export.py): spine rows, and the state they read
    export_rows: int = 1_000_000
    export_keys: int = 10_000
    export_events: int = 200_000
    export_chunk_rows: int = 2_000
    # time partitions (bench/state_partitions.py): keys of the realistic state at
    # full-scale density, and the retention churn's duration and pace
    realistic_keys: int = 100
    realistic_rich_flows: int = 4
    churn_s: int = 180
    churn_days_per_run: int = 2
    churn_events_per_day: int = 2_000


QUICK = Sizes(
    repeats=1, sat_requests_echo=300, sat_requests_features=200, duration_s=2, warmup_s=0.5,
    p99_rate=100, multi_rate=20, hot_events=500, hot_rate=50, state_keys=3_000, state_rate=50,
    ingest_events=5_000, copy_repeats=1, memory_events=5_000, freshness_repeats=5,
    rich_ingest_events=2_000, kind_duration_s=1, rich_multi_rate=10, rich_hot_rate=50,
    export_rows=5_000, export_keys=200, export_events=2_000,
    realistic_keys=2, realistic_rich_flows=1, churn_s=8,
)


@dataclass
class Context:
    pg: BenchPostgres
    work: Path
    sizes: Sizes
    figures: list[Figure] = field(default_factory=list)

    def path(self, stem: str) -> Path:
        return self.work / f"{stem}-{uuid.uuid4().hex[:6]}"


def url(port: int) -> str:
    return f"http://127.0.0.1:{port}/ofp.v1.FeatureService/GetFeatures"


Groups = tuple[dict[str, str], ...]
V0_GROUPS: Groups = (workload.GROUP,)


def body_file(ctx: Context, keys: Iterable[workload.Key], groups: Groups = V0_GROUPS) -> Path:
    path = ctx.path("body").with_suffix(".bin")
    doc = workload.request_doc(keys, groups=groups)
    message = workload.request_proto(doc).SerializeToString()
    path.write_bytes(workload.grpc_frame(message))
    return path


class RequestCheckError(RuntimeError):
    """The request a load run would send is not answered OK: no figure is measured with it."""


async def check_ok(port: int, keys: Sequence[workload.Key], *, expect_keys: bool = True,
                   groups: Groups = V0_GROUPS) -> None:
    """Send the load run's request once with a real gRPC client; OK and keys present, or raise.

    With `expect_keys`, every requested key must be answered for every requested
    group of its key type (none missing, no group missing).
    """
    request = workload.request_proto(workload.request_doc(keys, groups=groups))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = await pb_grpc.FeatureServiceStub(channel).GetFeatures(  # type: ignore[no-untyped-call]
            request, timeout=10
        )
    if resp.status != "OK":
        raise RequestCheckError(f"status {resp.status!r}, not OK")
    if expect_keys:
        present = set(resp.snapshot.features.fields)
        missing = [label for label in map(workload.key_label, keys) if label not in present]
        if missing:
            raise RequestCheckError(f"keys missing from the answer: {missing[:5]}")
        groups_missing = list(resp.snapshot.freshness.missing_groups)
        if groups_missing:
            raise RequestCheckError(f"groups missing from the answer: {groups_missing[:5]}")


async def wait_ok(port: int, keys: Sequence[workload.Key], proc: procs.Processes, *,
                  expect_keys: bool = True, timeout_s: float = 60,
                  groups: Groups = V0_GROUPS) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            await check_ok(port, keys, expect_keys=expect_keys, groups=groups)
            return
        except (grpc.RpcError, RequestCheckError) as exc:
            if not proc.alive():
                raise RuntimeError(f"process exited:\n{proc.tail()}") from exc
            if time.monotonic() > deadline:
                raise RuntimeError(f"no OK answer in {timeout_s}s: {exc}\n{proc.tail()}") from exc
            await asyncio.sleep(0.2)


@dataclass
class Served:
    port: int
    server: procs.Processes
    dsn: str
    bus: Path
    events: int
    ingest_s: float


@asynccontextmanager
async def served(ctx: Context, label: str, events: Callable[[], Iterable[tuple[int, int]]],
                 *, partitions: int = 1, policy: BenchPolicy = policies.V0
                 ) -> AsyncIterator[Served]:
    """A fresh database filled by the real projector from a fresh bus, and ofp-server on it."""
    name, dsn = await ctx.pg.create(label)
    bus = ctx.path(f"bus-{label}")
    features_path = policy.path(ctx.work)
    try:
        n = await asyncio.to_thread(workload.write_bus, bus, "a001", events(),
                                    partitions=partitions, rich=policy.rich_events)
        ingest_s = await asyncio.to_thread(
            procs.run_projector_once, dsn, bus, ctx.path(f"projector-{label}").with_suffix(".log"),
            features_path=features_path,
        )
        port = procs.free_port()
        server = procs.start_server(dsn, bus, port, ctx.path(f"server-{label}").with_suffix(".log"),
                                    processes=ctx.sizes.server_processes,
                                    features_path=features_path)
        try:
            await wait_ok(port, [1], server, groups=policy.check_groups)
            yield Served(port, server, dsn, bus, n, ingest_s)
        finally:
            server.stop()
    finally:
        await ctx.pg.drop(name)
        shutil.rmtree(bus, ignore_errors=True)


@asynccontextmanager
async def echo(ctx: Context, *, select_1_dsn: str | None = None
               ) -> AsyncIterator[tuple[int, procs.Processes]]:
    port = procs.free_port()
    proc = procs.start_echo_server(port, ctx.path("echo").with_suffix(".log"),
                                   processes=ctx.sizes.server_processes, select_1_dsn=select_1_dsn)
    try:
        await wait_ok(port, [1], proc, expect_keys=False)
        yield port, proc
    finally:
        proc.stop()


def small_state() -> Iterable[tuple[int, int]]:
    return workload.spread_keys(1, SMALL_STATE_KEYS)


async def check_alive(port: int, keys: Sequence[workload.Key], proc: procs.Processes, *,
                      expect_keys: bool = True, groups: Groups = V0_GROUPS) -> None:
    """`check_ok`, naming the process's exit and log when it has died."""
    try:
        await check_ok(port, keys, expect_keys=expect_keys, groups=groups)
    except grpc.RpcError as exc:
        if not proc.alive():
            raise RuntimeError(f"pid {proc.pid} exited {proc.popen.returncode} during the run:"
                               f"\n{proc.tail()}") from exc
        raise


_NOT_ERRORS = ("OK", "CANCELLED")


async def open_loop(ctx: Context, port: int, body: Path, keys: Sequence[workload.Key], *,
                    rate: float, clients: int, proc: procs.Processes, expect_keys: bool = True,
                    phase: str = "spread", groups: Groups = V0_GROUPS,
                    duration_s: float | None = None) -> h2load.OpenLoop:
    """One open-loop run of `body` (the request for `keys` x `groups`, checked first)."""
    await check_alive(port, keys, proc, expect_keys=expect_keys, groups=groups)
    s = ctx.sizes
    marks = proc.log_marks()
    result = await asyncio.to_thread(
        h2load.open_loop, url(port), body, rate=rate, clients=clients,
        duration_s=s.duration_s if duration_s is None else duration_s,
        warmup_s=s.warmup_s, log_path=ctx.path("h2load").with_suffix(".tsv"), phase=phase,
    )
    if result.non_200:
        raise h2load.H2loadFailedError(f"{result.non_200} responses were not HTTP 200")
    # A gRPC error (a deadline under overload) is an HTTP 200 to h2load: ofp-server's
    # own log says how each call ended. CANCELLED is the client's doing (h2load
    # closing its connections at the end of a run), not an answer.
    codes = proc.rpc_codes_since(marks)
    failed = {code: n for code, n in codes.items() if code not in _NOT_ERRORS}
    if failed:
        raise h2load.H2loadFailedError(f"ofp-server answered {sum(failed.values())} of"
                                       f" {codes.total()} calls with an error: {failed}")
    return result


def _clients_for(rate: float, wanted: int) -> int:
    return max(1, min(wanted, int(rate)))


# ---------------------------------------------------------------- 1 and 8b


async def _saturate(port: int, proc: procs.Processes, body: Path, requests: int,
                    s: Sizes) -> tuple[h2load.ClosedLoop, float]:
    """One closed-loop run; its result and the server's CPU per request (µs)."""
    c0 = procs.cpu_seconds(proc.pids)
    marks = proc.log_marks()
    result = await asyncio.to_thread(
        h2load.closed_loop, url(port), body, requests=requests, clients=s.sat_clients,
        streams=s.sat_streams)
    cpu_us = (procs.cpu_seconds(proc.pids) - c0) * 1e6 / requests
    failed = {c: n for c, n in proc.rpc_codes_since(marks).items() if c not in _NOT_ERRORS}
    if failed:
        raise h2load.H2loadFailedError(f"ofp-server answered {sum(failed.values())} calls"
                                       f" with an error: {failed}")
    return result, cpu_us


async def serving(ctx: Context) -> None:
    s = ctx.sizes
    sat = Figure("serving_saturation", "GetFeatures saturation (1 key x 1 group x 3 windows)",
                 "req/s", ">= 0.5 x echo", sizes=f"{SMALL_STATE_KEYS:,} keys stored, "
                 f"{s.sat_requests_features:,} requests/run (echo {s.sat_requests_echo:,}),"
                 f" {s.sat_clients} conns x {s.sat_streams} streams")
    rss = Figure("server_rss", "ofp-server RSS under saturation load (peak, per process)", "MB",
                 "<= 150 MB",
                 sizes=sat.sizes)
    echo_rps: list[float] = []
    floor_rps: list[float] = []
    # Server CPU per request (µs): steadier than req/s on a VM whose speed drifts.
    cpu_us: dict[str, list[float]] = {"echo": [], "floor": [], "ofp": []}
    echo_peak = 0
    async with served(ctx, "serving", small_state) as srv, echo(ctx) as (echo_port, echo_proc), \
            echo(ctx, select_1_dsn=srv.dsn) as (floor_port, floor_proc):
        body = body_file(ctx, [1])
        with procs.RssSamplers(srv.server.pids) as server_rss:
            for _ in range(s.repeats):
                await check_alive(echo_port, [1], echo_proc, expect_keys=False)
                with procs.RssSamplers(echo_proc.pids) as e_rss:
                    e, cpu = await _saturate(echo_port, echo_proc, body, s.sat_requests_echo, s)
                cpu_us["echo"].append(cpu)
                echo_rps.append(e.req_per_s)
                echo_peak = max(echo_peak, e_rss.peak)
                # The floor of any database-backed handler: echo after one SELECT 1.
                await check_alive(floor_port, [1], floor_proc, expect_keys=False)
                f, cpu = await _saturate(floor_port, floor_proc, body, s.sat_requests_echo, s)
                cpu_us["floor"].append(cpu)
                floor_rps.append(f.req_per_s)
                await check_alive(srv.port, [1], srv.server)
                r, cpu = await _saturate(srv.port, srv.server, body, s.sat_requests_features, s)
                cpu_us["ofp"].append(cpu)
                sat.runs.append(r.req_per_s)
                sat.command = r.command.replace(f":{srv.port}/", ":PORT/")
        rss.runs = [server_rss.peak / MB]
        sat.evidence = await _saturation_evidence(ctx, srv, body, echo_port, echo_proc,
                                                  rps=statistics.median(sat.runs),
                                                  echo_rps=statistics.median(echo_rps))
    sat.reference_value = statistics.median(echo_rps)
    sat.reference = f"echo server {fmt(sat.reference_value)} req/s (runs: " \
        f"{', '.join(fmt(x) for x in echo_rps)})"
    ratio = sat.ratio
    sat.met = ratio is not None and ratio >= 0.5
    floor = statistics.median(floor_rps)
    floor_ratio = floor / sat.reference_value
    sat.notes = (f"floor of any database-backed handler, same run: echo answering after one"
                 f" pooled asyncpg `SELECT 1` {fmt(floor)} req/s = {floor_ratio:.2f}"
                 f" x echo (runs: {', '.join(fmt(x) for x in floor_rps)}); OFP ="
                 f" {fmt(sat.value or 0)} req/s = {(sat.value or 0) / floor:.2f} x that floor;"
                 f" server CPU per request (median, µs): echo"
                 f" {statistics.median(cpu_us['echo']):.0f}, echo + `SELECT 1`"
                 f" {statistics.median(cpu_us['floor']):.0f}, ofp-server"
                 f" {statistics.median(cpu_us['ofp']):.0f}")
    sat.measured_at = rss.measured_at = now_utc()
    rss.reference_value = echo_peak / MB
    rss.reference = f"echo server peak {fmt(rss.reference_value)} MB"
    rss.met = rss.runs[0] <= 150
    rss.command = ("psutil RSS of each ofp-server process every 0.1 s during figure 1's runs;"
                   " the largest process")
    ctx.figures += [sat, rss]


async def workers(ctx: Context) -> None:
    """`ofp-server --workers 2` against `--workers 1` on the same database, in the
    same run: saturation (closed loop), and p99 at the p99 figure's rate against
    two echo processes sharing their port the same way."""
    s = ctx.sizes
    sat = Figure("workers", "GetFeatures saturation, ofp-server --workers 2 vs --workers 1",
                 "req/s", ">= 1.3 x one worker (2 cores shared with PostgreSQL and h2load)",
                 sizes=f"{SMALL_STATE_KEYS:,} keys stored, {s.sat_requests_features:,}"
                 f" requests/run, {s.sat_clients} conns x {s.sat_streams} streams")
    lat = Figure("p99_workers", f"GetFeatures p99 at {fmt(s.p99_rate)} req/s open loop,"
                 " 1 key, ofp-server --workers 2", "ms", "<= 2 x echo p99 (2 processes),"
                 " same rate", sizes=f"{SMALL_STATE_KEYS:,} keys stored, {s.duration_s:g} s"
                 " per run")
    one_rps: list[float] = []
    cpu_us: dict[int, list[float]] = {1: [], 2: []}
    echo_p99: list[float] = []
    clients = _clients_for(s.p99_rate, s.p99_clients)
    async with served(ctx, "workers", small_state) as srv:
        body = body_file(ctx, [1])
        ports = {n: procs.free_port() for n in (1, 2)}
        servers = {n: procs.start_server_workers(
            srv.dsn, srv.bus, ports[n], ctx.path(f"server-workers-{n}").with_suffix(".log"),
            workers=n) for n in (1, 2)}
        echo_port = procs.free_port()
        echo2 = procs.start_echo_server(echo_port, ctx.path("echo-2").with_suffix(".log"),
                                        processes=2)
        try:
            for n, proc in servers.items():
                await wait_ok(ports[n], [1], proc)
            await wait_ok(echo_port, [1], echo2, expect_keys=False)
            for _ in range(s.repeats):
                for n, proc in servers.items():
                    await check_alive(ports[n], [1], proc)
                    pids = procs.tree_pids(proc.pids)
                    c0 = procs.cpu_seconds(pids)
                    r = await asyncio.to_thread(
                        h2load.closed_loop, url(ports[n]), body,
                        requests=s.sat_requests_features, clients=s.sat_clients,
                        streams=s.sat_streams)
                    cpu_us[n].append((procs.cpu_seconds(pids) - c0) * 1e6
                                     / s.sat_requests_features)
                    (sat.runs if n == 2 else one_rps).append(r.req_per_s)
                    sat.command = (f"ofp-server --workers {n}; "
                                   + r.command.replace(f":{ports[n]}/", ":PORT/"))
                e = await open_loop(ctx, echo_port, body, [1], rate=s.p99_rate,
                                    clients=clients, proc=echo2, expect_keys=False)
                echo_p99.append(e.p99_ms)
                r2 = await open_loop(ctx, ports[2], body, [1], rate=s.p99_rate,
                                     clients=clients, proc=servers[2])
                lat.runs.append(r2.p99_ms)
                lat.command = "ofp-server --workers 2; " + r2.command.replace(
                    f":{ports[2]}/", ":PORT/")
        finally:
            for proc in (*servers.values(), echo2):
                proc.stop()
    sat.reference_value = statistics.median(one_rps)
    sat.reference = (f"--workers 1: {fmt(sat.reference_value)} req/s (runs:"
                     f" {', '.join(fmt(x) for x in one_rps)})")
    sat.met = sat.ratio is not None and sat.ratio >= 1.3
    sat.notes = (f"server CPU per request (all processes, median, µs): one worker"
                 f" {statistics.median(cpu_us[1]):.0f}, two workers"
                 f" {statistics.median(cpu_us[2]):.0f}; {os.cpu_count()} cores shared by"
                 " the workers, PostgreSQL and h2load")
    lat.reference_value = statistics.median(echo_p99)
    lat.reference = (f"echo server (2 processes) p99 {fmt(lat.reference_value)} ms at the same"
                     " rate and body")
    lat.met = lat.ratio is not None and lat.ratio <= 2
    sat.measured_at = lat.measured_at = now_utc()
    ctx.figures += [sat, lat]


async def replicas(ctx: Context) -> None:
    """Saturation of one ofp-server reading from the primary alone against one reading
    from a streaming replica of it (OFP_DATABASE_READ_URLS, replica_fallback
    unavailable: every read on the replica), both PostgreSQL servers on this machine,
    the same data and request. A pair of its own (bench.pg_replica): the bench's
    PostgreSQL has no replication set up."""
    s = ctx.sizes
    fig = Figure("replicas", "GetFeatures saturation, primary + 1 read replica vs primary"
                 " alone (same machine)", "req/s", "reported (ratio)",
                 sizes=f"{SMALL_STATE_KEYS:,} keys stored, {s.sat_requests_features:,}"
                 f" requests/run, {s.sat_clients} conns x {s.sat_streams} streams")
    alone_rps: list[float] = []
    cpu_us: dict[str, list[float]] = {"alone": [], "replica": []}
    pair = await asyncio.to_thread(pg_replica.make_pair)
    servers: dict[str, procs.Processes] = {}
    try:
        bus = ctx.path("bus-replicas")
        await asyncio.to_thread(workload.write_bus, bus, "a001", small_state())
        await asyncio.to_thread(procs.run_projector_once, pair.primary_dsn, bus,
                                ctx.path("projector-replicas").with_suffix(".log"))
        ports = {"alone": procs.free_port(), "replica": procs.free_port()}
        servers["alone"] = procs.start_server(
            pair.primary_dsn, bus, ports["alone"],
            ctx.path("server-primary").with_suffix(".log"))
        servers["replica"] = procs.start_server(
            pair.primary_dsn, bus, ports["replica"],
            ctx.path("server-replica").with_suffix(".log"),
            database_read_urls=pair.replica_dsn, replica_fallback="unavailable")
        for name, proc in servers.items():
            # The replica answers once it has replayed the projection.
            await wait_ok(ports[name], [1], proc)
        body = body_file(ctx, [1])
        for _ in range(s.repeats):
            for name, proc in servers.items():
                await check_alive(ports[name], [1], proc)
                r, cpu = await _saturate(ports[name], proc, body, s.sat_requests_features, s)
                cpu_us[name].append(cpu)
                (fig.runs if name == "replica" else alone_rps).append(r.req_per_s)
                fig.command = ("ofp-server, OFP_DATABASE_READ_URLS=<replica> vs unset; "
                               + r.command.replace(f":{ports[name]}/", ":PORT/"))
    finally:
        for proc in servers.values():
            proc.stop()
        await asyncio.to_thread(pair.stop_all)
        shutil.rmtree(pair.root, ignore_errors=True)
    fig.reference_value = statistics.median(alone_rps)
    fig.reference = (f"primary alone: {fmt(fig.reference_value)} req/s (runs:"
                     f" {', '.join(fmt(x) for x in alone_rps)})")
    fig.notes = (f"ratio {fig.ratio:.2f}; server CPU per request (median, µs): primary alone"
                 f" {statistics.median(cpu_us['alone']):.0f}, from the replica"
                 f" {statistics.median(cpu_us['replica']):.0f}; {os.cpu_count()} cores shared"
                 " by both PostgreSQL servers, ofp-server and h2load: a replica on its own"
                 " machine adds that machine's capacity, which this cannot show"
                 if fig.ratio is not None else "")
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


@dataclass(frozen=True)
class _Cost:
    """CPU per request (µs) of each party during one closed-loop run."""

    main: float  # the server's event-loop thread
    others: float  # the server's other threads (grpc's completion queue and pollers)
    postgres: float
    generator: float  # h2load
    profile: profile.Profile | None
    profile_error: str | None

    @property
    def server(self) -> float:
        return self.main + self.others

    @property
    def total(self) -> float:
        return self.server + self.postgres + self.generator


async def _cost(port: int, proc: procs.Processes, body: Path, requests: int, s: Sizes,
                sample: Path | None = None, sample_s: float = 0) -> _Cost:
    pid = proc.pids[0]
    sampling = profile.Sampling(pid, sample_s, sample) if sample is not None else None
    with profile.ThreadCpu(pid) as threads, profile.BoxCpu() as box, \
            sampling if sampling is not None else contextlib.nullcontext():
        await asyncio.to_thread(h2load.closed_loop, url(port), body, requests=requests,
                                clients=s.sat_clients, streams=s.sat_streams)
    per = 1e6 / requests
    return _Cost(threads.main_s * per, threads.others_s * per, box.postgres_s * per,
                 box.generator_s * per, None if sampling is None else sampling.profile,
                 None if sampling is None else sampling.error)


async def _saturation_evidence(ctx: Context, srv: Served, body: Path, echo_port: int,
                               echo_proc: procs.Processes, *, rps: float, echo_rps: float
                               ) -> str:
    """What one request costs each party on the box, the py-spy profile of the server
    and PostgreSQL's own time for the statement: the arithmetic behind figure 1."""
    s = ctx.sizes
    sample_s = 1.0 if s.repeats == 1 else 4.0
    await check_alive(echo_port, [1], echo_proc, expect_keys=False)
    echo_cost = await _cost(echo_port, echo_proc, body, s.sat_requests_echo, s)
    await check_alive(srv.port, [1], srv.server)
    n = max(s.sat_requests_features, int(rps * (sample_s + 1.5)))
    ofp = await _cost(srv.port, srv.server, body, n, s,
                      sample=ctx.path("py-spy").with_suffix(".txt"), sample_s=sample_s)
    stmt = await profile.snapshot_statement_cost(srv.dsn, [1])
    cores = os.cpu_count() or 1
    target = 0.5 * echo_rps
    text = (
        f"One GetFeatures request cost the box {ofp.total:.0f} µs of CPU: ofp-server's"
        f" event-loop thread {ofp.main:.0f}, its grpc threads {ofp.others:.0f}, PostgreSQL"
        f" {ofp.postgres:.0f}, h2load {ofp.generator:.0f}. An echo request: {echo_cost.total:.0f}"
        f" µs (server {echo_cost.server:.0f}, h2load {echo_cost.generator:.0f}). So {cores}"
        f" fully busy cores allow at most {fmt(cores * 1e6 / ofp.total)} GetFeatures/s, and one"
        f" server process at most {fmt(1e6 / ofp.main)} (its event loop is one thread); the"
        f" target 0.5 x echo = {fmt(target)} req/s needs <= {1e6 / target:.0f} µs of box CPU"
        f" per request (measured rate {fmt(rps)}). The one-key snapshot statement sent alone,"
        f" one after another ({stmt.runs} times, the server's parameters and generic plan):"
        f" {stmt.wall_us:.0f} µs per round trip, of which PostgreSQL's CPU"
        f" {stmt.postgres_cpu_us:.0f} µs."
    )
    if ofp.profile is not None and ofp.profile.samples:
        text += (f" py-spy of ofp-server over {sample_s:g} s of the same load (self time by the"
                 f" frame's owner): {ofp.profile.summary()}.")
    else:
        text += f" (No py-spy profile: {ofp.profile_error}.)"
    return text + " docs/performance.md walks through these profiles."


# ---------------------------------------------------------------- 2 and 3


async def _latency_vs_echo(ctx: Context, fig: Figure, keys: Sequence[workload.Key], rate: float,
                           clients: int, limit_ms: float, *, bursts_too: bool = False,
                           policy: BenchPolicy = policies.V0, groups: Groups = V0_GROUPS,
                           events: Callable[[], Iterable[tuple[int, int]]] | None = None
                           ) -> None:
    """p99 at `rate` (connections out of phase) vs the echo server's; with
    `bursts_too`, both also under the same connections firing in phase."""
    s = ctx.sizes
    echo_p99: list[float] = []
    achieved: list[float] = []
    burst: dict[str, list[float]] = {"echo": [], "ofp": []}
    cost: dict[str, list[float]] = {"main": [], "others": [], "postgres": []}
    async with served(ctx, fig.key, events or small_state, policy=policy) as srv, \
            echo(ctx) as (echo_port, echo_proc):
        body = body_file(ctx, keys, groups)
        for _ in range(s.repeats):
            e = await open_loop(ctx, echo_port, body, keys, rate=rate, clients=clients,
                                proc=echo_proc, expect_keys=False, groups=groups)
            echo_p99.append(e.p99_ms)
            with profile.ThreadCpu(srv.server.pids[0]) as threads, profile.BoxCpu() as box:
                r = await open_loop(ctx, srv.port, body, keys, rate=rate, clients=clients,
                                    proc=srv.server, groups=groups)
            for name, used in (("main", threads.main_s), ("others", threads.others_s),
                               ("postgres", box.postgres_s)):
                cost[name].append(used * 1e6 / r.sent)
            fig.runs.append(r.p99_ms)
            achieved.append(r.achieved_rps)
            fig.command = r.command.replace(f":{srv.port}/", ":PORT/")
            if bursts_too:
                e = await open_loop(ctx, echo_port, body, keys, rate=rate, clients=clients,
                                    proc=echo_proc, expect_keys=False, phase="together",
                                    groups=groups)
                burst["echo"].append(e.p99_ms)
                r = await open_loop(ctx, srv.port, body, keys, rate=rate, clients=clients,
                                    proc=srv.server, phase="together", groups=groups)
                burst["ofp"].append(r.p99_ms)
        if policy.groups is None:
            flows = [k for k in keys if isinstance(k, int)]
            stmt = await profile.snapshot_statement_cost(srv.dsn, flows,
                                                         runs=100 if len(keys) > 1 else 500)
            what = f"The statement for these {len(keys)} key(s) sent alone"
        else:
            stmt = await profile.read_cost(srv.dsn, keys, groups, runs=100)
            what = (f"The store read for these {len(keys)} key(s) x {len(groups)} group(s)"
                    f" (snapshot + feature values statements in one transaction) made alone")
    main, others, pg = (statistics.median(cost[k]) for k in ("main", "others", "postgres"))
    fig.evidence = (
        f"CPU per request at this rate (median of the runs, µs): ofp-server's event-loop"
        f" thread {main:.0f}, its grpc threads {others:.0f}, PostgreSQL {pg:.0f}; the event"
        f" loop is busy {rate * main / 1e6:.0%} of the time. {what}"
        f" ({stmt.runs} times, one after another):"
        f" {stmt.wall_us:.0f} µs per round trip, of which PostgreSQL's CPU"
        f" {stmt.postgres_cpu_us:.0f} µs."
    )
    fig.reference_value = statistics.median(echo_p99)
    fig.reference = f"echo server p99 {fmt(fig.reference_value)} ms at the same rate and body"
    fig.met = fig.value is not None and fig.value <= limit_ms
    fig.notes = (f"achieved rate {', '.join(fmt(a) for a in achieved)} req/s (after"
                 f" {s.warmup_s:g} s warm-up of {s.duration_s:g} s runs); one request every"
                 f" {1000 / rate:g} ms, the {clients} connections out of phase")
    if bursts_too:
        fig.notes += (f". The same {clients} connections firing in phase (h2load's default:"
                      f" bursts of {clients} requests every {1000 * clients / rate:g} ms): p99"
                      f" {fmt(statistics.median(burst['ofp']))} ms (runs:"
                      f" {', '.join(fmt(x) for x in burst['ofp'])}), echo server p99"
                      f" {fmt(statistics.median(burst['echo']))} ms (runs:"
                      f" {', '.join(fmt(x) for x in burst['echo'])})")
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


async def p99_1k(ctx: Context) -> None:
    s = ctx.sizes
    fig = Figure("p99_1k", f"GetFeatures p99 at {fmt(s.p99_rate)} req/s open loop, 1 key",
                 "ms", "<= 5 ms at 1,000 req/s",
                 sizes=f"{SMALL_STATE_KEYS:,} keys stored, {s.duration_s:g} s per run")
    await _latency_vs_echo(ctx, fig, [1], s.p99_rate, _clients_for(s.p99_rate, s.p99_clients),
                           5.0, bursts_too=True)


async def multikey(ctx: Context) -> None:
    s = ctx.sizes
    fig = Figure("multikey", f"GetFeatures p99, {s.multi_keys} keys per request, at"
                 f" {fmt(s.multi_rate)} req/s", "ms", "<= 20 ms at 100 req/s",
                 sizes=f"{SMALL_STATE_KEYS:,} keys stored, {s.duration_s:g} s per run")
    keys = list(range(1, s.multi_keys + 1))
    await _latency_vs_echo(ctx, fig, keys, s.multi_rate, _clients_for(s.multi_rate, 4), 20.0)


# ---------------------------------------------------------------- 4


async def hotkey(ctx: Context) -> None:
    s = ctx.sizes
    fig = Figure("hotkey", f"hot key ({s.hot_events:,} events in 7 d) p99 vs one-event key",
                 "ms", "ratio <= 2", sizes=f"hot key {s.hot_events:,} events +"
                 f" {SMALL_STATE_KEYS:,} one-event keys, {fmt(s.hot_rate)} req/s,"
                 f" {s.duration_s:g} s per run")

    def events() -> Iterable[tuple[int, int]]:
        yield from small_state()
        yield from workload.hot_key(HOT_KEY, s.hot_events)

    cold: list[float] = []
    clients = _clients_for(s.hot_rate, 4)
    async with served(ctx, "hotkey", events) as srv:
        hot_body, cold_body = body_file(ctx, [HOT_KEY]), body_file(ctx, [1])
        for _ in range(s.repeats):
            c = await open_loop(ctx, srv.port, cold_body, [1], rate=s.hot_rate, clients=clients,
                                proc=srv.server)
            cold.append(c.p99_ms)
            h = await open_loop(ctx, srv.port, hot_body, [HOT_KEY], rate=s.hot_rate,
                                clients=clients, proc=srv.server)
            fig.runs.append(h.p99_ms)
            fig.command = h.command.replace(f":{srv.port}/", ":PORT/")
    fig.reference_value = statistics.median(cold)
    fig.reference = (f"one-event key p99 {fmt(fig.reference_value)} ms (runs:"
                     f" {', '.join(fmt(x) for x in cold)})")
    fig.met = fig.ratio is not None and fig.ratio <= 2
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


# ---------------------------------------------------------------- 5


async def state_size(ctx: Context) -> None:
    s = ctx.sizes
    fig = Figure("state_size", f"p50 of a 1-key request, {s.state_keys:,} keys stored vs"
                 f" {SMALL_STATE_KEYS:,}", "ms", "ratio <= 1.2 (within 20%)",
                 sizes=f"{s.state_keys:,} vs {SMALL_STATE_KEYS:,} one-event keys,"
                 f" {fmt(s.state_rate)} req/s, {s.duration_s:g} s per run")
    small_p50: list[float] = []
    clients = _clients_for(s.state_rate, 4)
    key = [SMALL_STATE_KEYS // 2]
    async with (
        served(ctx, "state_large", lambda: workload.spread_keys(1, s.state_keys),
               partitions=s.ingest_partitions) as large,
        served(ctx, "state_small", small_state) as small,
    ):
        body = body_file(ctx, key)
        for _ in range(s.repeats):
            r = await open_loop(ctx, small.port, body, key, rate=s.state_rate, clients=clients,
                                proc=small.server)
            small_p50.append(r.p50_ms)
            r = await open_loop(ctx, large.port, body, key, rate=s.state_rate, clients=clients,
                                proc=large.server)
            fig.runs.append(r.p50_ms)
            fig.command = r.command.replace(f":{large.port}/", ":PORT/")
    fig.reference_value = statistics.median(small_p50)
    fig.reference = (f"{SMALL_STATE_KEYS:,} keys: p50 {fmt(fig.reference_value)} ms (runs:"
                     f" {', '.join(fmt(x) for x in small_p50)})")
    fig.met = fig.ratio is not None and fig.ratio <= 1.2
    fig.notes = (f"large state populated by the real `ofp-projector --once` from the file-bus"
                 f" ({large.events:,} events, {s.ingest_partitions} partitions) in"
                 f" {large.ingest_s:.1f} s = {fmt(large.events / large.ingest_s)} events/s")
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


# ---------------------------------------------------------------- 6 and 8a


@dataclass
class IngestRun:
    events: int
    wall_s: float
    sustained_eps: float
    progress: list[tuple[float, int]]
    rss: list[tuple[float, int]]
    partitions: list[Path]
    # CPU seconds over the run: the projector processes (reaped children), PostgreSQL
    projector_cpu_s: float = 0.0
    postgres_cpu_s: float = 0.0

    def cpu_evidence(self) -> str:
        """CPU per event of the projectors and of PostgreSQL over the whole run."""
        proj, pg = (x * 1e6 / self.events for x in (self.projector_cpu_s, self.postgres_cpu_s))
        cores = os.cpu_count() or 1
        return (f"CPU per event over the whole run (start-up included): the projector"
                f" processes {proj:.0f} µs, PostgreSQL {pg:.0f} µs (each backend up to its"
                f" last 0.25 s sample); {cores} fully busy cores"
                f" would allow at most {fmt(cores * 1e6 / (proj + pg))} events/s at that cost")

    def rss_growth(self) -> tuple[int, int, float]:
        """(RSS at 10% progress, peak RSS after it, growth of the peak over it)."""
        t10 = next((t for t, n in self.progress if n >= 0.1 * self.events), None)
        after = [r for t, r in self.rss if t10 is not None and t >= t10]
        if not after:
            after = [r for _, r in self.rss] or [0]
        base = after[0]
        peak = max(after)
        return base, peak, (peak - base) / base if base else 0.0


async def _ingest(ctx: Context, label: str, n_events: int, *, replicas: int = 1,
                  policy: BenchPolicy = policies.V0) -> tuple[IngestRun, str, str]:
    """Generate, then drain while sampling progress and RSS (of the first replica).

    One replica drains with `ofp-projector --once`; several run in follow mode,
    sharing the partitions through their leases, and are stopped (SIGTERM,
    graceful) once every event's checkpoint is committed. Returns the run and
    (database name, dsn); the caller drops the database.
    """
    s = ctx.sizes
    name, dsn = await ctx.pg.create(label)
    bus = ctx.path(f"bus-{label}")
    n_keys = max(1, n_events // 20)
    await asyncio.to_thread(workload.write_bus, bus, "b001",
                            workload.ingest_events(n_events, n_keys),
                            partitions=s.ingest_partitions, rich=policy.rich_events)
    features_path = policy.path(ctx.work)
    progress: list[tuple[float, int]] = []
    t0 = time.monotonic()
    once = replicas == 1
    group = [
        procs.start_projector(dsn, bus, ctx.path(f"projector-{label}-{i}").with_suffix(".log"),
                              once=once, features_path=features_path)
        for i in range(replicas)
    ]
    proc = group[0]
    with procs.RssSampler(proc.pid) as rss, profile.BoxCpu() as box, \
            profile.PostgresCpu() as pg_cpu:
        waiter = asyncio.ensure_future(asyncio.to_thread(proc.wait))
        conn: asyncpg.Connection | None = None
        while not waiter.done():
            try:
                if conn is None:
                    conn = await asyncpg.connect(dsn)
                done = await conn.fetchval(
                    "SELECT coalesce(sum(next_offset), 0)::bigint FROM checkpoints"
                    " WHERE to_regclass('checkpoints') IS NOT NULL")
                progress.append((time.monotonic(), int(done)))
                if not once and done >= n_events:
                    break
            except asyncpg.PostgresError:
                pass  # the schema is not migrated yet
            if not all(p.alive() for p in group[1:]):
                break
            await asyncio.to_thread(pg_cpu.sample)
            await asyncio.wait([waiter], timeout=0.25)
        end = time.monotonic()
        pg_cpu.sample()
        if not once:
            for p in group:
                await asyncio.to_thread(p.stop)
        rcs = [await waiter] + [p.wait() for p in group[1:]]
        if conn is not None:
            await conn.close()
    for p, rc in zip(group, rcs, strict=True):
        if rc != 0:
            raise RuntimeError(f"ofp-projector exited {rc}:\n{p.tail()}")
    # A small --once run can finish before the first sample that finds the
    # schema migrated: no samples then, and the run's end is its only point.
    reached = progress[-1][1] if progress else 0
    if reached < n_events and not once:
        raise RuntimeError(f"projector replicas stopped at {reached} of {n_events}")
    progress.append((end, n_events))
    t10, n10 = next(((t, n) for t, n in progress if n >= 0.1 * n_events), (t0, 0))
    t100 = next(t for t, n in progress if n >= n_events)
    sustained = (n_events - n10) / (t100 - t10) if t100 > t10 else n_events / (end - t0)
    files = sorted((bus / workload.TOPIC).glob("partition=*.jsonl"))
    # BoxCpu's "generator" is this process's reaped children: here the projectors.
    return IngestRun(n_events, end - t0, sustained, progress, rss.samples, files,
                     box.generator_s, pg_cpu.seconds), name, dsn


async def _drop_ingest(ctx: Context, run: IngestRun, name: str) -> None:
    """Remove what `_ingest` left: its database and its bus."""
    await ctx.pg.drop(name)
    for f in run.partitions:
        shutil.rmtree(f.parent.parent, ignore_errors=True)


async def _raw_copy(dsn: str, files: list[Path]) -> float:
    """Seconds to COPY the lines of `files` (one connection per file) into a plain table."""
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute("DROP TABLE IF EXISTS bench_raw_events;"
                            " CREATE TABLE bench_raw_events (line text NOT NULL)")
    finally:
        await setup.close()
    conns = [await asyncpg.connect(dsn) for _ in files]
    try:
        t0 = time.perf_counter()
        await asyncio.gather(*(
            c.copy_to_table("bench_raw_events", source=f, columns=["line"], format="text")
            for c, f in zip(conns, files, strict=True)
        ))
        return time.perf_counter() - t0
    finally:
        for c in conns:
            await c.close()


INGEST_BATCH = 2000  # the projector's default batch size


async def _ingest_floor(dsn: str, files: list[Path], batch: int = INGEST_BATCH) -> float:
    """Seconds for the floor of any exactly-once ingest of these lines: parse each
    event (orjson, as the projector does), COPY each batch through a staging
    table into a table with a unique event id (a redelivery is skipped), one
    committed transaction per batch, one connection per partition file as the
    projectors have. What OFP does beyond it is classification, tiles and the
    checkpoint (docs/performance.md, "Ingest against its floor")."""
    setup = await asyncpg.connect(dsn)
    try:
        await setup.execute(
            "DROP TABLE IF EXISTS bench_floor_events;"
            " CREATE TABLE bench_floor_events (event_id text PRIMARY KEY, ts_utc text NOT NULL,"
            " flow_id bigint NOT NULL, amount numeric NOT NULL)")
    finally:
        await setup.close()

    async def one(path: Path) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            await conn.execute(
                "CREATE TEMP TABLE floor_staging (LIKE bench_floor_events)"
                " ON COMMIT DELETE ROWS")
            with path.open("rb") as f:
                while True:
                    lines = [line for _, line in zip(range(batch), f, strict=False)]
                    if not lines:
                        break
                    rows = []
                    for line in lines:
                        e = orjson.loads(line)
                        p = e["payload"]
                        rows.append((e["event_id"], e["ts_utc"], p["flow_id"],
                                     Decimal(p["amount"])))
                    async with conn.transaction():
                        await conn.copy_records_to_table("floor_staging", records=rows)
                        await conn.execute(
                            "INSERT INTO bench_floor_events SELECT * FROM floor_staging"
                            " ON CONFLICT (event_id) DO NOTHING")
        finally:
            await conn.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(one(f) for f in files))
    return time.perf_counter() - t0


def _beyond_floor(run: IngestRun, floor_cpu: list[tuple[float, float]]) -> str:
    """What each step beyond the ingest floor costs per event: classification
    (timed in process on the run's own lines), the rest of the projector's
    Python (the apply: staging rows, tiles, checkpoint), and PostgreSQL's
    extra work (dedupe, event and tile rows, checkpoint) over the floor's."""
    lines: list[bytes] = []
    with run.partitions[0].open("rb") as f:
        for _, line in zip(range(20_000), f, strict=False):
            lines.append(line.rstrip(b"\n"))
    policy = load_policy(procs.FEATURES_PATH)
    c0 = time.process_time()
    for line in lines:
        orjson.loads(line)
    parse_us = (time.process_time() - c0) * 1e6 / len(lines)
    c0 = time.process_time()
    for line in lines:
        classify(line, policy, None)
    classify_us = (time.process_time() - c0) * 1e6 / len(lines)
    proj_us = run.projector_cpu_s * 1e6 / run.events
    pg_us = run.postgres_cpu_s * 1e6 / run.events
    client_floor = statistics.median(c for c, _ in floor_cpu)
    pg_floor = statistics.median(p for _, p in floor_cpu)
    return (f"Per event against the ingest floor (µs of CPU): the floor's client (parse +"
            f" COPY) {client_floor:.1f}, its PostgreSQL {pg_floor:.1f}; OFP's projector"
            f" {proj_us:.1f}, of which classification {classify_us:.1f} (a bare parse of the"
            f" same line {parse_us:.1f}) and the apply and read loop"
            f" {max(0.0, proj_us - classify_us):.1f}; OFP's PostgreSQL {pg_us:.1f}, i.e."
            f" {max(0.0, pg_us - pg_floor):.1f} beyond the floor's for the event and tile rows,"
            f" the dedupe claim and the checkpoint.")


async def ingest(ctx: Context) -> None:
    s = ctx.sizes
    fig = Figure("ingest", "projector ingest, file-bus -> Postgres (default policy, dedupe +"
                 " checkpoints)", "events/s", ">= 0.6 x the ingest floor over >= 2,000,000 events",
                 sizes=f"{s.ingest_events:,} events, {max(1, s.ingest_events // 20):,} keys,"
                 f" {s.ingest_partitions} partitions, batch 2000 (default)",
                 command="ofp-projector --once" if s.ingest_replicas == 1 else
                 f"{s.ingest_replicas} x ofp-projector (follow mode, leases share the"
                 " partitions), stopped once every checkpoint is at the end")
    copy_eps: list[float] = []
    floor_eps: list[float] = []
    walls: list[str] = []
    for i in range(s.ingest_repeats):
        run, name, dsn = await _ingest(ctx, f"ingest{i}", s.ingest_events,
                                       replicas=s.ingest_replicas)
        try:
            fig.runs.append(run.sustained_eps)
            walls.append(f"{run.wall_s:.1f} s ({fmt(run.events / run.wall_s)} events/s)")
            if i == 0:
                fig.evidence = run.cpu_evidence() + "."
                floor_cpu: list[tuple[float, float]] = []
                for _ in range(s.copy_repeats):
                    c0 = time.process_time()
                    with profile.BoxCpu() as box:
                        floor_eps.append(run.events / await _ingest_floor(dsn, run.partitions))
                    floor_cpu.append(((time.process_time() - c0) * 1e6 / run.events,
                                      box.postgres_s * 1e6 / run.events))
                    copy_eps.append(run.events / await _raw_copy(dsn, run.partitions))
                fig.evidence += " " + _beyond_floor(run, floor_cpu)
        finally:
            await _drop_ingest(ctx, run, name)
    single = ""
    if s.ingest_replicas > 1:
        # The same stream through one replica, for scale: what one process does.
        run, name, _ = await _ingest(ctx, "ingest-single", s.ingest_events)
        await _drop_ingest(ctx, run, name)
        single = (f"; one replica (`ofp-projector --once`, both partitions in one process):"
                  f" {fmt(run.sustained_eps)} events/s sustained")
    fig.reference_value = statistics.median(floor_eps)
    fig.reference = (f"ingest floor (parse + COPY via staging into a unique event id, one"
                     f" transaction per {INGEST_BATCH} events) {fmt(fig.reference_value)}"
                     f" events/s (runs: {', '.join(fmt(x) for x in floor_eps)})")
    fig.met = (fig.ratio is not None and fig.ratio >= 0.6
               and s.ingest_events >= 2_000_000)
    fig.notes = (f"raw COPY of the same lines (no parse, no key): "
                 f"{fmt(statistics.median(copy_eps))} lines/s; "
                 "whole run incl. start-up and migration: " + "; ".join(walls) + single
                 + (". Below the 2,000,000 events the target names, so not met by definition"
                    if s.ingest_events < 2_000_000 else ""))
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


async def memory(ctx: Context) -> None:
    s = ctx.sizes
    fig = Figure("projector_rss", "projector RSS growth, 10% -> 100% of a long ingest", "%",
                 "< 10% over 10,000,000 events",
                 sizes=f"{s.memory_events:,} events, {max(1, s.memory_events // 20):,} keys,"
                 f" {s.ingest_partitions} partitions", command="ofp-projector --once")
    run, name, _ = await _ingest(ctx, "memory", s.memory_events)
    await _drop_ingest(ctx, run, name)
    base, peak, growth = run.rss_growth()
    fig.runs = [growth * 100]
    fig.reference_value = None
    fig.reference = f"RSS at 10% {fmt(base / MB)} MB, peak after it {fmt(peak / MB)} MB"
    fig.met = growth < 0.10 and s.memory_events >= 10_000_000
    final = run.rss[-1][1] if run.rss else 0
    fig.notes = (f"{run.wall_s:.1f} s, {fmt(run.sustained_eps)} events/s sustained; RSS at exit"
                 f" {fmt(final / MB)} MB; {len(run.rss)} samples"
                 + ("; fewer events than the 10,000,000 the target names, so not met by"
                    " definition" if s.memory_events < 10_000_000 else ""))
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


# ---------------------------------------------------------------- 7


async def freshness(ctx: Context) -> None:
    s = ctx.sizes
    fig = Figure("freshness", "end-to-end freshness: line appended -> visible in GetFeatures",
                 "ms (p99)", "<= 250 ms", sizes=f"{s.freshness_repeats} appends, 1 partition,"
                 " follow mode, OFP_POLL_INTERVAL_MS=50 (default)",
                 command="ofp-projector (follow) + ofp-server; Python grpc.aio poll loop")
    name, dsn = await ctx.pg.create("freshness")
    bus = ctx.path("bus-freshness")
    workload.write_bus(bus, "f001", [(1, workload.BASE_US)])
    part = bus / workload.TOPIC / "partition=0.jsonl"
    port = procs.free_port()
    await asyncio.to_thread(procs.run_migrate, dsn, bus,
                            ctx.path("migrate-fresh").with_suffix(".log"))
    projector = procs.start_projector(dsn, bus, ctx.path("projector-fresh").with_suffix(".log"),
                                      once=False)
    server = procs.start_server(dsn, bus, port, ctx.path("server-fresh").with_suffix(".log"))
    samples: list[float] = []
    rng = random.Random(7)
    try:
        await wait_ok(port, [1], server)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
            for i in range(s.freshness_repeats):
                key, ts = 50_000_000 + i, workload.BASE_US + 1 + i
                request = workload.request_proto(workload.request_doc([key], ts))
                _, line = next(workload.keyed_lines("f001", [(key, ts)], first_seq=i + 1))
                t0 = time.perf_counter()
                with part.open("a", encoding="ascii") as f:
                    f.write(line)
                while True:
                    resp = await stub.GetFeatures(request, timeout=10)
                    if resp.status != "OK":
                        raise RequestCheckError(f"status {resp.status!r}")
                    if f"flow_id:{key}" in resp.snapshot.features.fields:
                        break
                    if time.perf_counter() - t0 > 30:
                        raise RuntimeError(f"key {key} not visible after 30 s:\n"
                                           f"{projector.tail()}")
                samples.append((time.perf_counter() - t0) * 1000)
                await asyncio.sleep(rng.uniform(0, 0.06))
    finally:
        server.stop()
        projector.stop()
        await ctx.pg.drop(name)
        shutil.rmtree(bus, ignore_errors=True)
    ordered = sorted(samples)
    fig.runs = [h2load.percentile(ordered, 99)]
    fig.reference_value = 50.0
    fig.reference = "projector poll interval 50 ms"
    fig.met = fig.runs[0] <= 250
    fig.notes = (f"p50 {fmt(h2load.percentile(ordered, 50))} ms, max {fmt(ordered[-1])} ms over"
                 f" {len(ordered)} appends (one run: the p99 is over all appends)")
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


# ---------------------------------------------------------------- 9 to 11: the rich v1 policy


def _rich_policy_title() -> str:
    n, kinds, key_types = policies.count_features(policies.RICH_GROUPS)
    return f"rich v1 policy: {n} features of {kinds} kinds, {key_types} key types"


async def _feature_rows(dsn: str) -> dict[str, int]:
    """Rows the v1 store holds, and the records quarantined, after an ingest."""
    conn = await asyncpg.connect(dsn)
    try:
        return {t: int(await conn.fetchval(f"SELECT count(*) FROM {t}"))
                for t in ("fv_events", "fv_tiles", "fv_distinct", "quarantine")}
    finally:
        await conn.close()


async def ingest_rich(ctx: Context) -> None:
    s = ctx.sizes
    n = s.rich_ingest_events
    fig = Figure("ingest_rich", f"projector ingest, file-bus -> Postgres ({_rich_policy_title()})",
                 "events/s", "none set: the ratio to raw COPY is the record",
                 sizes=f"{n:,} events, {max(1, n // 20):,} flows, {workload.MERCHANTS:,}"
                 f" merchants, {s.ingest_partitions} partitions, batch 2000 (default)",
                 command="ofp-projector --once" if s.ingest_replicas == 1 else
                 f"{s.ingest_replicas} x ofp-projector (follow mode, leases share the"
                 " partitions), stopped once every checkpoint is at the end")
    copy_eps: list[float] = []
    walls: list[str] = []
    rows: dict[str, int] = {}
    for i in range(s.ingest_repeats):
        run, name, dsn = await _ingest(ctx, f"ingest_rich{i}", n, replicas=s.ingest_replicas,
                                       policy=policies.RICH)
        try:
            fig.runs.append(run.sustained_eps)
            walls.append(f"{run.wall_s:.1f} s ({fmt(run.events / run.wall_s)} events/s)")
            if i == 0:
                fig.evidence = run.cpu_evidence() + "."
                rows = await _feature_rows(dsn)
                for _ in range(s.copy_repeats):
                    copy_eps.append(run.events / await _raw_copy(dsn, run.partitions))
        finally:
            await _drop_ingest(ctx, run, name)
    if rows.get("quarantine"):
        raise RuntimeError(f"{rows['quarantine']} records quarantined: the bench events do not"
                           " fit the rich policy")
    fig.reference_value = statistics.median(copy_eps)
    fig.reference = (f"raw COPY of the same lines {fmt(fig.reference_value)} lines/s (runs:"
                     f" {', '.join(fmt(x) for x in copy_eps)})")
    fig.met = None
    per = {k: v / n for k, v in rows.items()}
    fig.notes = ("whole run incl. start-up and migration: " + "; ".join(walls)
                 + f". Store rows per event after the run: fv_events {per['fv_events']:.1f},"
                 f" fv_tiles {per['fv_tiles']:.1f}, fv_distinct {per['fv_distinct']:.1f}"
                 " (each event feeds every group: one row per feature it contributes to,"
                 " plus the group's presence row, and a minute and an hour tile each);"
                 " none quarantined. The v0 figure (ingest, default policy) writes one event row"
                 " and one tile row per event")
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


def _kind_notes(cold: dict[str, float], hot: dict[str, float]) -> str:
    return ", ".join(f"{k} {fmt(hot[k] / cold[k])} ({fmt(hot[k])} / {fmt(cold[k])} ms)"
                     for k in policies.KINDS if cold.get(k))


async def hotkey_rich(ctx: Context) -> None:
    s = ctx.sizes
    rate = s.rich_hot_rate
    n_flow = len(policies.FLOW_FEATURES)
    sizes = (f"hot flow {s.hot_events:,} events in 7 d ({workload.FLOW_MERCHANTS} distinct"
             f" merchants) + {SMALL_STATE_KEYS:,} one-event flows, {fmt(rate)} req/s")
    fig = Figure("hotkey_rich", f"hot key ({s.hot_events:,} events in 7 d) p99 vs one-event key,"
                 f" group flow_rich ({n_flow} features, all {len(policies.KINDS)} kinds)", "ms",
                 "ratio <= 2", sizes=f"{sizes}, {s.duration_s:g} s per run")
    kinds = Figure("hotkey_kinds", "hot key p99 vs one-event key per kind (one 7-day feature"
                   " per group): the worst kind", "ms", "ratio <= 2 for every kind",
                   sizes=f"{sizes}, one {s.kind_duration_s} s run per kind and key")

    def events() -> Iterable[tuple[int, int]]:
        yield from small_state()
        yield from workload.hot_key(HOT_KEY, s.hot_events)

    cold: list[float] = []
    clients = _clients_for(rate, 4)
    kind_cold: dict[str, float] = {}
    kind_hot: dict[str, float] = {}
    read_us: dict[str, tuple[float, float]] = {}
    async with served(ctx, "hotkey_rich", events, policy=policies.RICH_AND_KINDS) as srv:
        # The hot key really has its events in the window: the count kind says so.
        await _check_hot_count(srv.port, s.hot_events)
        group: Groups = (policies.FLOW_RICH,)
        hot_body, cold_body = body_file(ctx, [HOT_KEY], group), body_file(ctx, [1], group)
        cpu: dict[str, list[tuple[float, float]]] = {"hot": [], "cold": []}
        for _ in range(s.repeats):
            for which, key, body in (("cold", 1, cold_body), ("hot", HOT_KEY, hot_body)):
                with profile.ThreadCpu(srv.server.pids[0]) as threads, \
                        profile.BoxCpu() as box:
                    r = await open_loop(ctx, srv.port, body, [key], rate=rate,
                                        clients=clients, proc=srv.server, groups=group)
                cpu[which].append((threads.main_s * 1e6 / r.sent,
                                   box.postgres_s * 1e6 / r.sent))
                (fig.runs if which == "hot" else cold).append(r.p99_ms)
                fig.command = r.command.replace(f":{srv.port}/", ":PORT/")
        for kind in policies.KINDS:
            g: Groups = (policies.kind_ref(kind),)
            c = await open_loop(ctx, srv.port, body_file(ctx, [1], g), [1], rate=rate,
                                clients=clients, proc=srv.server, groups=g,
                                duration_s=s.kind_duration_s)
            h = await open_loop(ctx, srv.port, body_file(ctx, [HOT_KEY], g), [HOT_KEY],
                                rate=rate, clients=clients, proc=srv.server, groups=g,
                                duration_s=s.kind_duration_s)
            kind_cold[kind], kind_hot[kind] = c.p99_ms, h.p99_ms
            kinds.command = h.command.replace(f":{srv.port}/", ":PORT/")
        runs = 20 if s.repeats == 1 else 100
        for label, groups in (("flow_rich", group),
                              *((k, (policies.kind_ref(k),)) for k in policies.KINDS)):
            hot_read = await profile.read_cost(srv.dsn, [HOT_KEY], groups, runs=runs)
            cold_read = await profile.read_cost(srv.dsn, [1], groups, runs=runs)
            read_us[label] = (hot_read.wall_us, cold_read.wall_us)
    fig.reference_value = statistics.median(cold)
    fig.reference = (f"one-event key p99 {fmt(fig.reference_value)} ms (runs:"
                     f" {', '.join(fmt(x) for x in cold)})")
    fig.met = fig.ratio is not None and fig.ratio <= 2
    fig.measured_at = now_utc()
    worst = max(policies.KINDS, key=lambda k: kind_hot[k] / kind_cold[k])
    kinds.runs = [kind_hot[worst]]
    kinds.reference_value = kind_cold[worst]
    kinds.reference = f"kind {worst}: one-event key p99 {fmt(kind_cold[worst])} ms"
    kinds.met = all(kind_hot[k] <= 2 * kind_cold[k] for k in policies.KINDS)
    kinds.notes = ("ratio per kind (hot p99 / one-event p99): " + _kind_notes(kind_cold, kind_hot)
                   + f". One run each, alternating one-event and hot key, {s.warmup_s:g} s"
                   " warm-up; single runs on a shared box: read the read-alone costs below"
                   " before a single ratio")
    # The read made alone is the steadier per-kind figure on a shared box: its
    # ratio is given for every kind, next to the single-run p99 ratios above.
    read_ratio = {k: read_us[k][0] / read_us[k][1] for k in read_us}
    over = [k for k in policies.KINDS if read_ratio[k] > 2]
    kinds.evidence = ("the store read of one request made alone, one after another ("
                      f"{runs} times, generic plans), hot key / one-event key, µs (ratio): "
                      + ", ".join(f"{k} {read_us[k][0]:.0f} / {read_us[k][1]:.0f}"
                                  f" ({read_ratio[k]:.2f})" for k in policies.KINDS)
                      + "; kinds over 2: " + (", ".join(over) if over else "none")
                      + ". distinct_count (merchant_id) reads each tile's distinct values (the"
                      f" hot flow has {workload.FLOW_MERCHANTS} merchants);"
                      " approx_distinct_count (event_seq) unites one sketch per day, hour and"
                      f" minute tile (the hot flow has {s.hot_events:,} distinct values);"
                      " last_n reads at most n event rows")
    hot_r, cold_r = read_us["flow_rich"]
    (hot_loop, hot_pg), (cold_loop, cold_pg) = (
        (statistics.median(x[0] for x in cpu[k]), statistics.median(x[1] for x in cpu[k]))
        for k in ("hot", "cold"))
    fig.evidence = (f"CPU per request at this rate (median of the runs, µs), hot key / one-event"
                    f" key: ofp-server's event-loop thread {hot_loop:.0f} / {cold_loop:.0f},"
                    f" PostgreSQL {hot_pg:.0f} / {cold_pg:.0f}. The store read of one request"
                    f" made alone ({runs} times, one after another, generic plans): hot key"
                    f" {hot_r:.0f} µs, one-event key {cold_r:.0f} µs ({hot_r / cold_r:.2f} x)")
    kinds.measured_at = now_utc()
    ctx.figures += [fig, kinds]


async def _check_hot_count(port: int, hot_events: int) -> None:
    """The hot key's kind_count answer is `hot_events`: every event is in its window."""
    groups = (policies.kind_ref("count"),)
    request = workload.request_proto(workload.request_doc([HOT_KEY], groups=groups))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        resp = await pb_grpc.FeatureServiceStub(channel).GetFeatures(  # type: ignore[no-untyped-call]
            request, timeout=30
        )
    label = workload.key_label(HOT_KEY)
    try:
        got = resp.snapshot.features.fields[label].struct_value.fields["kind_count"] \
            .struct_value.fields["count_7d"].number_value
    except KeyError as exc:
        raise RequestCheckError(f"no kind_count/count_7d for {label}: {resp}") from exc
    if int(got) != hot_events:
        raise RequestCheckError(f"hot key count_7d = {got}, expected {hot_events}")


def rich_keys(n: int) -> list[workload.Key]:
    """`n` keys of the small rich state over its three key types (flows, cards, merchants)."""
    cards: dict[int, None] = {}
    merchants: dict[int, None] = {}
    for seq, (flow, _) in enumerate(small_state()):
        card, merchant = workload.rich_ids(flow, seq)
        cards[card] = merchants[merchant] = None
    n_cards = n_merchants = n // 3
    n_flows = n - n_cards - n_merchants
    return [*range(1, n_flows + 1),
            *(("card_id", c) for c in list(cards)[:n_cards]),
            *(("merchant_id", m) for m in list(merchants)[:n_merchants])]


async def multikey_rich(ctx: Context) -> None:
    s = ctx.sizes
    rate = s.rich_multi_rate
    fig = Figure("multikey_rich", f"GetFeatures p99, {s.multi_keys} keys over 3 key types x"
                 f" the rich policy's 3 groups, at {fmt(rate)} req/s", "ms",
                 "none set (v0 50 keys: <= 20 ms at 100 req/s)",
                 sizes=f"{SMALL_STATE_KEYS:,} one-event flows stored ({_rich_policy_title()}),"
                 f" {s.duration_s:g} s per run")
    keys = rich_keys(s.multi_keys)
    await _latency_vs_echo(ctx, fig, keys, rate, _clients_for(rate, 4), 20.0,
                           policy=policies.RICH, groups=policies.RICH_REFS)
    fig.met = None


# ---------------------------------------------------------------- snapshot log


async def snapshot_log(ctx: Context) -> None:
    """p99 at the p99 rate with the snapshot log recording every answer, against the
    same server with recording off, on one database, the runs interleaved."""
    s = ctx.sizes
    fig = Figure("snapshot_log", f"GetFeatures p99 at {fmt(s.p99_rate)} req/s, 1 key, every"
                 " snapshot recorded (OFP_SNAPSHOT_LOG=postgres)", "ms",
                 "within 10% of recording off (ratio <= 1.10)",
                 sizes=f"{SMALL_STATE_KEYS:,} keys stored, {s.duration_s:g} s per run")
    clients = _clients_for(s.p99_rate, s.p99_clients)
    off: list[float] = []
    sent = 0
    async with served(ctx, fig.key, small_state) as srv:
        port = procs.free_port()
        quiet = procs.start_server(srv.dsn, srv.bus, port,
                                   ctx.path("server-snapshot-log-off").with_suffix(".log"),
                                   snapshot_log="off")
        try:
            await wait_ok(port, [1], quiet)
            body = body_file(ctx, [1])
            async with asyncpg.create_pool(srv.dsn, min_size=1, max_size=1) as pool:
                before = await pool.fetchval("SELECT count(*) FROM snapshot_log")
                for _ in range(s.repeats):
                    r = await open_loop(ctx, port, body, [1], rate=s.p99_rate,
                                        clients=clients, proc=quiet)
                    off.append(r.p99_ms)
                    r = await open_loop(ctx, srv.port, body, [1], rate=s.p99_rate,
                                        clients=clients, proc=srv.server)
                    fig.runs.append(r.p99_ms)
                    sent += r.sent
                    fig.command = r.command.replace(f":{srv.port}/", ":PORT/")
                await asyncio.sleep(1.0)  # the last batch's flush
                logged = await pool.fetchval("SELECT count(*) FROM snapshot_log") - before
        finally:
            quiet.stop()
    fig.reference_value = statistics.median(off)
    fig.reference = (f"recording off, same database, rate and body: p99"
                     f" {fmt(fig.reference_value)} ms (runs: {', '.join(fmt(x) for x in off)})")
    fig.met = fig.ratio is not None and fig.ratio <= 1.10
    # The recorded server's own checks (wait_ok, check_ok) are recorded too.
    fig.notes = (f"snapshot_log rows written during the recorded runs: {logged:,} for"
                 f" {sent:,} requests sent (warm-up included; a shortfall is the drop"
                 " policy shedding)")
    fig.measured_at = now_utc()
    ctx.figures.append(fig)


SCENARIOS: dict[str, Callable[[Context], Awaitable[None]]] = {
    "serving": serving,
    "p99": p99_1k,
    "multikey": multikey,
    "hotkey": hotkey,
    "state_size": state_size,
    "ingest": ingest,
    "freshness": freshness,
    "memory": memory,
    "ingest_rich": ingest_rich,
    "hotkey_rich": hotkey_rich,
    "multikey_rich": multikey_rich,
    "workers": workers,
    "replicas": replicas,
    "snapshot_log": snapshot_log,
    "export": export_scenario,
    "state_realistic": state_realistic,
    "retention_churn": retention_churn,
}
# Figure keys each scenario produces, in table order.
FIGURES = {
    "serving": ["serving_saturation", "server_rss"],
    "p99": ["p99_1k"],
    "multikey": ["multikey"],
    "hotkey": ["hotkey"],
    "state_size": ["state_size"],
    "ingest": ["ingest"],
    "freshness": ["freshness"],
    "memory": ["projector_rss"],
    "ingest_rich": ["ingest_rich"],
    "hotkey_rich": ["hotkey_rich", "hotkey_kinds"],
    "multikey_rich": ["multikey_rich"],
    "workers": ["workers", "p99_workers"],
    "replicas": ["replicas"],
    "snapshot_log": ["snapshot_log"],
    "export": ["export"],
    "state_realistic": ["state_realistic"],
    "retention_churn": ["retention_churn"],
}
ORDER = ["serving_saturation", "p99_1k", "multikey", "hotkey", "state_size", "ingest",
         "freshness", "projector_rss", "server_rss", "ingest_rich", "hotkey_rich",
         "hotkey_kinds", "multikey_rich", "workers", "p99_workers", "replicas", "snapshot_log",
         "export", "state_realistic", "retention_churn"]
