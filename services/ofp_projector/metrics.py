"""Projector metrics: Prometheus metrics and the /metrics, /healthz, /readyz endpoint.

The projector calls `ProjectorMetrics` from its loop; `start_http` serves them on
`metrics_port`. One CollectorRegistry per instance (tests run several projectors in one
process). Labels are closed sets (outcome, reason codes) or the partition number:
never an event id, key, pin or hash.

    /healthz   the process and its event loop answer (liveness: never the database)
    /readyz    `set_ready(True)` was called and not withdrawn (migrated, policy
               recorded, consuming)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from ofp.metrics_http import MetricsEndpoint, serve_metrics

BATCH_SIZE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2000, 5000, 10000)
APPLY_SECONDS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ProjectorMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self._ready = False
        self.records = Counter(
            "ofp_projector_records",
            "Records read, by outcome and reason (docs/contract.md 2.2); reason is '' when none",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self.batches = Counter(
            "ofp_projector_batches", "Batches committed", ["partition"], registry=self.registry
        )
        self.batch_records = Histogram(
            "ofp_projector_batch_records",
            "Records per committed batch",
            buckets=BATCH_SIZE_BUCKETS,
            registry=self.registry,
        )
        self.apply_seconds = Histogram(
            "ofp_projector_batch_apply_duration_seconds",
            "Time to apply and commit one batch, retries included",
            buckets=APPLY_SECONDS_BUCKETS,
            registry=self.registry,
        )
        self.lag_records = Gauge(
            "ofp_projector_lag_records",
            "Records between the checkpoint and the end of the bus, per partition",
            ["partition"],
            registry=self.registry,
        )
        self.lag_seconds = Gauge(
            "ofp_projector_lag_seconds",
            "How far behind the tip of the bus a partition is (Kinesis MillisBehindLatest)",
            ["partition"],
            registry=self.registry,
        )
        self.watermark_age_seconds = Gauge(
            "ofp_projector_watermark_age_seconds",
            "Wall clock minus the partition's event-time high mark",
            ["partition"],
            registry=self.registry,
        )
        self.left_retention = Counter(
            "ofp_projector_partitions_left_retention",
            "Partitions closed because the bus dropped them (retention) before they were"
            " read to their end; the records after their checkpoint were lost upstream",
            ["partition"],
            registry=self.registry,
        )
        self.leases = Gauge(
            "ofp_projector_leases_held", "Partition leases this replica holds",
            registry=self.registry,
        )
        self.ready_gauge = Gauge(
            "ofp_projector_ready", "1 while /readyz answers 200", registry=self.registry
        )
        ProcessCollector(registry=self.registry)  # CPU, memory, open files
        GCCollector(registry=self.registry)

    def batch_applied(
        self,
        *,
        partition: int,
        outcomes: Mapping[tuple[str, str], int],
        records: int,
        duration_s: float,
    ) -> None:
        """One committed batch; `outcomes` maps (outcome, reason) to a record count."""
        for (outcome, reason), n in outcomes.items():
            if n:
                self.records.labels(outcome=str(outcome), reason=reason or "").inc(n)
        self.batches.labels(partition=str(partition)).inc()
        self.batch_records.observe(records)
        self.apply_seconds.observe(duration_s)

    def partition_observed(
        self,
        *,
        partition: int,
        lag_records: int | None,
        lag_ms: int | None,
        watermark_age_s: float | None,
    ) -> None:
        """The latest view of a partition; None leaves a value out (unknown for this bus)."""
        label = str(partition)
        if lag_records is not None:
            self.lag_records.labels(partition=label).set(lag_records)
        if lag_ms is not None:
            self.lag_seconds.labels(partition=label).set(lag_ms / 1000)
        if watermark_age_s is not None:
            self.watermark_age_seconds.labels(partition=label).set(watermark_age_s)

    def partition_released(self, partition: int) -> None:
        """Drop a partition's gauges when this replica stops consuming it (lease lost)."""
        label = str(partition)
        for gauge in (self.lag_records, self.lag_seconds, self.watermark_age_seconds):
            with contextlib.suppress(KeyError):
                gauge.remove(label)

    def partition_left_retention(self, partition: int) -> None:
        """A partition closed unread to its end: the bus no longer holds it."""
        self.left_retention.labels(partition=str(partition)).inc()

    def leases_held(self, n: int) -> None:
        self.leases.set(n)

    def watch_pool(self, pool: Any) -> None:
        """Export `pool`'s size and connections in use, read at each scrape."""
        self.registry.register(_PoolCollector(pool))

    def set_ready(self, ready: bool) -> None:
        self._ready = ready
        self.ready_gauge.set(1 if ready else 0)

    @property
    def ready(self) -> bool:
        return self._ready


class _PoolCollector(Collector):
    """The asyncpg pool's connections, read when scraped (no work between scrapes)."""

    def __init__(self, pool: Any) -> None:
        self._pool = pool

    def collect(self) -> Iterator[GaugeMetricFamily]:
        size = self._pool.get_size()
        yield GaugeMetricFamily("ofp_db_pool_connections",
                                "Database connections open in the projector's pool", size)
        yield GaugeMetricFamily("ofp_db_pool_connections_in_use",
                                "Database connections of the pool held by a batch or a read",
                                size - self._pool.get_idle_size())
        yield GaugeMetricFamily("ofp_db_pool_connections_max",
                                "The pool's maximum size (db_pool_max)",
                                self._pool.get_max_size())


async def start_http(
    port: int, metrics: ProjectorMetrics, *, host: str = "0.0.0.0"
) -> MetricsEndpoint:
    """Serve /metrics, /healthz and /readyz; `await endpoint.close()` stops it."""
    return await serve_metrics(port, metrics.registry, host=host, ready=lambda: metrics.ready)
