"""Read-your-basis (`min_basis`): the decision service asks for an answer that
includes the event it decides on, by its bus offset (docs/contract.md 4.1)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest

from ofp_projector.projector import Projector
from tests.support.harness import default_policy, get_features, project_once, running_server
from tests.support.harness import settings as make_settings
from tests.support.rich_errors import rich_error
from tests.support.streams import BASE_US, HOUR_US, TOPIC, envelope, generate, keys_request

pytestmark = pytest.mark.integration
AS_OF = BASE_US + 9 * 24 * HOUR_US


@contextlib.asynccontextmanager
async def live_projector(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[Projector]:
    # Polls the bus every 200 ms: an appended event waits for it, so a request
    # for its offset has to wait for the commit.
    projector = Projector(make_settings(bus_root, poll_interval_ms=200), pool, default_policy())
    task = asyncio.create_task(projector.run())
    try:
        yield projector
    finally:
        projector.stop()
        await asyncio.wait_for(task, 30)


def request(min_basis: list[tuple[int, int]], key: str = "1") -> dict[str, Any]:
    doc = keys_request("A", [key], AS_OF)
    doc["min_basis"] = [{"partition": p, "offset": str(o)} for p, o in min_basis]
    return doc


def append(bus_root: Path, doc: dict[str, Any]) -> None:
    with open(bus_root / TOPIC / "partition=0.jsonl", "a", encoding="utf-8") as f:
        f.write(json.dumps(doc) + "\n")


def lines(bus_root: Path, partition: int = 0) -> int:
    return len((bus_root / TOPIC / f"partition={partition}.jsonl").read_text().splitlines())


async def test_an_answer_waits_for_the_event_just_appended_and_counts_it(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(96, n_events=30, n_keys=2, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root, max_basis_wait_ms=5000) as (srv, stub), \
            live_projector(pool, bus_root):
        before = await get_features(stub, keys_request("A", ["1"], AS_OF))
        count = before["snapshot"]["features"]["flow_id:1"]["core_features"]["event_count_7d"]
        offset = lines(bus_root)  # the appended event's offset; exclusive-next is + 1
        line = envelope("e" * 32, AS_OF - HOUR_US, "A", {"flow_id": 1, "amount": "2.5"})
        append(bus_root, line)
        t0 = time.perf_counter()
        answer = await get_features(stub, request([(0, offset + 1)]))
        waited = time.perf_counter() - t0
        basis = answer["snapshot"]["eb_offset_basis"]["offsets"]
        assert int(basis[0]["offset"]) >= offset + 1
        after = answer["snapshot"]["features"]["flow_id:1"]["core_features"]["event_count_7d"]
        assert after == count + 1
        # It waited for the commit (the projector polls every 200 ms), no longer.
        assert waited < 5
        metrics = srv.service.metrics.registry
        assert metrics.get_sample_value("ofp_basis_waits_total", {"outcome": "met"}) == 1.0


async def test_a_basis_that_never_comes_is_unavailable_with_the_current_basis(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(97, n_events=20, n_keys=1, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    have = lines(bus_root)
    async with running_server(pool, bus_root, max_basis_wait_ms=300) as (srv, stub):
        t0 = time.perf_counter()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await get_features(stub, request([(0, have + 10)]))
        elapsed = time.perf_counter() - t0
        err = rich_error(refused.value)
        assert err.grpc_code == grpc.StatusCode.UNAVAILABLE
        assert err.code == "UNAVAILABLE" and err.error.retryable
        assert [(b.partition, b.offset) for b in err.error.current_basis] == [(0, str(have))]
        assert f"asked {have + 10}" in err.error.detail
        assert 0.3 <= elapsed < 3
        # A partition the stream does not have never comes either.
        with pytest.raises(grpc.aio.AioRpcError):
            await get_features(stub, request([(7, 1)]))
        metrics = srv.service.metrics.registry
        assert metrics.get_sample_value("ofp_basis_waits_total", {"outcome": "timeout"}) == 2.0
        # One already reached answers at once.
        answer = await get_features(stub, request([(0, have)]))
        assert answer["status"] == "OK"


async def test_many_waiters_cost_one_listener_and_one_read_per_wake_up(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(98, n_events=20, n_keys=1, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    have = lines(bus_root)
    async with running_server(pool, bus_root, max_basis_wait_ms=5000) as (srv, stub), \
            live_projector(pool, bus_root):
        waiting = [asyncio.create_task(get_features(stub, request([(0, have + 1)])))
                   for _ in range(50)]
        await asyncio.sleep(0.3)
        assert not any(t.done() for t in waiting)
        listeners = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
            " AND query LIKE 'LISTEN%'")
        assert listeners == 1
        watcher = srv.service._watchers[next(iter(srv.service._watchers))]
        reads_before = watcher.reads
        append(bus_root, envelope("f" * 32, AS_OF - HOUR_US, "A", {"flow_id": 1, "amount": "1"}))
        answers = await asyncio.gather(*waiting)
        assert all(a["status"] == "OK" for a in answers)
        # 50 waiters, a handful of shared reads (one per wake-up or poll), never 50 a poll.
        assert watcher.reads - reads_before < 50
