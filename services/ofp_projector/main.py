"""`ofp-projector [--config FILE] [--once]`: consume the bus into feature state.

With `metrics_port` set it serves /metrics, /healthz and /readyz (metrics.py).
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Callable

import asyncpg
import uvloop

from ofp.config import ConfigError, Settings, load_settings
from ofp.logs import configure, get_logger
from ofp.policy import PolicyError, load_policy
from ofp.store.db import close_pool, create_pool, embedded_dsn
from ofp.store.schema import EXIT_SCHEMA, SchemaMismatchError
from ofp.store.writes import PolicyConflictError

from .metrics import ProjectorMetrics, start_http
from .projector import Projector

_log = get_logger("ofp.projector")


async def run(settings: Settings, *, once: bool) -> int:
    # Signals first: a stop asked for while starting is remembered and honoured
    # once the projector exists (docs/decisions.md, "Signals from the first instruction").
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)
    policy = load_policy(settings.features_path)
    dsn = settings.database_url or embedded_dsn(settings.embedded_data_dir)
    metrics = ProjectorMetrics()
    endpoint = None
    if settings.metrics_port is not None:
        # Before the database: /healthz answers (process alive) while Postgres is awaited.
        endpoint = await start_http(settings.metrics_port, metrics)
        _log.info("metrics_started", port=endpoint.port)
    try:
        pool = await create_pool(dsn, max_size=settings.db_pool_max,
                                 idle_in_transaction_timeout_s=settings.lease_ttl_s)
        metrics.watch_pool(pool)
        stopper: asyncio.Task[None] | None = None
        try:
            projector = Projector(settings, pool, policy, metrics=metrics)
            stopper = asyncio.create_task(_stop_when(stopping, projector.stop))
            await projector.prepare()
            metrics.set_ready(True)
            totals = await projector.run(once=once)
            metrics.set_ready(False)
            _log.info("projector_finished", records=totals.records, batches=totals.batches,
                      outcomes=totals.by_outcome, retries=totals.retries)
        finally:
            if stopper is not None:
                stopper.cancel()
            await close_pool(pool)
    finally:
        if endpoint is not None:
            await endpoint.close()
    return 0


async def _stop_when(stopping: asyncio.Event, stop: Callable[[], None]) -> None:
    await stopping.wait()
    stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofp-projector", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (environment overrides it)")
    parser.add_argument("--once", action="store_true", help="drain to the current end and exit")
    args = parser.parse_args(argv)
    configure()
    try:
        settings = load_settings(args.config)
        configure(settings.log_level.upper())
        return uvloop.run(run(settings, once=args.once))
    except (ConfigError, PolicyError, PolicyConflictError) as exc:
        print(f"ofp-projector: {exc}", file=sys.stderr)
        return 2
    except SchemaMismatchError as exc:
        print(f"ofp-projector: refusing to start: {exc}", file=sys.stderr)
        return EXIT_SCHEMA
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        # One line naming the failure, never a traceback: asyncpg's messages carry the
        # host and port at most, never the DSN's password.
        print(f"ofp-projector: cannot run: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
