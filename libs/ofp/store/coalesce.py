"""Snapshot reads that wait together are answered by one statement.

A snapshot statement's cost in PostgreSQL is mostly fixed (starting and
ending a plan of ~80 nodes), and so is the client's per-call work; each extra
key adds little (docs/performance.md: one key ~0.2-0.4 ms of PostgreSQL CPU,
eight keys ~0.4-0.6 ms). So at most `in_flight` statements run at once, and
the requests that arrive while they run are read together by the next one.
An idle server sends each request's statement at once: nothing waits for a
batch to fill. Under load the batches grow by themselves.

Every request still gets one consistent snapshot, taken after it arrived,
and its own cells and windows (see `read_snapshots`). A request whose caller
gave up (deadline, cancellation) before its statement was sent is dropped
from the batch; once sent, the others' answers do not depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar, cast

import asyncpg

from ofp.model import Pins, ReadProbes, SnapshotRow

from .reads import read_snapshots

T = TypeVar("T")

# One statement carries at most this many requests and cells (a request
# larger than the cell bound goes alone): the statement's parameters and the
# answer stay a few hundred kilobytes at most.
MAX_REQUESTS = 64
MAX_CELLS = 2_000


@dataclass(slots=True)
class _Waiting:
    stream: str
    pins: Pins
    probes: ReadProbes
    future: asyncio.Future[SnapshotRow | None]
    revision: tuple[str, str] | None = None


class CoalescingReader:
    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        in_flight: int,
        on_statement: Callable[[int], None] | None = None,
        on_timing: Callable[[float, float], None] | None = None,
    ) -> None:
        """`on_statement(n)` is told how many requests each statement answers;
        `on_timing(acquire_s, statement_s)` how long each waited for a pooled
        connection and then ran."""
        if in_flight < 1:
            raise ValueError("in_flight must be >= 1")
        self._pool = pool
        self._in_flight = in_flight
        self._running = 0
        self._waiting: deque[_Waiting] = deque()
        self._tasks: set[asyncio.Task[None]] = set()
        self._on_statement = on_statement
        self._on_timing = on_timing

    async def read(self, *, stream: str, pins: Pins, probes: ReadProbes,
                   revision: tuple[str, str] | None = None) -> SnapshotRow | None:
        """The request's snapshot row (None: no such revision, or none active), possibly
        read with others planned with the same `revision` (None: the active one)."""
        if not self._waiting and self._running < self._in_flight:
            # Nothing to share a statement with and a slot free: read in the
            # caller's own task (no future, no task, no hand-over: the common
            # case below saturation). Requests arriving meanwhile queue and
            # are coalesced when a slot frees.
            self._running += 1
            try:
                if self._on_statement is not None:
                    self._on_statement(1)
                rows = await self._statement(stream=stream, reads=[(pins, probes)],
                                             revision=revision)
            finally:
                self._running -= 1
                self._start()
            return None if rows is None else rows[0]
        future: asyncio.Future[SnapshotRow | None] = asyncio.get_running_loop().create_future()
        self._waiting.append(_Waiting(stream, pins, probes, future, revision))
        self._start()
        return await future

    def _start(self) -> None:
        while self._waiting and self._running < self._in_flight:
            batch = self._take()
            if not batch:
                continue
            self._running += 1
            task = asyncio.get_running_loop().create_task(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _take(self) -> list[_Waiting]:
        """The oldest live request and those after it that fit the same statement."""
        batch: list[_Waiting] = []
        cells = 0
        skipped: list[_Waiting] = []
        while self._waiting and len(batch) < MAX_REQUESTS:
            w = self._waiting.popleft()
            if w.future.done():  # its caller gave up while it waited
                continue
            n = len(w.probes.cells)
            if batch and (w.stream != batch[0].stream or w.revision != batch[0].revision
                          or cells + n > MAX_CELLS):
                # Another stream or revision (a rollout under way) or too big: the next
                # statement.
                skipped.append(w)
                if cells + n > MAX_CELLS:
                    break
                continue
            batch.append(w)
            cells += n
        self._waiting.extendleft(reversed(skipped))
        return batch

    async def _run(self, batch: list[_Waiting]) -> None:
        try:
            live = [w for w in batch if not w.future.done()]
            if not live:
                return
            if self._on_statement is not None:
                self._on_statement(len(live))
            try:
                rows = await _unless_abandoned(live, self._statement(
                    stream=live[0].stream,
                    reads=[(w.pins, w.probes) for w in live],
                    revision=live[0].revision,
                ))
            except asyncio.CancelledError:
                for w in live:
                    w.future.cancel()
                raise
            except Exception as exc:
                for w in live:
                    if not w.future.done():
                        w.future.set_exception(exc)
                return
            for i, w in enumerate(live):
                if not w.future.done():
                    w.future.set_result(None if rows is None else rows[i])
        finally:
            self._running -= 1
            self._start()

    async def _statement(self, *, stream: str, reads: list[tuple[Pins, ReadProbes]],
                         revision: tuple[str, str] | None) -> list[SnapshotRow] | None:
        if self._on_timing is None:
            return await read_snapshots(self._pool, stream=stream, reads=reads,
                                        revision=revision)
        t0 = time.perf_counter()
        async with self._pool.acquire() as conn:
            t1 = time.perf_counter()
            rows = await read_snapshots(cast(asyncpg.Connection, conn), stream=stream,
                                        reads=reads, revision=revision)
        self._on_timing(t1 - t0, time.perf_counter() - t1)
        return rows

    async def close(self) -> None:
        """Cancel the statements still running (server shutdown)."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def _unless_abandoned(live: list[_Waiting], work: Awaitable[T]) -> T:
    """`work`, cancelled once every request it answers has given up (deadline,
    caller gone). A statement lost on the network (a partition, a connection
    whose state a firewall dropped) is never answered: left to run, it would hold
    one of the `in_flight` slots for the pool's command timeout (30 s), and with
    every slot held no read at all would run after the network came back
    (docs/decisions.md, "A statement lost on the network")."""
    task = asyncio.ensure_future(work)
    remaining = len(live)

    def gone(_: object) -> None:
        nonlocal remaining
        remaining -= 1
        if remaining == 0:
            task.cancel()

    for w in live:
        w.future.add_done_callback(gone)
    try:
        return await task
    finally:
        for w in live:
            w.future.remove_done_callback(gone)
