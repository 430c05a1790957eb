"""`make soak` / `python -m bench.soak`: the server at a steady open-loop rate with ingest
running, for a long time (issue 18).

One ofp-server and one ofp-projector in follow mode over a fresh database (the
bench PostgreSQL: OFP_BENCH_DATABASE_URL, or an embedded one). Every second the
bus grows by INGEST_PER_S events while a gRPC client offers RATE GetFeatures/s
(open loop: one call every 1/RATE s whatever the answers do, 1 to 20 keys each).
Reported per interval: calls, errors by status code, p50/p99/max latency, the
server's and the projector's RSS, the ingest checkpoint; at the end the totals,
the RSS growth from the first interval after warm-up to the last, and a verdict
against the targets (0 errors, RSS growth < 10 %).

    SOAK_SECONDS (default 600)   how long the load runs
    SOAK_RATE (default 500)      GetFeatures per second offered
    SOAK_INGEST (default 200)    events appended to the bus per second
    SOAK_REPORT (default 60)     seconds per reported interval (10 when SOAK_SECONDS <= 120)
    SOAK_OUT                     also write the report (Markdown) to this file

Exit code 0 when the targets are met, 1 otherwise.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import asyncpg
import grpc
import psutil  # type: ignore[import-untyped]

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc

from .pg import BenchPostgres
from .procs import free_port, run_migrate, start_projector, start_server
from .workload import ingest_events, request_doc, request_proto, spread_keys, write_bus

N_KEYS = 1_000
WARMUP_S = 10.0
RSS_GROWTH_TARGET = 0.10
CLIENT_TIMEOUT_S = 5.0


@dataclass
class Interval:
    start: float
    codes: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)
    rss_server: int = 0
    rss_projector: int = 0
    checkpoint: int = 0

    def quantile(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        xs = sorted(self.latencies)
        return xs[min(len(xs) - 1, int(q * len(xs)))]


def _env_float(name: str, default: float) -> float:
    return float(os.environ.get(name, default))


async def _offer(stub: pb_grpc.FeatureServiceStub, requests: list[pb.GetFeaturesRequest],
                 rate: float, until: float, intervals: list[Interval], report_s: float,
                 t0: float) -> None:
    pending: set[asyncio.Task[None]] = set()

    async def one(req: pb.GetFeaturesRequest) -> None:
        start = time.monotonic()
        try:
            await stub.GetFeatures(req, timeout=CLIENT_TIMEOUT_S)
            code = "OK"
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
        end = time.monotonic()
        iv = intervals[min(len(intervals) - 1, int((end - t0) // report_s))]
        iv.codes[code] += 1
        if code == "OK":
            iv.latencies.append(end - start)

    i = 0
    due = time.monotonic()
    while due < until:
        task = asyncio.create_task(one(requests[i % len(requests)]))
        pending.add(task)
        task.add_done_callback(pending.discard)
        i += 1
        due += 1.0 / rate
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    if pending:
        await asyncio.wait(pending, timeout=CLIENT_TIMEOUT_S + 1)


async def _ingest(bus: Path, per_s: float, until: float, first_seq: int) -> None:
    seq = first_seq
    while time.monotonic() < until:
        n = int(per_s)
        await asyncio.to_thread(write_bus, bus, "50a4", ingest_events(n, N_KEYS),
                                partitions=2, first_seq=seq)
        seq += n
        await asyncio.sleep(1.0)


async def _sample(intervals: list[Interval], report_s: float, t0: float, until: float,
                  server_pid: int, projector_pid: int, pool: asyncpg.Pool) -> None:
    server, projector = psutil.Process(server_pid), psutil.Process(projector_pid)
    while time.monotonic() < until:
        iv = intervals[min(len(intervals) - 1, int((time.monotonic() - t0) // report_s))]
        try:
            iv.rss_server = max(iv.rss_server, server.memory_info().rss)
            iv.rss_projector = max(iv.rss_projector, projector.memory_info().rss)
            iv.checkpoint = int(await pool.fetchval(
                "SELECT coalesce(sum(next_offset), 0) FROM checkpoints") or 0)
        except (psutil.Error, OSError, asyncpg.PostgresError):
            pass
        await asyncio.sleep(1.0)


def _report(intervals: list[Interval], seconds: float, rate: float, ingest: float,
            pg: str) -> tuple[str, bool]:
    lines = [
        f"Soak: {seconds:.0f} s at {rate:.0f} GetFeatures/s offered (1-20 keys of {N_KEYS}),"
        f" {ingest:.0f} events/s appended to the bus; PostgreSQL: {pg}.",
        "",
        "| from s | calls | req/s | errors | p50 ms | p99 ms | max ms | server RSS MB"
        " | projector RSS MB | applied offsets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    total: Counter[str] = Counter()
    for iv in intervals:
        calls = sum(iv.codes.values())
        failed = {c: n for c, n in iv.codes.items() if c != "OK"}
        total.update(iv.codes)
        span = intervals[1].start - intervals[0].start if len(intervals) > 1 else seconds
        lines.append(
            f"| {iv.start:.0f} | {calls} | {calls / span:.0f} | {failed or 0} |"
            f" {1000 * iv.quantile(0.5):.1f} | {1000 * iv.quantile(0.99):.1f} |"
            f" {1000 * max(iv.latencies, default=float('nan')):.1f} |"
            f" {iv.rss_server / 1e6:.1f} | {iv.rss_projector / 1e6:.1f} | {iv.checkpoint} |")
    errors = sum(n for c, n in total.items() if c != "OK")
    # Growth from the first full interval after warm-up to the last one.
    settled = [iv for iv in intervals if iv.start >= WARMUP_S and iv.rss_server] or intervals
    first, last = settled[0], settled[-1]
    growth_s = (last.rss_server - first.rss_server) / max(1, first.rss_server)
    growth_p = (last.rss_projector - first.rss_projector) / max(1, first.rss_projector)
    ok = errors == 0 and growth_s < RSS_GROWTH_TARGET and growth_p < RSS_GROWTH_TARGET
    all_lat = sorted(x for iv in intervals for x in iv.latencies)
    p99 = all_lat[int(0.99 * (len(all_lat) - 1))] if all_lat else float("nan")
    lines += [
        "",
        f"Totals: {sum(total.values())} calls, {errors} errors {dict(total)};"
        f" p99 {1000 * p99:.1f} ms over the run.",
        f"RSS growth after warm-up: server {100 * growth_s:+.1f} %,"
        f" projector {100 * growth_p:+.1f} % (target < {100 * RSS_GROWTH_TARGET:.0f} %).",
        f"Verdict: {'targets met' if ok else 'targets NOT met'}"
        " (0 errors, RSS growth < 10 %).",
    ]
    return "\n".join(lines), ok


async def soak() -> tuple[str, bool]:
    seconds = _env_float("SOAK_SECONDS", 600)
    rate = _env_float("SOAK_RATE", 500)
    ingest = _env_float("SOAK_INGEST", 200)
    report_s = _env_float("SOAK_REPORT", 10 if seconds <= 120 else 60)
    work = Path(tempfile.mkdtemp(prefix="ofp-soak-"))
    bus = work / "bus"
    pg = BenchPostgres.start(work)
    name, dsn = await pg.create("soak")
    described = await pg.describe()
    # The keys the requests ask for exist before the load starts; ingest adds to them.
    first = write_bus(bus, "50a0", spread_keys(1, N_KEYS), partitions=2)
    port = free_port()
    await asyncio.to_thread(run_migrate, dsn, bus, work / "migrate.log")
    projector = start_projector(dsn, bus, work / "projector.log", once=False,
                                log_level="WARNING", lease_ttl_s=10)
    server = start_server(dsn, bus, port, work / "server.log", log_level="WARNING",
                          snapshot_log="off")
    pool = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
    assert pool is not None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = pb_grpc.FeatureServiceStub(channel)  # type: ignore[no-untyped-call]
            requests = [request_proto(request_doc(range(k, k + 1 + (k % 20))))
                        for k in range(1, N_KEYS - 20, 7)]
            deadline = time.monotonic() + 120
            while True:  # the projector applied the initial keys and the server answers
                try:
                    applied = int(await pool.fetchval(
                        "SELECT coalesce(sum(next_offset), 0) FROM checkpoints") or 0)
                    if applied >= first:
                        await stub.GetFeatures(requests[0], timeout=2)
                        break
                except (grpc.aio.AioRpcError, asyncpg.PostgresError, OSError):
                    pass
                if time.monotonic() > deadline or not (server.alive() and projector.alive()):
                    raise RuntimeError(f"the workloads did not start:\n{server.tail()}\n"
                                       f"{projector.tail()}")
                await asyncio.sleep(0.5)
            t0 = time.monotonic()
            until = t0 + seconds
            intervals = [Interval(start=i * report_s)
                         for i in range(max(1, int(-(-seconds // report_s))))]
            print(f"soak: {seconds:.0f} s at {rate:.0f} req/s, ingest {ingest:.0f} events/s"
                  f" (logs in {work})", file=sys.stderr, flush=True)
            await asyncio.gather(
                _offer(stub, requests, rate, until, intervals, report_s, t0),
                _ingest(bus, ingest, until, first),
                _sample(intervals, report_s, t0, until, server.pid, projector.pid, pool),
            )
        text, ok = _report(intervals, seconds, rate, ingest, described)
        if not (server.alive() and projector.alive()):
            text += "\nA workload died during the soak: targets NOT met."
            ok = False
    finally:
        await pool.close()
        server.stop()
        projector.stop()
        await pg.drop(name)
    return text, ok


def main() -> int:
    text, ok = asyncio.run(soak())
    print(text, flush=True)
    out = os.environ.get("SOAK_OUT")
    if out:
        Path(out).write_text(text + "\n", encoding="utf-8")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
