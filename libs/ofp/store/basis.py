"""Read-your-basis: wait, shared by every waiting request, for checkpoints to reach
given offsets (docs/contract.md 4.1, `min_basis`).

One watcher per server process holds the stream's latest exclusive-next
checkpoints. The projector sends `NOTIFY ofp_checkpoints, '<stream>'` from each
batch's transaction (delivered at commit); the watcher LISTENs on one dedicated
connection and, on a notification, reads the checkpoints once and wakes every
waiter it satisfies. While anyone waits it also re-reads every POLL_S, so a
lost notification (a reconnect) costs a poll interval, never an answer. However
many requests wait, the database sees one listener and one read per commit.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg

from ofp.logs import get_logger

CHANNEL = "ofp_checkpoints"
POLL_S = 0.1

_log = get_logger("ofp.server")


@dataclass(slots=True)
class _Waiter:
    want: Sequence[tuple[int, int]]
    future: asyncio.Future[None]


def reached(current: dict[int, int], want: Sequence[tuple[int, int]]) -> bool:
    return all(current.get(p, -1) >= o for p, o in want)


class BasisWatcher:
    def __init__(self, pool: asyncpg.Pool, stream: str) -> None:
        self.pool = pool
        self.stream = stream
        self.current: dict[int, int] = {}
        self.reads = 0  # checkpoint reads made (tests: one per wake-up, not per waiter)
        self._waiters: list[_Waiter] = []
        self._listener: Any = None  # a pool connection held for LISTEN
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()

    async def wait(self, want: Sequence[tuple[int, int]], timeout_s: float) -> bool:
        """True once the checkpoints reach `want` (at once if they do now); False after
        `timeout_s`. `self.current` is the basis when it returns."""
        if reached(self.current, want):
            return True
        self._ensure_running()
        waiter = _Waiter(want, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._wake.set()  # read now: `current` may be older than the request
        try:
            await asyncio.wait_for(asyncio.shield(waiter.future), timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            with contextlib.suppress(ValueError):
                self._waiters.remove(waiter)

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run(), name="basis")

    async def _listen(self) -> None:
        """LISTEN on one connection taken from the pool and kept (released, asyncpg
        would drop its listeners)."""
        if self._listener is not None and not self._listener.is_closed():
            return
        try:
            conn = await self.pool.acquire(timeout=5)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            _log.warning("basis_listen_failed", error=type(exc).__name__)
            return  # the poll still serves the waiters; the next round tries again
        try:
            await conn.add_listener(CHANNEL, self._notified)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            await self.pool.release(conn)
            _log.warning("basis_listen_failed", error=type(exc).__name__)
            return
        self._listener = conn

    def _notified(self, _conn: Any, _pid: int, _channel: str, payload: object) -> None:
        if payload == self.stream:
            self._wake.set()

    async def _run(self) -> None:
        while self._waiters:
            await self._listen()
            self._wake.clear()
            try:
                rows = await self.pool.fetch(
                    "SELECT partition, next_offset FROM checkpoints WHERE stream = $1",
                    self.stream)
                self.reads += 1
                self.current = {int(r[0]): int(r[1]) for r in rows}
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
                _log.warning("basis_read_failed", error=type(exc).__name__)
            for w in list(self._waiters):
                if not w.future.done() and reached(self.current, w.want):
                    w.future.set_result(None)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), POLL_S)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.remove_listener(CHANNEL, self._notified)
                await self.pool.release(self._listener)
            self._listener = None
