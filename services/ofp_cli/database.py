"""Which database a command talks to, and throwaway databases on the same server.

The DSN is `OFP_DATABASE_URL` when set, otherwise the embedded PostgreSQL under
`settings.embedded_data_dir`. It is a secret: only `mask_dsn` of it is printed.
"""

from __future__ import annotations

import re
import sys
import uuid
import warnings
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ofp.config import Settings, mask_dsn
from ofp.store.db import embedded_dsn

from .errors import CliError

_DB_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def resolve_dsn(settings: Settings, *, announce: bool = False) -> str:
    if settings.database_url:
        return settings.database_url
    if announce:
        print(f"ofp: using the embedded PostgreSQL in {settings.embedded_data_dir}",
              file=sys.stderr)
    with warnings.catch_warnings():
        # platformdirs warns about XDG_RUNTIME_DIR in containers; not actionable here.
        warnings.simplefilter("ignore")
        return embedded_dsn(settings.embedded_data_dir)


def existing_dsn(settings: Settings) -> str:
    """The DSN of a database that exists already: `OFP_DATABASE_URL`, or the embedded
    PostgreSQL when its data directory was initialised (by `ofp dev` / `make run`).
    For `ofp status` and `ofp quarantine`: they never create a database."""
    if settings.database_url:
        return settings.database_url
    data = Path(settings.embedded_data_dir)
    if not (data / "PG_VERSION").is_file():
        raise CliError(
            "no database is configured: OFP_DATABASE_URL is unset and there is no embedded"
            f" PostgreSQL in {data} (`ofp dev` creates one); nothing was created")
    return resolve_dsn(settings)


async def connect(dsn: str) -> asyncpg.Connection:
    """A connection, or a CliError that names the (masked) database it could not reach."""
    try:
        return await asyncpg.connect(dsn, timeout=10)
    except (OSError, TimeoutError, asyncpg.InterfaceError) as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise CliError(f"cannot connect to {mask_dsn(dsn)}: {detail}") from None


def with_database(dsn: str, name: str) -> str:
    """The same server and credentials, another database (socket and TCP DSNs)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


async def create_database(dsn: str, name: str) -> str:
    """CREATE DATABASE `name` on the server of `dsn`; returns the new database's DSN."""
    if not _DB_NAME.match(name):
        raise ValueError(f"not a safe database name: {name!r}")
    admin = await connect(dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    return with_database(dsn, name)


async def drop_database(dsn: str, name: str) -> None:
    if not _DB_NAME.match(name):
        raise ValueError(f"not a safe database name: {name!r}")
    admin = await connect(dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@asynccontextmanager
async def temporary_database(dsn: str, prefix: str) -> AsyncIterator[str]:
    """A fresh database on the server of `dsn`, dropped on exit whatever happens."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    target = await create_database(dsn, name)
    try:
        yield target
    finally:
        await drop_database(dsn, name)
