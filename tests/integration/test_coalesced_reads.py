"""Requests that wait together are read by one statement, and each still gets
exactly its own answer (ofp.store.coalesce)."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, NamedTuple

import asyncpg
import grpc
import pytest

from ofp.contracts.request import validate_request_json
from ofp.contracts.timefmt import parse_micros
from ofp.model import Pins, ReadProbes
from ofp.snapshot import plan_read
from ofp.store.coalesce import CoalescingReader
from ofp.store.reads import active_groups, read_snapshot
from tests.support.harness import default_policy, get_features, project_once, running_server
from tests.support.streams import (
    BASE_US,
    HOUR_US,
    TOPIC,
    brute_force,
    generate,
    interesting_as_of,
    keys_request,
    pins,
)


async def _answer(stub: Any, doc: dict[str, Any]) -> tuple[str, Any]:
    """("OK", snapshot) or (gRPC status name, None)."""
    try:
        resp = await get_features(stub, doc)
    except grpc.aio.AioRpcError as exc:
        return exc.code().name, None
    return "OK", resp["snapshot"]


async def test_concurrent_requests_read_together_get_their_own_exact_answers(
    pool: asyncpg.Pool, bus_root: Path, fresh_dsn: str
) -> None:
    stream = generate(23, n_events=300, n_keys=5, n_partitions=2)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    rng = random.Random(7)
    keys = [*stream.keys, "404"]
    docs = []
    for _ in range(48):
        # Run "C" was never seen: NOT_FOUND, next to OK answers in the same statement.
        run = rng.choice(["A", "B", "B", "A", "C"])
        truth = [e for e in stream.truth if e.run == (run if run != "C" else "A")]
        as_of = rng.choice(interesting_as_of(truth, rng, n=3))
        docs.append(keys_request(run, rng.sample(keys, rng.randint(1, 4)), as_of))

    # One statement at a time: every request that arrives meanwhile waits for the next.
    async with running_server(pool, bus_root, db_reads_in_flight=1) as (srv, stub):
        alone = [await _answer(stub, d) for d in docs]
        registry = srv.service.metrics.registry
        assert registry.get_sample_value("ofp_snapshot_statement_requests_count") == len(docs)
        # The first concurrent request's statement is held on a lock until the
        # others have arrived and wait behind it.
        async with _tiles_locked(fresh_dsn) as (_, tx):
            round_2 = asyncio.gather(*(_answer(stub, d) for d in docs))
            await _wait_blocked(pool, 1)
            await asyncio.sleep(0.5)
            await tx.commit()
            together = await round_2
        statements = registry.get_sample_value("ofp_snapshot_statement_requests_count")
        answered = registry.get_sample_value("ofp_snapshot_statement_requests_sum")

    assert statements is not None and answered is not None
    # Every request was read (NOT_FOUND is decided from the statement's answer),
    # the 48 concurrent ones by the held statement and one or two more.
    assert answered == 2 * len(docs)
    assert statements - len(docs) <= 3
    codes = {code for code, _ in together}
    assert codes == {"OK", "NOT_FOUND"}
    for doc, (code, snap), (code_alone, snap_alone) in zip(docs, together, alone, strict=True):
        assert code == code_alone
        if snap is None:
            continue
        # created_at is outside the hash: equal hashes mean equal snapshots.
        assert snap["snapshot_hash"] == snap_alone["snapshot_hash"]
        run = "A" if doc["pins"] == pins("A") else "B"
        as_of = doc["as_of_time_utc"]
        for k in doc["feature_keys"]:
            expected = brute_force(stream.truth, run, k["key_id"], parse_micros(as_of))
            got = snap["features"].get(f"flow_id:{k['key_id']}", {}).get("core_features")
            if expected is None:
                assert got is None
            else:
                got = {n: int(v) if isinstance(v, float) else v for n, v in got.items()}
                assert got == expected, (run, k, as_of)


async def _probes(pool: asyncpg.Pool, doc: dict[str, Any]) -> tuple[Pins, ReadProbes]:
    req = validate_request_json(doc, max_keys=100, max_groups=16)
    plan = plan_read(req, default_policy(), await active_groups(pool))
    p = req.pins
    return (
        (p["platform_run_id"], p["scenario_run_id"], p["scenario_id"],
         p["manifest_fingerprint"], p["parameter_hash"], int(p["seed"])),
        plan.probes,
    )


async def _wait_blocked(pool: asyncpg.Pool, n: int, *, besides: int = 0) -> list[int]:
    """Pids of the backends waiting on a lock (other than `besides`), once there are `n`."""
    for _ in range(200):
        pids = [
            int(r[0])
            for r in await pool.fetch(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                " AND datname = current_database() AND pid <> $1",
                besides,
            )
        ]
        if len(pids) >= n:
            return pids
        await asyncio.sleep(0.02)
    raise AssertionError(f"never saw {n} blocked statements")


@asynccontextmanager
async def _tiles_locked(dsn: str) -> AsyncIterator[tuple[asyncpg.Connection, Any]]:
    """A connection holding feature_tiles exclusively: snapshot statements wait on it
    until the transaction commits (the caller does) or the connection closes."""
    locker = await asyncpg.connect(dsn)
    try:
        tx = locker.transaction()
        await tx.start()
        await locker.execute("LOCK TABLE feature_tiles IN ACCESS EXCLUSIVE MODE")
        yield locker, tx
    finally:
        await locker.close()


@asynccontextmanager
async def _first_read_held(
    pool: asyncpg.Pool, dsn: str, reader: CoalescingReader, read: tuple[Pins, ReadProbes]
) -> AsyncIterator[tuple[asyncio.Future[Any], asyncpg.Connection, Any, int]]:
    """`read` sent through `reader`, its statement waiting on the tiles lock:
    (its future, the lock's connection and transaction, the statement's pid)."""
    async with _tiles_locked(dsn) as (locker, tx):
        first = asyncio.ensure_future(reader.read(stream=TOPIC, pins=read[0], probes=read[1]))
        (blocked,) = await _wait_blocked(pool, 1)
        yield first, locker, tx, blocked


async def _one_key_reads(pool: asyncpg.Pool) -> list[tuple[Pins, ReadProbes]]:
    as_of = BASE_US + 4 * 24 * HOUR_US  # inside the generated data
    return [await _probes(pool, keys_request("A", [k], as_of)) for k in ("1", "2", "3", "4")]


class OneAtATime(NamedTuple):
    """A reader with one statement in flight over a projected store, the
    requests per statement it reported, and four one-key reads."""

    pool: asyncpg.Pool
    reader: CoalescingReader
    sizes: list[int]
    reads: list[tuple[Pins, ReadProbes]]


@pytest.fixture
async def one_at_a_time(pool: asyncpg.Pool, bus_root: Path) -> AsyncIterator[OneAtATime]:
    generate(5, n_events=120, n_keys=4, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    sizes: list[int] = []
    reader = CoalescingReader(pool, in_flight=1, on_statement=sizes.append)
    try:
        yield OneAtATime(pool, reader, sizes, await _one_key_reads(pool))
    finally:
        await reader.close()


async def test_a_request_given_up_while_waiting_leaves_the_statement(
    one_at_a_time: OneAtATime, fresh_dsn: str
) -> None:
    pool, reader, sizes, reads = one_at_a_time
    async with _first_read_held(pool, fresh_dsn, reader, reads[0]) as (first, _, tx, _):
        rest = [
            asyncio.ensure_future(reader.read(stream=TOPIC, pins=pn, probes=pr))
            for pn, pr in reads[1:]
        ]
        await asyncio.sleep(0.05)
        rest[0].cancel()
        await tx.commit()
        got = [await first, *[await t for t in rest[1:]]]
        with pytest.raises(asyncio.CancelledError):
            await rest[0]
    # The first alone, then the two still waiting together; the cancelled one was dropped.
    assert sizes == [1, 2]
    for (pn, pr), row in zip([reads[0], *reads[2:]], got, strict=True):
        assert row == await read_snapshot(pool, stream=TOPIC, pins=pn, probes=pr)


async def test_a_failed_statement_fails_every_request_it_carried_and_no_later_one(
    one_at_a_time: OneAtATime, fresh_dsn: str
) -> None:
    pool, reader, sizes, reads = one_at_a_time
    held = _first_read_held(pool, fresh_dsn, reader, reads[0])
    async with held as (first, locker, tx, blocked):
        carried = [
            asyncio.ensure_future(reader.read(stream=TOPIC, pins=pn, probes=pr))
            for pn, pr in reads[1:3]
        ]
        await asyncio.sleep(0.05)
        # The first statement's connection dies: only its request fails.
        await locker.execute("SELECT pg_terminate_backend($1)", blocked)
        with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
            await first
        # The next statement carries the two that waited; it blocks too, and dies.
        pids = await _wait_blocked(pool, 1, besides=blocked)
        await locker.execute("SELECT pg_terminate_backend($1)", pids[0])
        for t in carried:
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)):
                await t
        await tx.commit()
        after = await reader.read(stream=TOPIC, pins=reads[3][0], probes=reads[3][1])
    assert sizes == [1, 2, 1]
    assert after == await read_snapshot(pool, stream=TOPIC, pins=reads[3][0], probes=reads[3][1])
