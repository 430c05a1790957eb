"""Test base: a real PostgreSQL for every integration test, never a mock.

`OFP_TEST_DATABASE_URL` names a running server to use; otherwise one embedded
PostgreSQL (pip wheel) is started for the session. Each test gets a database
of its own, created fresh and dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path

import asyncpg
import pytest
from hypothesis import settings

from ofp.store.db import create_pool, embedded_dsn, migrate
from tests.support.db import with_database

# CI explores the same examples every run (a failure is reproducible, never a
# coin toss); `HYPOTHESIS_PROFILE=explore` searches afresh.
# No deadline: a loaded 2-core CI machine makes wall-clock limits flaky, not informative.
settings.register_profile("ci", derandomize=True, database=None, deadline=None)
settings.register_profile("explore")
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(scope="session")
def pg_server_dsn() -> Iterator[str]:
    configured = os.environ.get("OFP_TEST_DATABASE_URL")
    if configured:
        yield configured
        return
    # Outside pytest's rotating tmp dirs: a concurrent session must never
    # clean up the data directory of a server that is still running.
    root = Path(tempfile.mkdtemp(prefix="ofp-test-pg-"))
    yield embedded_dsn(root / "data")


@pytest.fixture
async def fresh_dsn(pg_server_dsn: str) -> AsyncIterator[str]:
    name = f"ofp_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    yield with_database(pg_server_dsn, name)
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


@pytest.fixture
async def pool(fresh_dsn: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(fresh_dsn, min_size=1, max_size=8)
    async with p.acquire() as conn:
        await migrate(conn)
    yield p
    await p.close()


@pytest.fixture
def bus_root(tmp_path: Path) -> Path:
    root = tmp_path / "bus"
    root.mkdir()
    return root


@pytest.fixture
async def pool_factory(pg_server_dsn: str) -> AsyncIterator[Callable[[], Awaitable[asyncpg.Pool]]]:
    """Make as many fresh, migrated databases as a test needs (all dropped afterwards)."""
    made: list[tuple[str, asyncpg.Pool]] = []

    async def make() -> asyncpg.Pool:
        name = f"ofp_t_{uuid.uuid4().hex[:12]}"
        admin = await asyncpg.connect(pg_server_dsn)
        try:
            await admin.execute(f'CREATE DATABASE "{name}"')
        finally:
            await admin.close()
        p = await create_pool(with_database(pg_server_dsn, name), min_size=1, max_size=8)
        async with p.acquire() as conn:
            await migrate(conn)
        made.append((name, p))
        return p

    yield make
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        for name, p in made:
            await p.close()
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()
