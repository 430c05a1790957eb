"""Prometheus metrics of the feature server; one CollectorRegistry per server instance.

Label values come from small closed sets only (method, contract code, gRPC code,
freshness state and flag): never a request id, key, pin or hash.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    ProcessCollector,
)

# GetFeatures is a few milliseconds of an 800 ms p99 budget (docs/contract.md 6): fine buckets low.
LATENCY_BUCKETS_S = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
)


class ServerMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.get_features_seconds = Histogram(
            "ofp_get_features_duration_seconds",
            "GetFeatures latency in the server, by contract code (OK or the error code)",
            ["code"],
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.requests = Counter(
            "ofp_grpc_requests",
            "RPCs answered, by method, contract code and gRPC status code",
            ["method", "code", "grpc_code"],
            registry=self.registry,
        )
        self.freshness = Counter(
            "ofp_snapshot_freshness",
            "GetFeatures snapshots served, by freshness state",
            ["state"],
            registry=self.registry,
        )
        self.freshness_flags = Counter(
            "ofp_snapshot_freshness_flags",
            "GetFeatures snapshots served carrying each freshness flag",
            ["flag"],
            registry=self.registry,
        )
        self.serving = Gauge(
            "ofp_server_serving",
            "1 while grpc.health.v1 reports SERVING (database answers, active policy);"
            " with --workers, the number of live workers that do",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.statement_requests = Histogram(
            "ofp_snapshot_statement_requests",
            "GetFeatures requests answered by each snapshot statement (reads that"
            " waited together share one)",
            buckets=(1, 2, 4, 8, 16, 32, 64),
            registry=self.registry,
        )
        self.unknown_fields = Counter(
            "ofp_request_unknown_fields",
            "Requests carrying protobuf fields this server does not know (a client built"
            " from a newer proto): ignored, by message",
            ["message"],
            registry=self.registry,
        )
        self.basis_waits = Counter(
            "ofp_basis_waits",
            "GetFeatures requests with a min_basis, by whether it was reached in time",
            ["outcome"],
            registry=self.registry,
        )
        self.basis_wait_seconds = Histogram(
            "ofp_basis_wait_seconds",
            "Time a request with a min_basis waited for the checkpoints to reach it",
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
            registry=self.registry,
        )
        # Read replicas (OFP_DATABASE_READ_URLS), labelled by host:port/database:
        # a closed set, the configured list. With --workers every worker
        # measures the same replicas: the gauges keep the largest lag and the
        # smallest rotation flag of the live workers.
        self.replica_lag_bytes = Gauge(
            "ofp_read_replica_lag_bytes",
            "WAL bytes a read replica has not replayed yet (primary position minus replay"
            " position), as last measured",
            ["replica"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.replica_lag_seconds = Gauge(
            "ofp_read_replica_lag_seconds",
            "How old a read replica's data may be at most, as last measured",
            ["replica"], registry=self.registry, multiprocess_mode="livemax",
        )
        self.replica_in_rotation = Gauge(
            "ofp_read_replica_in_rotation",
            "1 while GetFeatures reads go to the replica (answering, replaying, within"
            " OFP_REPLICA_MAX_LAG_S)",
            ["replica"], registry=self.registry, multiprocess_mode="livemin",
        )
        self.replica_reads = Counter(
            "ofp_read_replica_reads",
            "GetFeatures snapshot reads by where they were served: a replica's name, or"
            " primary",
            ["replica"], registry=self.registry,
        )
        self.replica_fallbacks = Counter(
            "ofp_read_replica_fallbacks",
            "GetFeatures reads a replica could not serve, by reason: no replica in"
            " rotation, a replica failing, one behind the request's min_basis or rollout",
            ["reason"], registry=self.registry,
        )
        self._replica_reads: dict[str, Any] = {}
        self.statement_seconds = Histogram(
            "ofp_snapshot_statement_duration_seconds",
            "Time of one snapshot read statement in the database, from a pooled"
            " connection in hand to its rows (the pool wait is not included)",
            buckets=LATENCY_BUCKETS_S,
            registry=self.registry,
        )
        self.pool_acquire_seconds = Histogram(
            "ofp_db_pool_acquire_duration_seconds",
            "Time a snapshot read waited for a pooled database connection",
            buckets=(0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0),
            registry=self.registry,
        )
        self.pool_size = Gauge(
            "ofp_db_pool_connections",
            "Database connections open in the server's pool (sampled every 2 s)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.pool_in_use = Gauge(
            "ofp_db_pool_connections_in_use",
            "Database connections of the pool held by a read (sampled every 2 s)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        self.pool_max = Gauge(
            "ofp_db_pool_connections_max",
            "The pool's maximum size (db_pool_max)",
            registry=self.registry,
            multiprocess_mode="livesum",
        )
        # CPU, memory, open files and GC of this process. With --workers these
        # collectors are the supervisor's (workers.py): a worker's registry is not
        # served, and prometheus_client's GC collector is off in multiprocess mode.
        ProcessCollector(registry=self.registry)
        GCCollector(registry=self.registry)
        for state in ("GREEN", "AMBER", "RED"):  # exported at 0 before the first answer
            self.freshness.labels(state=state)

        # Children by label values: `labels()` costs a lock and a tuple build per
        # call, on every RPC; the label sets are small and closed.
        self._requests: dict[tuple[str, str, str], Any] = {}
        self._latency: dict[str, Any] = {}
        self._states: dict[str, Any] = {}
        self._flags: dict[str, Any] = {}

    def rpc_finished(self, *, method: str, code: str, grpc_code: str, duration_s: float) -> None:
        key = (method, code, grpc_code)
        child = self._requests.get(key)
        if child is None:
            child = self._requests[key] = self.requests.labels(
                method=method, code=code, grpc_code=grpc_code
            )
        child.inc()
        if method == "GetFeatures":
            latency = self._latency.get(code)
            if latency is None:
                latency = self._latency[code] = self.get_features_seconds.labels(code=code)
            latency.observe(duration_s)

    def basis_waited(self, *, met: bool, seconds: float) -> None:
        self.basis_waits.labels(outcome="met" if met else "timeout").inc()
        self.basis_wait_seconds.observe(seconds)

    def request_with_unknown_fields(self, messages: list[str]) -> None:
        for message in messages:  # a closed set: the request's message names
            self.unknown_fields.labels(message=message).inc()

    def snapshot_statement(self, requests: int) -> None:
        self.statement_requests.observe(requests)

    def statement_timed(self, acquire_s: float, statement_s: float) -> None:
        self.pool_acquire_seconds.observe(acquire_s)
        self.statement_seconds.observe(statement_s)

    def pool_observed(self, *, size: int, idle: int, max_size: int) -> None:
        self.pool_size.set(size)
        self.pool_in_use.set(size - idle)
        self.pool_max.set(max_size)

    def replica_checked(self, *, replica: str, lag_bytes: int | None, lag_s: float | None,
                        in_rotation: bool) -> None:
        # NaN for a lag that could not be measured: not a 0 that would look healthy.
        self.replica_lag_bytes.labels(replica=replica).set(
            float("nan") if lag_bytes is None else lag_bytes)
        self.replica_lag_seconds.labels(replica=replica).set(
            float("nan") if lag_s is None else lag_s)
        self.replica_in_rotation.labels(replica=replica).set(1 if in_rotation else 0)

    def replica_read(self, replica: str) -> None:
        child = self._replica_reads.get(replica)
        if child is None:
            child = self._replica_reads[replica] = self.replica_reads.labels(replica=replica)
        child.inc()

    def replica_fallback(self, reason: str) -> None:
        self.replica_fallbacks.labels(reason=reason).inc()

    def snapshot_served(self, *, state: str, flags: list[str]) -> None:
        child = self._states.get(state)
        if child is None:
            child = self._states[state] = self.freshness.labels(state=state)
        child.inc()
        for flag in flags:
            counter = self._flags.get(flag)
            if counter is None:
                counter = self._flags[flag] = self.freshness_flags.labels(flag=flag)
            counter.inc()
