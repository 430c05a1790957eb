"""Retrying what a retry can outlive: one backoff, and the store's retry loop.

The projector never skips: a transient failure (a database or bus error that
a retry can outlive) is retried from the same place, with capped, jittered
exponential backoff; anything else surfaces.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar, cast

import asyncpg

from ofp.logs import get_logger
from ofp.store.db import is_transient

MAX_BACKOFF_S = 5.0
_log = get_logger("ofp.projector")
T = TypeVar("T")


def backoff_s(attempt: int, *, base_s: float = 0.05, cap_s: float = MAX_BACKOFF_S) -> float:
    """`base_s * 2**attempt`, capped at `cap_s`, with jitter (half to all of it).

    The jitter keeps replicas that failed together from retrying together.
    """
    return float(min(cap_s, base_s * 2**attempt) * (0.5 + random.random() / 2))


class StoreRetrier:
    """Runs store work on a pooled connection, retrying transient failures.

    `on_retry` is told of every retry (the projector counts them).
    """

    def __init__(self, pool: asyncpg.Pool, *, on_retry: Callable[[], None] | None = None) -> None:
        self.pool = pool
        self._on_retry = on_retry

    async def run(
        self,
        what: str,
        work: Callable[[asyncpg.Connection], Awaitable[T]],
        *,
        give_up_after_s: float | None = None,
    ) -> T:
        """`work(conn)`, retried with backoff while it fails transiently.

        Without `give_up_after_s` it retries for as long as it takes (a batch is
        never skipped); with it, the last transient error is raised once the
        time is up (for work that has a fallback, such as releasing leases that
        expire anyway).
        """
        attempt = 0
        deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
        while True:
            try:
                async with self.pool.acquire() as conn:
                    try:
                        return await work(cast(asyncpg.Connection, conn))
                    except Exception as exc:
                        if is_transient(exc):
                            # Never hand a connection that failed mid-work back to the pool.
                            conn.terminate()
                        raise
            except Exception as exc:
                if not is_transient(exc):
                    raise
                if deadline is not None and time.monotonic() >= deadline:
                    raise
                attempt += 1
                if self._on_retry is not None:
                    self._on_retry()
                delay = backoff_s(attempt)
                _log.warning("store_retrying", operation=what, attempt=attempt,
                             error=type(exc).__name__, delay_ms=round(delay * 1000))
                await asyncio.sleep(delay)
