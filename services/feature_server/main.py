"""`ofp-server [--config FILE]`: run the feature server until SIGTERM / SIGINT."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys

import uvloop

from ofp.config import ConfigError, Settings, load_settings
from ofp.logs import configure, get_logger
from ofp.store.db import create_pool, embedded_dsn

from .server import create_server

_log = get_logger("ofp.server")


async def serve(settings: Settings) -> None:
    dsn = settings.database_url or embedded_dsn(settings.embedded_data_dir)
    pool = await create_pool(dsn, max_size=settings.db_pool_max)
    srv = create_server(settings, pool)
    await srv.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    _log.info("shutdown_requested")
    await srv.stop(grace_s=5.0)
    await pool.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ofp-server", description=__doc__)
    parser.add_argument("--config", help="YAML settings file (environment overrides it)")
    args = parser.parse_args(argv)
    configure()
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"ofp-server: {exc}", file=sys.stderr)
        return 2
    uvloop.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
