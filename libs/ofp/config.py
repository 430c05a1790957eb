"""Settings for both workloads: defaults -> YAML file -> environment (docs/contract.md 5).

The environment wins. Unknown YAML keys are errors. The database URL is a
secret: it is read from the environment only and masked wherever it is printed.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import yaml

if TYPE_CHECKING:
    from ofp.policy import Policy


# Lateness the retention keeps beyond the largest window (docs/contract.md 6).
RETENTION_LATENESS_S = 120


class ConfigError(ValueError):
    """The configuration cannot be used; the message names the setting."""


def mask_dsn(dsn: str | None) -> str:
    """`postgresql://user:secret@host/db` -> `postgresql://user:***@host/db`."""
    if not dsn:
        return "<unset>"
    scheme, sep, rest = dsn.partition("://")
    if not sep or "@" not in rest:
        return f"{scheme}://***" if sep else "***"
    creds, _, host = rest.rpartition("@")
    user = creds.split(":", 1)[0]
    return f"{scheme}://{user}:***@{host}"


@dataclass(frozen=True)
class Settings:
    database_url: str | None = field(default=None, repr=False)
    features_path: str = "config/features_v0.yaml"
    bus_kind: str = "file"
    file_bus_root: str = ".ofp/bus"
    required_platform_run_id: str | None = None
    kinesis_endpoint_url: str | None = None
    aws_region: str | None = None
    grpc_address: str = "127.0.0.1:50051"
    # Several ofp-server processes may share grpc_address (SO_REUSEPORT; the
    # kernel spreads connections): one Python process serves from one core.
    # Off by default so a second server on a taken port fails loudly.
    grpc_reuseport: bool = False
    # Long-lived client connections (docs/operations.md, "Connections"): after
    # max age (+ grace for calls in flight) the server sends GOAWAY, so clients
    # reconnect and spread onto replicas added since; keepalive pings find dead
    # peers behind load balancers that drop idle connections silently.
    # Log level of the workloads' JSON lines (DEBUG shows every RPC's line).
    log_level: str = "INFO"
    # OpenTelemetry tracing of the server's RPCs (docs/operations.md, "Tracing"):
    # "otlp" exports spans over OTLP (the standard OTEL_EXPORTER_OTLP_* variables
    # say where); "off" never loads it; "" (default) means otlp exactly when
    # OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set.
    tracing: str = ""
    # Server processes per pod sharing the port (SO_REUSEPORT) under one supervisor
    # (ofp-server --workers N; docs/operations.md, "Scale").
    server_workers: int = 1
    grpc_max_connection_age_s: int = 300
    grpc_max_connection_age_grace_s: int = 30
    grpc_keepalive_time_s: int = 60
    grpc_keepalive_timeout_s: int = 20
    metrics_port: int | None = None
    # projector
    batch_size: int = 2000
    poll_interval_ms: int = 50
    retention_days: int = 30
    # Event time allowed past the database clock at apply time; later events
    # are quarantined as ts_in_future (replayable once their time has come).
    max_future_skew_s: int = 300
    # projector replicas: partition leases (docs/contract.md 6)
    projector_id: str | None = None  # default: <hostname>-<pid>-<random>
    lease_ttl_s: int = 10
    # Kinesis (docs/contract.md 2.4)
    kinesis_stream_name: str | None = None  # default: the policy's source_topic
    kinesis_start_position: str = "TRIM_HORIZON"
    kinesis_get_records_limit: int = 1000
    kinesis_poll_interval_ms: int = 250
    kinesis_connect_timeout_ms: int = 3000
    kinesis_read_timeout_ms: int = 10000
    # server
    max_keys: int = 100
    max_groups: int = 16
    max_message_bytes: int = 1 << 20
    deadline_ms: int = 2000
    max_basis_lag_s: int = 300
    # Read-your-basis: how long a request with a min_basis may wait for it.
    max_basis_wait_ms: int = 250
    db_pool_max: int = 8
    # Snapshot statements running at once; GetFeatures requests that arrive
    # meanwhile are read together by the next one (ofp.store.coalesce).
    db_reads_in_flight: int = 2
    # Read replicas (docs/operations.md, "Read replicas"): PostgreSQL streaming
    # replicas GetFeatures reads from, round robin among those in rotation; the
    # projector, the policy cache and read-your-basis waits use the primary. A
    # replica further behind than replica_max_lag_s (or promoted, or not
    # answering) leaves the rotation until it is back; with none in rotation
    # reads go to the primary, or are refused UNAVAILABLE (replica_fallback).
    database_read_urls: tuple[str, ...] = field(default=(), repr=False)
    replica_max_lag_s: float = 5.0
    replica_fallback: str = "primary"
    replica_check_interval_ms: int = 500
    # local runs without OFP_DATABASE_URL
    embedded_data_dir: str = ".ofp/pg"
    # The projector applies pending migrations at start-up (development, tests,
    # `make run`). The manifests turn it off: there a migration Job runs
    # `ofp migrate` as the schema's owner and the workloads' roles may not
    # change the schema (docs/operations.md, "Database roles"). Either way a
    # workload refuses to run against a schema that is not its own.
    auto_migrate: bool = True
    # operations: TLS / mTLS of the gRPC server, the plaintext health-only
    # listener for kubelet probes, and the status health ladder (docs/contract.md 4.6)
    tls_cert_path: str | None = None
    tls_key_path: str | None = None
    tls_client_ca_path: str | None = None  # set: mutual TLS, client certificates required
    health_port: int | None = None
    status_checkpoint_amber_s: int = 120
    status_checkpoint_red_s: int = 300
    status_watermark_amber_s: int = 120
    status_watermark_red_s: int = 300
    status_quarantine_amber: int = 1  # open quarantine rows that make AMBER; 0 disables
    # The snapshot log (docs/audit.md): where served snapshots are recorded (off,
    # postgres: the partitioned snapshot_log table, s3: one object per snapshot),
    # the share recorded (0..1), what a full queue does (drop: counted, never
    # fails a call; block: the call waits for room), and the batching.
    snapshot_log: str = "postgres"
    snapshot_log_sample: float = 1.0
    snapshot_log_overflow: str = "drop"
    snapshot_log_queue: int = 10_000
    snapshot_log_batch: int = 500
    snapshot_log_flush_ms: int = 100
    snapshot_log_retention_days: int = 90
    snapshot_log_s3_bucket: str | None = None
    snapshot_log_s3_prefix: str = "snapshots/"
    snapshot_log_s3_endpoint_url: str | None = None

    def __repr__(self) -> str:
        hidden = ("database_url", "database_read_urls")
        shown = ", ".join(
            f"{f.name}={getattr(self, f.name)!r}" for f in fields(self) if f.name not in hidden
        )
        read_urls = [mask_dsn(u) for u in self.database_read_urls]
        return (f"Settings(database_url={mask_dsn(self.database_url)!r},"
                f" database_read_urls={read_urls!r}, {shown})")

    def validate(self) -> Settings:
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"):
            raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, not"
                              f" {self.log_level!r}")
        if self.tracing not in ("", "off", "otlp"):
            raise ConfigError(f"tracing must be 'otlp', 'off' or empty, not {self.tracing!r}")
        if self.bus_kind not in ("file", "kinesis"):
            raise ConfigError(f"bus_kind must be 'file' or 'kinesis', not {self.bus_kind!r}")
        for name in ("batch_size", "max_keys", "max_groups", "max_message_bytes", "deadline_ms"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if not 1 <= self.db_reads_in_flight <= self.db_pool_max:
            raise ConfigError("db_reads_in_flight must be within 1..db_pool_max")
        if self.max_keys > 100 or self.max_groups > 16:
            raise ConfigError("max_keys may not exceed 100 nor max_groups 16 (contract bounds)")
        for name in ("lease_ttl_s", "kinesis_poll_interval_ms", "kinesis_connect_timeout_ms",
                     "kinesis_read_timeout_ms", "grpc_max_connection_age_s", "server_workers",
                     "grpc_max_connection_age_grace_s", "grpc_keepalive_time_s",
                     "grpc_keepalive_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0")
        if self.lease_ttl_s < 2:
            raise ConfigError("lease_ttl_s must be >= 2 (leases are renewed every ttl/3)")
        if self.kinesis_start_position not in ("TRIM_HORIZON", "LATEST"):
            raise ConfigError(
                "kinesis_start_position must be TRIM_HORIZON or LATEST, not "
                f"{self.kinesis_start_position!r}"
            )
        if not 1 <= self.kinesis_get_records_limit <= 10000:
            raise ConfigError("kinesis_get_records_limit must be within 1..10000 (the API limit)")
        if self.projector_id is not None and not 1 <= len(self.projector_id) <= 200:
            raise ConfigError("projector_id must be 1..200 characters")
        if self.retention_days < 1:
            raise ConfigError("retention_days must be >= 1")
        if self.max_future_skew_s < 0:
            raise ConfigError("max_future_skew_s must be >= 0")
        _validate_operations(self)
        return self

    def check_retention(self, policy: Policy) -> None:
        """Retention must hold the policy's largest window plus the allowed lateness.

        Otherwise pruning removes state that a window of an as-of near the
        watermark still needs, and such requests are refused after every prune.
        """
        largest_s = max(w.duration_s for g in policy.groups for w in g.windows)
        needed_s = largest_s + RETENTION_LATENESS_S
        if self.retention_days * 86_400 < needed_s:
            raise ConfigError(
                f"retention_days {self.retention_days} ({self.retention_days * 86_400} s) is"
                f" shorter than the policy's largest window ({largest_s} s) plus"
                f" {RETENTION_LATENESS_S} s of lateness ({needed_s} s): raise retention_days"
                f" to at least {-(-needed_s // 86_400)}"
            )

    def bus_stream(self, topic: str) -> str:
        """The stream name checkpoints are recorded under (the basis `stream`, contract 4.2).

        The one place that names the stream: the projector records checkpoints
        under it, and the server, the CLI and the health checks read them under
        it, so a custom Kinesis stream name can never split the two sides.
        """
        if self.bus_kind == "kinesis":
            return self.kinesis_stream_name or topic
        return topic


def _validate_operations(s: Settings) -> None:
    """TLS files come as a pair (plus an optional client CA); ladder thresholds are ordered."""
    if (s.tls_cert_path is None) != (s.tls_key_path is None):
        raise ConfigError("tls_cert_path and tls_key_path must be set together")
    if s.tls_client_ca_path is not None and s.tls_cert_path is None:
        raise ConfigError("tls_client_ca_path (mutual TLS) needs tls_cert_path and tls_key_path")
    for name in ("metrics_port", "health_port"):
        port = getattr(s, name)
        if port is not None and not 0 <= port <= 65535:
            raise ConfigError(f"{name} must be a TCP port (0..65535)")
    for kind in ("checkpoint", "watermark"):
        amber = getattr(s, f"status_{kind}_amber_s")
        red = getattr(s, f"status_{kind}_red_s")
        if not 0 < amber <= red:
            raise ConfigError(
                f"status_{kind}_amber_s must be > 0 and <= status_{kind}_red_s ({amber}, {red})"
            )
    if s.status_quarantine_amber < 0:
        raise ConfigError("status_quarantine_amber must be >= 0 (0 disables the rule)")
    _validate_snapshot_log(s)
    if s.replica_fallback not in ("primary", "unavailable"):
        raise ConfigError("replica_fallback must be 'primary' or 'unavailable', not"
                          f" {s.replica_fallback!r}")
    if not s.replica_max_lag_s > 0:
        raise ConfigError("replica_max_lag_s must be > 0")
    if s.replica_check_interval_ms <= 0:
        raise ConfigError("replica_check_interval_ms must be > 0")
    if any(not u.strip() for u in s.database_read_urls):
        raise ConfigError("database_read_urls: an empty DSN in the list")


def _validate_snapshot_log(s: Settings) -> None:
    if s.snapshot_log not in ("off", "postgres", "s3"):
        raise ConfigError(f"snapshot_log must be off, postgres or s3, not {s.snapshot_log!r}")
    if not 0.0 <= s.snapshot_log_sample <= 1.0:
        raise ConfigError("snapshot_log_sample must be within 0..1")
    if s.snapshot_log_overflow not in ("drop", "block"):
        raise ConfigError("snapshot_log_overflow must be drop or block, not"
                          f" {s.snapshot_log_overflow!r}")
    for name in ("snapshot_log_queue", "snapshot_log_batch", "snapshot_log_flush_ms",
                 "snapshot_log_retention_days"):
        if getattr(s, name) <= 0:
            raise ConfigError(f"{name} must be > 0")
    if s.snapshot_log == "s3" and not s.snapshot_log_s3_bucket:
        raise ConfigError("snapshot_log s3 needs snapshot_log_s3_bucket")


_SECRET_FROM_ENV_ONLY = {"database_url"}
_ENV_NAMES = {"aws_region": "AWS_REGION"}


def env_name(name: str) -> str:
    return _ENV_NAMES.get(name, f"OFP_{name.upper()}")


def load_settings(path: str | Path | None = None, env: dict[str, str] | None = None) -> Settings:
    environ = os.environ if env is None else env
    values: dict[str, Any] = {}
    known = {f.name: f for f in fields(Settings)}
    if path is not None:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise ConfigError(f"config file {path}: cannot read ({exc.strerror})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"config file {path}: top level must be a mapping")
        for key, value in raw.items():
            if key not in known:
                raise ConfigError(f"config file {path}: unknown setting {key!r}")
            if key in _SECRET_FROM_ENV_ONLY:
                raise ConfigError(f"config file {path}: {key} is a secret; set {env_name(key)}")
            if key == "database_read_urls" and any(
                    _has_password(u) for u in ([value] if isinstance(value, str) else value or [])
                    if isinstance(u, str)):
                # Unlike database_url the replicas may be named in the file, but a
                # password belongs in the environment (or PGPASSFILE / PGPASSWORD).
                raise ConfigError(f"config file {path}: database_read_urls carries a password;"
                                  f" set {env_name(key)} or use a PGPASSFILE")
            values[key] = value
    for name in known:
        text = environ.get(env_name(name))
        if text is not None and text != "":
            values[name] = text
    _split_read_urls(values)
    # msgspec converts by the declared types (strings from the environment to
    # int / bool / None-able fields; lax mode) and names the field it refuses.
    try:
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_setting_error(str(exc), values)) from None
    return settings.validate()


def _has_password(dsn: str) -> bool:
    creds = dsn.partition("://")[2].rpartition("@")[0]
    return ":" in creds or "password=" in dsn.partition("?")[2]


def _split_read_urls(values: dict[str, Any]) -> None:
    """`database_read_urls`: a comma-separated string (the environment, or the file)
    or a YAML list of DSNs."""
    raw = values.get("database_read_urls")
    if raw is None:
        return
    urls = [u.strip() for u in raw.split(",")] if isinstance(raw, str) else raw
    if not isinstance(urls, list) or not all(isinstance(u, str) for u in urls):
        raise ConfigError("database_read_urls must be a list of DSNs or a comma-separated string")
    values["database_read_urls"] = tuple(u for u in urls if u)


def _setting_error(message: str, values: dict[str, Any]) -> str:
    """msgspec's "Expected `int`, got `str` - at `$.batch_size`" -> one line naming the
    setting, the value given and its environment variable."""
    expected, _, where = message.partition(" - at `$.")
    name = where.rstrip("`")
    if name not in values:
        return message
    return f"{name} ({env_name(name)}): {values[name]!r} is not valid: {expected}"
