"""`ofp migrate`: apply pending schema migrations and say which."""

from __future__ import annotations

import argparse

from ofp.config import Settings
from ofp.store.db import migrate

from .database import connect, resolve_dsn
from .errors import EXIT_OK


async def run(args: argparse.Namespace, settings: Settings) -> int:
    conn = await connect(resolve_dsn(settings, announce=True))
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("schema up to date")
    return EXIT_OK
