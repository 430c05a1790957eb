"""`ofp migrate`: apply pending schema migrations and say which.

Then, when the workload roles exist (`ofp migrate --print-grants` prints the
SQL that creates them), it re-applies their table grants, so a table a
migration just created is readable (and, for the projector, writable) at once.
`--wait S` retries a database that does not answer yet for up to S seconds:
the migration Job may start before the database does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from urllib.parse import unquote, urlsplit

import asyncpg

from ofp.config import Settings
from ofp.store.db import is_transient, migrate
from ofp.store.roles import Roles, apply_grants, setup_sql

from .database import connect, resolve_dsn
from .errors import EXIT_OK, CliError

WAIT_STEP_S = 2.0


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--print-grants", action="store_true",
                   help="print the SQL that creates the migrator, projector and server roles"
                        " and their grants (for a database administrator) and exit")
    p.add_argument("--role-prefix", default="ofp", metavar="PREFIX",
                   help="roles are PREFIX_migrator, PREFIX_projector, PREFIX_server"
                        " (default ofp)")
    p.add_argument("--database", metavar="NAME",
                   help="--print-grants: the database (default: the one OFP_DATABASE_URL names)")
    p.add_argument("--wait", type=float, default=0.0, metavar="S",
                   help="wait up to S seconds for the database to answer (default 0)")


def _roles(args: argparse.Namespace) -> Roles:
    try:
        return Roles.with_prefix(args.role_prefix)
    except ValueError as exc:
        raise CliError(str(exc)) from None


def _database_name(args: argparse.Namespace, settings: Settings) -> str:
    if args.database:
        return str(args.database)
    path = urlsplit(settings.database_url or "").path.lstrip("/")
    if not path:
        raise CliError("--print-grants: name the database with --database"
                       " (OFP_DATABASE_URL names none)")
    return unquote(path)


async def _connect_waiting(dsn: str, wait_s: float) -> asyncpg.Connection:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            conn = await connect(dsn)
            await conn.fetchval("SELECT 1")
            return conn
        except CliError:
            if time.monotonic() >= deadline:
                raise
        except asyncpg.PostgresError as exc:  # starting up (57P03), too many connections
            if not is_transient(exc) or time.monotonic() >= deadline:
                raise
        print("ofp: the database does not answer yet; waiting", file=sys.stderr)
        await asyncio.sleep(WAIT_STEP_S)


async def run(args: argparse.Namespace, settings: Settings) -> int:
    roles = _roles(args)
    if args.print_grants:
        print(setup_sql(roles, _database_name(args, settings)), end="")
        return EXIT_OK
    conn = await _connect_waiting(resolve_dsn(settings, announce=True), args.wait)
    try:
        applied = await migrate(conn)
        granted = await apply_grants(conn, roles)
    finally:
        await conn.close()
    if applied:
        for name in applied:
            print(f"applied {name}")
    else:
        print("schema up to date")
    if granted:
        print(f"grants applied to {roles.projector}, {roles.server}")
    return EXIT_OK
