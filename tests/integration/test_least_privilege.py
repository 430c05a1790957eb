"""The workloads under least-privileged database roles (docs/operations.md, "Database roles").

`ofp migrate --print-grants` creates a migrator that owns the schema, a projector
role that may write state and checkpoints but not change the schema, and a
server role that may only read (and add to the snapshot log). Here a database
is set up exactly so: `ofp migrate` runs as the migrator, the real projector
process as the projector role with OFP_AUTO_MIGRATE=false, the server as the
server role; its answers must equal those of a database where one superuser
did everything, and every write outside a role's job must be refused.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import pytest

from ofp.store.db import create_pool, migrate
from ofp.store.roles import Roles, setup_sql
from ofp.store.schema import check_schema
from tests.support.cli import cli_env, process_env, run_ofp
from tests.support.db import with_database
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import HOUR_US, Stream, generate, keys_request

pytestmark = pytest.mark.integration

STATE_TABLES = ("checkpoints", "feature_tiles", "event_dedupe", "quarantine", "policies")


def with_user(dsn: str, user: str) -> str:
    """The same server and database as another role (trust authentication in tests)."""
    parts = urlsplit(dsn)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, f"{user}@{host}", parts.path, parts.query, parts.fragment))


@dataclass(frozen=True)
class Deployment:
    roles: Roles
    dsn: dict[str, str]  # role -> DSN
    bus_root: Path
    stream: Stream
    reference: asyncpg.Pool  # the same stream projected by a superuser


async def _admin(dsn: str, *statements: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        for statement in statements:
            await conn.execute(statement)
    finally:
        await conn.close()


@pytest.fixture(scope="module")
async def deployment(
    pg_server_dsn: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Deployment]:
    tag = uuid.uuid4().hex[:10]
    roles = Roles.with_prefix(f"ofp_lp_{tag}")
    names = {"owner": f"ofp_t_lp_{tag}", "reference": f"ofp_t_lpref_{tag}"}
    await _admin(pg_server_dsn, *(f'CREATE DATABASE "{n}"' for n in names.values()))
    db = with_database(pg_server_dsn, names["owner"])
    reference: asyncpg.Pool | None = None
    try:
        # What a database administrator does once, then a login for each role.
        await _admin(db, setup_sql(roles, names["owner"]),
                     *(f"ALTER ROLE {r} LOGIN" for r in roles.all()))
        dsn = {r: with_user(db, r) for r in roles.all()}
        tmp = tmp_path_factory.mktemp("least-privilege")
        bus_root = tmp / "bus"
        stream = generate(71, n_events=240, n_keys=4, n_partitions=2)
        stream.write(bus_root)

        # The migration Job: `ofp migrate` as the schema's owner.
        code, out, err = await run_ofp("migrate", "--role-prefix", roles.migrator[:-9],
                                       env=cli_env(dsn[roles.migrator], bus_root), cwd=tmp)
        assert code == 0, err
        assert "applied 0001_create_schema" in out
        assert f"grants applied to {roles.projector}, {roles.server}" in out

        # The projector's real start-up path under its own role, migrations off.
        env = process_env(cli_env(dsn[roles.projector], bus_root, OFP_AUTO_MIGRATE="false"))
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "ofp-projector"), "--once", env=env, cwd=tmp,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out_b, err_b = await asyncio.wait_for(proc.communicate(), timeout=120)
        assert proc.returncode == 0, err_b.decode()[-2000:]
        assert b'"event": "projector_finished"' in out_b

        reference = await create_pool(with_database(pg_server_dsn, names["reference"]))
        async with reference.acquire() as conn:
            await migrate(conn)
        await project_once(reference, bus_root)
        yield Deployment(roles, dsn, bus_root, stream, reference)
    finally:
        if reference is not None:
            await reference.close()
        await _admin(pg_server_dsn,
                     *(f'DROP DATABASE IF EXISTS "{n}" WITH (FORCE)' for n in names.values()),
                     *(f"DROP ROLE IF EXISTS {r}" for r in roles.all()))


async def _connect(d: Deployment, role: str) -> asyncpg.Connection:
    return await asyncpg.connect(d.dsn[role])


def _requests(stream: Stream) -> list[dict[str, Any]]:
    ts = sorted(e.ts_us for e in stream.truth)
    return [keys_request(run, [*stream.keys, "absent"], as_of)
            for run in ("A", "B") for as_of in (ts[len(ts) // 2], ts[-1] + HOUR_US)]


async def _answers(pool: asyncpg.Pool, d: Deployment) -> list[dict[str, Any]]:
    async with running_server(pool, d.bus_root) as (srv, stub):
        assert srv.serving
        answers = []
        for req in _requests(d.stream):
            snap = (await get_features(stub, req))["snapshot"]
            snap.pop("created_at_utc")
            answers.append(snap)
        return answers


async def test_server_role_answers_what_a_superuser_deployment_answers(
    deployment: Deployment,
) -> None:
    d = deployment
    server_pool = await create_pool(d.dsn[d.roles.server], max_size=4, generic_plans=True)
    try:
        answers = await _answers(server_pool, d)
    finally:
        await server_pool.close()
    reference = await _answers(d.reference, d)

    assert answers == reference
    counts = [g["event_count_7d"] for a in answers for groups in a["features"].values()
              for g in groups.values()]
    assert sum(counts) > 0, answers  # real state was read, not only empty answers


@pytest.mark.parametrize("table", STATE_TABLES)
async def test_server_role_is_refused_when_it_writes_state(
    deployment: Deployment, table: str
) -> None:
    conn = await _connect(deployment, deployment.roles.server)
    try:
        assert await conn.fetchval(f"SELECT count(*) >= 0 FROM {table}")  # it may read
        column = await _column(conn, table)
        for statement in (f"DELETE FROM {table}", f"UPDATE {table} SET {column} = {column}",
                          f"INSERT INTO {table} DEFAULT VALUES", f"TRUNCATE {table}"):
            with pytest.raises(asyncpg.InsufficientPrivilegeError, match="permission denied"):
                await conn.execute(statement)
    finally:
        await conn.close()


async def _column(conn: asyncpg.Connection, table: str) -> str:
    name: str = await conn.fetchval(
        "SELECT attname FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0"
        " AND NOT attisdropped AND attidentity = '' AND attgenerated = '' ORDER BY attnum"
        " LIMIT 1", table)
    return name


@pytest.mark.parametrize("role", ["projector", "server"])
@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE intruder (x int)",
        "ALTER TABLE checkpoints ADD COLUMN intruder int",
        "DROP TABLE quarantine",
        "CREATE INDEX intruder ON checkpoints (stream)",
        "INSERT INTO schema_migrations (version, name) VALUES (9999, 'intruder')",
        "DELETE FROM schema_migrations",
    ],
)
async def test_workload_roles_are_refused_when_they_change_the_schema(
    deployment: Deployment, role: str, statement: str
) -> None:
    conn = await _connect(deployment, getattr(deployment.roles, role))
    try:
        with pytest.raises(asyncpg.InsufficientPrivilegeError):
            await conn.execute(statement)
        assert await check_schema(conn) > 0  # and the schema is still this build's
    finally:
        await conn.close()


async def test_projector_role_may_write_state_and_migrate_is_a_no_op_for_it(
    deployment: Deployment,
) -> None:
    conn = await _connect(deployment, deployment.roles.projector)
    try:
        async with conn.transaction():
            await conn.execute("DELETE FROM quarantine WHERE false")
            await conn.execute("UPDATE checkpoints SET next_offset = next_offset WHERE false")
        # OFP_AUTO_MIGRATE on, schema current: no DDL is attempted, nothing refused.
        assert await migrate(conn) == []
    finally:
        await conn.close()


async def test_server_role_may_add_to_the_snapshot_log_only(deployment: Deployment) -> None:
    conn = await _connect(deployment, deployment.roles.server)
    try:
        assert await conn.fetchval("SELECT to_regclass('snapshot_log') IS NOT NULL")
        assert await conn.fetchval("SELECT has_table_privilege('snapshot_log', 'INSERT')")
        assert not await conn.fetchval("SELECT has_table_privilege('snapshot_log', 'DELETE')")
        assert not await conn.fetchval("SELECT has_table_privilege('checkpoints', 'INSERT')")
    finally:
        await conn.close()


@pytest.mark.parametrize(
    ("role", "function", "allowed"),
    [
        ("projector", "ofp_create_time_partitions(bigint)", True),
        ("projector", "ofp_drop_time_partitions()", True),
        ("server", "ofp_drop_time_partitions()", False),
        ("server", "snapshot_log_maintain(date, integer, integer)", True),
        ("projector", "snapshot_log_maintain(date, integer, integer)", False),
    ],
)
async def test_partition_upkeep_functions_are_callable_by_their_workload_only(
    deployment: Deployment, role: str, function: str, allowed: bool
) -> None:
    conn = await _connect(deployment, getattr(deployment.roles, role))
    try:
        assert await conn.fetchval("SELECT to_regprocedure($1) IS NOT NULL", function), function
        may = await conn.fetchval("SELECT has_function_privilege($1, 'EXECUTE')", function)
        assert may is allowed
    finally:
        await conn.close()
