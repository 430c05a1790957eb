"""The bench PostgreSQL: `OFP_BENCH_DATABASE_URL`, or an embedded server of our own.

Each scenario gets a database of its own, created fresh and dropped after.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ofp.store.db import embedded_dsn

ENV_DSN = "OFP_BENCH_DATABASE_URL"


def with_database(dsn: str, name: str) -> str:
    """The same server, another database (socket and TCP DSNs alike)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


class BenchPostgres:
    def __init__(self, admin_dsn: str, *, embedded: bool) -> None:
        self.admin_dsn = admin_dsn
        self.embedded = embedded

    @classmethod
    def start(cls, work_dir: Path) -> BenchPostgres:
        configured = os.environ.get(ENV_DSN)
        if configured:
            return cls(configured, embedded=False)
        return cls(embedded_dsn(work_dir / "pg"), embedded=True)

    async def create(self, label: str) -> tuple[str, str]:
        """A fresh empty database: (name, dsn)."""
        name = f"ofp_bench_{label}_{uuid.uuid4().hex[:8]}"
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        return name, with_database(self.admin_dsn, name)

    async def drop(self, name: str) -> None:
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    async def describe(self) -> str:
        """Server version and the durability settings the figures depend on."""
        conn = await asyncpg.connect(self.admin_dsn)
        try:
            version = await conn.fetchval("SHOW server_version")
            fsync = await conn.fetchval("SHOW fsync")
            sync_commit = await conn.fetchval("SHOW synchronous_commit")
            shared = await conn.fetchval("SHOW shared_buffers")
        finally:
            await conn.close()
        where = "embedded (pip wheel)" if self.embedded else f"${ENV_DSN}"
        return (f"PostgreSQL {version}, {where}, fsync={fsync}, "
                f"synchronous_commit={sync_commit}, shared_buffers={shared}")
