"""The server refuses a database whose schema is not this build's.

A database that does not answer leaves the server up and NOT_SERVING until it
does (main.py); one that answers with another schema version stops it with
one line and exit code 3 (`ofp.store.schema`): serving from tables the code
does not know gives wrong answers, not errors. The first check runs before the
server starts; when the database is not reachable then, the guard checks again
every few seconds until it is, and stops the server on a mismatch.
"""

from __future__ import annotations

import asyncio
import contextlib

import asyncpg

from ofp.config import Settings
from ofp.logs import get_logger
from ofp.store.db import create_pool, embedded_dsn
from ofp.store.schema import SchemaMismatchError, check_schema

_log = get_logger("ofp.server")
RECHECK_INTERVAL_S = 2.0
CHECK_TIMEOUT_S = 5.0


class SchemaGuard:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self.pool = pool
        self.refusal: SchemaMismatchError | None = None
        self._task: asyncio.Task[None] | None = None

    async def check_now(self) -> bool:
        """True once the schema was found to match; False when the database did not
        answer (or refused this role: the log names why); SchemaMismatchError otherwise."""
        try:
            async with asyncio.timeout(CHECK_TIMEOUT_S):
                async with self.pool.acquire() as conn:
                    version = await check_schema(conn)
        except SchemaMismatchError:
            raise
        except Exception as exc:  # unreachable, wrong DSN or no grants: NOT_SERVING, not fatal
            _log.warning("schema_check_deferred", error=type(exc).__name__)
            return False
        _log.info("schema_checked", version=version)
        return True

    def watch(self, stop: asyncio.Event) -> None:
        """Keep checking in the background; on a mismatch record it and set `stop`."""
        self._task = asyncio.create_task(self._watch(stop), name="schema-guard")

    async def _watch(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await asyncio.sleep(RECHECK_INTERVAL_S)
            try:
                if await self.check_now():
                    return
            except SchemaMismatchError as exc:
                _log.error("schema_mismatch", error=str(exc))
                self.refusal = exc
                stop.set()
                return

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def raise_refusal(self) -> None:
        if self.refusal is not None:
            raise self.refusal


async def check_before_workers(settings: Settings) -> None:
    """The supervisor's check before it starts workers (each worker checks again)."""
    dsn = settings.database_url or embedded_dsn(settings.embedded_data_dir)
    pool = await create_pool(dsn, min_size=0, max_size=1)
    try:
        await SchemaGuard(pool).check_now()
    finally:
        await pool.close()
