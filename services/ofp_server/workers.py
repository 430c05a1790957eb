"""`ofp-server --workers N`: N server processes on one port, one supervisor.

One Python process serves from one core (its event loop), so a pod with more
cores runs several. Each worker is a full `ofp-server` (its own event loop,
database pool and coalescing reader) bound with SO_REUSEPORT to the same gRPC
and health ports; the kernel spreads connections over them.

The supervisor (this module) starts the workers, restarts one that dies (and
counts it), serves the one metrics endpoint for all of them (Prometheus
multiprocess mode: each worker writes its samples to a shared directory, the
supervisor's /metrics merges them) and stops them all on SIGTERM, waiting for
their own graceful drain. `/readyz` is ready while every worker says SERVING
(the `ofp_server_serving` gauge summed over live workers equals N).

A worker that cannot start at all (a bad configuration, a port held by a
process without SO_REUSEPORT: exit code 2; a database schema that is not this
build's: exit code 3) is not restarted: the supervisor stops the others and
exits with that code, as a single server would.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence

from prometheus_client import CollectorRegistry, Counter, Gauge, GCCollector, ProcessCollector
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

from ofp.config import Settings
from ofp.logs import get_logger
from ofp.metrics_http import MetricsEndpoint, serve_metrics
from ofp.store.schema import EXIT_SCHEMA

_log = get_logger("ofp.server")
# A worker that keeps dying is restarted at most this often.
RESTART_DELAY_S = 1.0
STOP_GRACE_S = 25.0  # under the pod's 30 s termination grace


class Supervisor:
    def __init__(self, settings: Settings, workers: int, worker_argv: Sequence[str]) -> None:
        self.settings = settings
        self.n = workers
        self.argv = list(worker_argv)
        self.dir = tempfile.mkdtemp(prefix="ofp-server-metrics-")
        self.procs: dict[int, asyncio.subprocess.Process] = {}  # worker index -> process
        self.registry = CollectorRegistry()
        self.restarts = Counter(
            "ofp_server_worker_restarts", "Server worker processes restarted after dying",
            registry=self.registry)
        self.alive = Gauge("ofp_server_workers", "Server worker processes running",
                           registry=self.registry)
        # The supervisor's own process and GC; the workers' processes by worker
        # index (a worker's GC is not exported: prometheus_client's GC collector
        # is off in multiprocess mode).
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        self.registry.register(_WorkerProcesses(self.procs))
        # The workers' own samples, merged (their ofp_server_serving is a livesum).
        self.merged = CollectorRegistry()
        MultiProcessCollector(self.merged, path=self.dir)  # type: ignore[no-untyped-call]
        self._stopping = asyncio.Event()
        self.exit_code = 0

    def _env(self, index: int) -> dict[str, str]:
        return {**os.environ, "PROMETHEUS_MULTIPROC_DIR": self.dir,
                "OFP_SERVER_WORKER_INDEX": str(index)}

    async def _spawn(self, index: int) -> None:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ofp_server.main", *self.argv, "--worker",
            env=self._env(index))
        self.procs[index] = proc
        self.alive.set(len(self.procs))
        _log.info("worker_started", worker=index, pid=proc.pid)

    def ready(self) -> bool:
        serving = 0.0
        for metric in self.merged.collect():
            if metric.name == "ofp_server_serving":
                serving = sum(s.value for s in metric.samples)
        return len(self.procs) == self.n and serving >= self.n

    async def _watch(self, index: int) -> None:
        """Restart worker `index` whenever it dies, until stopping."""
        while not self._stopping.is_set():
            proc = self.procs[index]
            started = time.monotonic()
            code = await proc.wait()
            mark_process_dead(proc.pid, self.dir)  # type: ignore[no-untyped-call]
            if self._stopping.is_set():
                return
            del self.procs[index]
            self.alive.set(len(self.procs))
            if code in (2, EXIT_SCHEMA):  # a bad configuration, or not this build's schema
                _log.error("worker_cannot_start", worker=index, pid=proc.pid, exit_code=code)
                self.exit_code = code
                self._stopping.set()
                return
            self.restarts.inc()
            _log.error("worker_died", worker=index, pid=proc.pid, exit_code=code,
                       uptime_s=round(time.monotonic() - started, 3))
            await asyncio.sleep(RESTART_DELAY_S)
            if not self._stopping.is_set():
                await self._spawn(index)

    async def run(self) -> int:
        endpoint: MetricsEndpoint | None = None
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        try:
            for i in range(self.n):
                await self._spawn(i)
            if self.settings.metrics_port is not None:
                endpoint = await serve_metrics(
                    self.settings.metrics_port, _Both(self.registry, self.merged),
                    ready=self.ready)
                _log.info("metrics_started", port=endpoint.port, workers=self.n)
            watchers = [asyncio.create_task(self._watch(i)) for i in range(self.n)]
            await self._stopping.wait()
            _log.info("shutdown_requested", workers=len(self.procs))
            await self._stop_all()
            for w in watchers:
                w.cancel()
            await asyncio.gather(*watchers, return_exceptions=True)
        finally:
            if endpoint is not None:
                await endpoint.close()
            shutil.rmtree(self.dir, ignore_errors=True)
        return self.exit_code

    async def _stop_all(self) -> None:
        procs = [p for p in self.procs.values() if p.returncode is None]
        for p in procs:
            p.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), STOP_GRACE_S)
        except TimeoutError:
            for p in procs:
                if p.returncode is None:
                    _log.error("worker_killed", pid=p.pid, reason="no exit after SIGTERM")
                    p.kill()
            await asyncio.gather(*(p.wait() for p in procs))


class _WorkerProcesses(Collector):
    """Each live worker's CPU, memory and open files, read from /proc at each scrape,
    as `ofp_server_worker_process_*{worker="<index>"}`."""

    def __init__(self, procs: dict[int, asyncio.subprocess.Process]) -> None:
        self._procs = procs

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        for index, proc in sorted(self._procs.items()):
            reader = ProcessCollector(pid=functools.partial(int, proc.pid), registry=None,
                                      namespace="ofp_server_worker")
            for metric in reader.collect():
                family = families.get(metric.name)
                if family is None:
                    family = families[metric.name] = Metric(
                        metric.name, metric.documentation, metric.type)
                for s in metric.samples:
                    family.add_sample(s.name, {**s.labels, "worker": str(index)}, s.value)
        yield from families.values()


class _Both(CollectorRegistry):
    """The supervisor's own metrics and the workers' merged ones, in one exposition."""

    def __init__(self, *registries: CollectorRegistry) -> None:
        super().__init__(auto_describe=False)
        self._parts = registries

    def collect(self):  # type: ignore[no-untyped-def]
        for registry in self._parts:
            yield from registry.collect()
