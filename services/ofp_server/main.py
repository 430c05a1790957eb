"""`ofp-server [--config FILE] [--workers N]`: run the feature server until SIGTERM / SIGINT.

With `--workers N` (or `OFP_SERVER_WORKERS`) above 1, N server processes share
the port under a supervisor (`workers.Supervisor`) that restarts a worker that
dies and serves the one metrics endpoint.

With `metrics_port` set it also serves Prometheus /metrics (and /healthz, /readyz,
where ready means grpc.health says SERVING). The database pool starts empty: a
database that is down (or a wrong DSN) leaves the server alive and NOT_SERVING,
logging why without the DSN, until the database answers. A database that
answers with a schema version other than this build's stops it: one line,
exit code 3 (schema_guard.py).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import signal
import sys

import uvloop

from ofp.config import ConfigError, Settings, load_settings
from ofp.logs import configure, get_logger
from ofp.metrics_http import MetricsEndpoint, serve_metrics
from ofp.store.db import close_pool, create_pool, embedded_dsn
from ofp.store.replicas import ReadRouter
from ofp.store.schema import EXIT_SCHEMA, SchemaMismatchError

from .schema_guard import SchemaGuard, check_before_workers
from .server import create_server
from .tracing import install_globally, start_tracing
from .workers import Supervisor

_log = get_logger("ofp.server")


async def serve(settings: Settings) -> None:
    # Signals first: a stop asked for while starting is remembered and honoured
    # once started (docs/decisions.md, "Signals from the first instruction").
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    dsn = settings.database_url or embedded_dsn(settings.embedded_data_dir)
    pool = await create_pool(dsn, min_size=0, max_size=settings.db_pool_max, generic_plans=True)
    endpoint: MetricsEndpoint | None = None
    tracer = start_tracing(settings)
    if tracer is not None:
        install_globally(tracer)
        _log.info("tracing_started", exporter="otlp")
    guard = SchemaGuard(pool)
    try:
        checked = await guard.check_now()
        replicas = None
        if settings.database_read_urls:
            replicas = await ReadRouter.open(
                pool, settings.database_read_urls, max_lag_s=settings.replica_max_lag_s,
                fallback=settings.replica_fallback,
                check_interval_s=settings.replica_check_interval_ms / 1000,
                pool_max=settings.db_pool_max)
            _log.info("read_replicas", replicas=[r.name for r in replicas.replicas],
                      fallback=settings.replica_fallback)
        srv = create_server(settings, pool, tracer=tracer, replicas=replicas)
        await srv.start()
        # Everything alive now (modules, descriptors, the server) lives as long
        # as the process: out of the collector's sight, a full collection walks
        # only what requests allocate; its 12-19 ms pauses fell under 0.3 ms
        # (docs/changelog.md, round 5).
        gc.collect()
        gc.freeze()
        if settings.metrics_port is not None:
            endpoint = await serve_metrics(
                settings.metrics_port, srv.metrics.registry,
                ready=lambda: srv.serving,
            )
            _log.info("metrics_started", port=endpoint.port)
        if not checked:
            guard.watch(stop)
        await stop.wait()
        _log.info("shutdown_requested")
        await srv.stop(grace_s=5.0)
        await guard.close()
        guard.raise_refusal()
    finally:
        if endpoint is not None:
            await endpoint.close()
        await close_pool(pool)
        if tracer is not None:
            tracer.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofp-server", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (environment overrides it)")
    parser.add_argument("--workers", type=int, metavar="N",
                        help="server processes sharing the port (default OFP_SERVER_WORKERS, 1)")
    # Set by the supervisor on the processes it starts.
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    configure()
    try:
        settings = load_settings(args.config)
        configure(settings.log_level.upper())
        workers = settings.server_workers if args.workers is None else args.workers
        if workers < 1:
            raise ConfigError("--workers must be >= 1")
        if args.worker:
            # One of the supervisor's workers: the port is shared, the supervisor
            # serves the metrics endpoint.
            settings = dataclasses.replace(settings, grpc_reuseport=True, metrics_port=None)
        elif workers > 1:
            worker_argv = [] if args.config is None else ["--config", args.config]
            uvloop.run(check_before_workers(settings))
            return int(uvloop.run(Supervisor(settings, workers, worker_argv).run()))
        uvloop.run(serve(settings))
    except ConfigError as exc:
        print(f"ofp-server: {exc}", file=sys.stderr)
        return 2
    except SchemaMismatchError as exc:
        print(f"ofp-server: refusing to start: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    except OSError as exc:  # cannot bind a port; the message names the address only
        print(f"ofp-server: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
