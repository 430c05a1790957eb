"""`ofp-projector [--config FILE] [--once]`: consume the bus into feature state."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop

from ofp.config import ConfigError, Settings, load_settings
from ofp.logs import configure, get_logger
from ofp.policy import PolicyError, load_policy
from ofp.store.db import create_pool, embedded_dsn

from .projector import Projector

_log = get_logger("ofp.projector")


async def run(settings: Settings, *, once: bool) -> int:
    policy = load_policy(settings.features_path)
    if settings.bus_kind != "file":
        raise ConfigError(f"bus_kind {settings.bus_kind!r} is not available in this build")
    dsn = settings.database_url or embedded_dsn(settings.embedded_data_dir)
    pool = await create_pool(dsn, max_size=settings.db_pool_max)
    try:
        projector = Projector(settings, pool, policy)
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, projector.stop)
        totals = await projector.run(once=once)
        _log.info("projector_finished", records=totals.records, batches=totals.batches,
                  outcomes=totals.by_outcome, retries=totals.retries)
    finally:
        await pool.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofp-projector", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (environment overrides it)")
    parser.add_argument("--once", action="store_true", help="drain to the current end and exit")
    args = parser.parse_args(argv)
    configure()
    try:
        settings = load_settings(args.config)
        return uvloop.run(run(settings, once=args.once))
    except (ConfigError, PolicyError) as exc:
        print(f"ofp-projector: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
