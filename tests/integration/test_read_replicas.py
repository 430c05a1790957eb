"""Read replicas: the server reads GetFeatures from a real PostgreSQL streaming
replica (tests.support.pg_replica makes the primary/replica pair), the
projector writes to the primary. Answers from the replica equal the primary's
at the same basis; a paused replay gives older but consistent answers and a
rising lag; a replica lost or promoted never yields INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format
from hypothesis import given
from hypothesis import settings as hsettings
from hypothesis import strategies as st

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.config import ConfigError, load_settings
from ofp.store.db import create_pool, migrate
from ofp.store.replicas import IN_ROTATION, LAGGING, PROMOTED, ReadRouter, parse_lsn
from ofp_cli import status as status_cli
from ofp_server.server import FeatureServer, create_server
from tests.support.harness import get_features, project_once, request_proto
from tests.support.harness import settings as make_settings
from tests.support.pg_replica import ReplicaPair, make_pair
from tests.support.rich_errors import rich_error
from tests.support.streams import BASE_US, HOUR_US, TOPIC, envelope, generate, keys_request

pytestmark = pytest.mark.integration
AS_OF = BASE_US + 9 * 24 * HOUR_US
KEYS = ["1", "2", "3"]
_REPLICA_DSN: dict[int, str] = {}  # primary pool -> its database on the replica


@pytest.fixture(scope="module")
def pair() -> Iterator[ReplicaPair]:
    made = make_pair()
    try:
        yield made
    finally:
        made.stop_all()
        shutil.rmtree(made.root, ignore_errors=True)


@pytest.fixture
async def primary(pair: ReplicaPair) -> AsyncIterator[asyncpg.Pool]:
    """A fresh, migrated database on the primary (replicated like everything else)."""
    if not await _in_recovery(pair.replica_dsn):  # an earlier test promoted it
        await asyncio.to_thread(pair.make_replica)
    name = f"ofp_r_{uuid.uuid4().hex[:10]}"
    admin = await asyncpg.connect(pair.dsn(pair.primary_port, "postgres"))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    pool = await create_pool(pair.dsn(pair.primary_port, name), min_size=1, max_size=4)
    async with pool.acquire() as conn:
        await migrate(conn)
    _REPLICA_DSN[id(pool)] = pair.dsn(pair.replica_port, name)
    yield pool
    del _REPLICA_DSN[id(pool)]
    await pool.close()
    admin = await asyncpg.connect(pair.dsn(pair.primary_port, "postgres"))
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


def replica_dsn(pool: asyncpg.Pool) -> str:
    """The same database on the replica."""
    return _REPLICA_DSN[id(pool)]


async def _in_recovery(dsn: str) -> bool:
    conn = await asyncpg.connect(dsn.rsplit("/", 1)[0] + "/postgres")
    try:
        return bool(await conn.fetchval("SELECT pg_is_in_recovery()"))
    finally:
        await conn.close()


async def on_replica(pool: asyncpg.Pool, sql: str) -> Any:
    conn = await asyncpg.connect(replica_dsn(pool))
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


async def caught_up(pool: asyncpg.Pool, timeout_s: float = 30) -> None:
    """Until the replica has replayed everything the primary has written so far."""
    want = parse_lsn(await pool.fetchval("SELECT pg_current_wal_insert_lsn()::text"))
    # The server's own database: the test's may not have been replayed yet.
    conn = await asyncpg.connect(replica_dsn(pool).rsplit("/", 1)[0] + "/postgres")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            replayed = await conn.fetchval("SELECT pg_last_wal_replay_lsn()::text")
            if parse_lsn(replayed) >= want:
                return
            await asyncio.sleep(0.02)
    finally:
        await conn.close()
    raise AssertionError("the replica did not catch up")


async def until(check: Callable[[], bool | Awaitable[bool]], what: str,
                timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = check()
        if not isinstance(got, bool):
            got = await got
        if got:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting until {what}")


@contextlib.asynccontextmanager
async def server(pool: asyncpg.Pool, bus_root: Path, *, fallback: str = "unavailable",
                 max_lag_s: float = 60.0, replicas: bool = True
                 ) -> AsyncIterator[tuple[FeatureServer, pb_grpc.FeatureServiceStub]]:
    """A server reading from the replica (or, `replicas=False`, from the primary only)."""
    router = None
    if replicas:
        router = await ReadRouter.open(pool, [replica_dsn(pool)], max_lag_s=max_lag_s,
                                       fallback=fallback, check_interval_s=0.1, pool_max=4)
    srv = create_server(make_settings(bus_root), pool, "127.0.0.1:0", replicas=router)
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            yield srv, pb_grpc.FeatureServiceStub(channel)
    finally:
        await srv.stop(0)


def sample(srv: FeatureServer, name: str, labels: dict[str, str] | None = None) -> float:
    value = srv.metrics.registry.get_sample_value(name, labels or {})
    return 0.0 if value is None else value


def replica_reads(srv: FeatureServer) -> float:
    assert srv.service.replicas is not None
    name = srv.service.replicas.replicas[0].name
    return sample(srv, "ofp_read_replica_reads_total", {"replica": name})


def truth(answer: dict[str, Any]) -> tuple[Any, ...]:
    """What must agree between two answers of the same basis: values, basis, hash."""
    snap = answer["snapshot"]
    return (snap["features"], snap["eb_offset_basis"], snap["snapshot_hash"],
            snap["feature_def_policy_rev"])


def append(bus_root: Path, n: int, start: int) -> None:
    with open(bus_root / TOPIC / "partition=0.jsonl", "a", encoding="utf-8") as f:
        for i in range(n):
            line = envelope(f"{start + i:032x}", AS_OF - HOUR_US, "A",
                            {"flow_id": 1 + i % 3, "amount": "1.5"})
            f.write(json.dumps(line) + "\n")


async def basis_of(answer: dict[str, Any]) -> int:
    return int(answer["snapshot"]["eb_offset_basis"]["offsets"][0]["offset"])


async def all_answers(stub: pb_grpc.FeatureServiceStub) -> list[dict[str, Any]]:
    return [await get_features(stub, keys_request("A", [k], AS_OF)) for k in KEYS]


async def test_replica_answers_equal_the_primarys_at_the_same_basis(
    primary: asyncpg.Pool, bus_root: Path
) -> None:
    generate(31, n_events=120, n_keys=3, n_partitions=1, noise=False).write(bus_root)
    await project_once(primary, bus_root)
    await caught_up(primary)
    async with server(primary, bus_root, replicas=False) as (_, on_primary), \
            server(primary, bus_root, fallback="unavailable") as (srv, on_replica_stub):
        assert srv.service.replicas is not None
        assert srv.service.replicas.replicas[0].state == IN_ROTATION
        from_primary = await all_answers(on_primary)
        from_replica = await all_answers(on_replica_stub)
        assert [truth(a) for a in from_replica] == [truth(a) for a in from_primary]
        # Every read went to the replica (fallback `unavailable`: none could have
        # gone to the primary unnoticed).
        assert replica_reads(srv) == len(KEYS)
        assert sample(srv, "ofp_read_replica_reads_total", {"replica": "primary"}) == 0
        status = _status_json(await on_replica_stub.GetStatus(pb.GetStatusRequest()))
        [rep] = status["read_replicas"]
        assert rep["state"] == "IN_ROTATION" and rep["in_rotation"] is True
        assert "postgres@" not in rep["name"] and rep["name"].startswith("127.0.0.1:")


def _status_json(resp: pb.GetStatusResponse) -> dict[str, Any]:
    doc: dict[str, Any] = json_format.MessageToDict(resp, preserving_proto_field_name=True)
    return doc


async def test_a_paused_replica_answers_stale_but_consistent_and_its_lag_rises(
    primary: asyncpg.Pool, bus_root: Path
) -> None:
    generate(32, n_events=90, n_keys=3, n_partitions=1, noise=False).write(bus_root)
    await project_once(primary, bus_root)
    await caught_up(primary)
    async with server(primary, bus_root, replicas=False) as (_, on_primary):
        before = await all_answers(on_primary)  # the primary's answers at the old basis
    old_basis = await basis_of(before[0])
    await on_replica(primary, "SELECT pg_wal_replay_pause()")
    try:
        append(bus_root, 30, 10_000)
        await project_once(primary, bus_root)
        async with server(primary, bus_root, replicas=False) as (_, on_primary):
            after = await all_answers(on_primary)
        new_basis = await basis_of(after[0])
        assert new_basis == old_basis + 30
        assert [truth(a) for a in after] != [truth(a) for a in before]

        async with server(primary, bus_root, fallback="unavailable") as (srv, stub):
            router = srv.service.replicas
            assert router is not None
            # Stale but consistent: exactly the primary's answers at the old basis.
            stale = await all_answers(stub)
            assert [truth(a) for a in stale] == [truth(a) for a in before]
            # The lag is measured and rises while the replay stays paused.
            name = router.replicas[0].name
            first = sample(srv, "ofp_read_replica_lag_seconds", {"replica": name})
            assert sample(srv, "ofp_read_replica_lag_bytes", {"replica": name}) > 0
            await asyncio.sleep(0.5)
            await until(lambda: sample(srv, "ofp_read_replica_lag_seconds",
                                       {"replica": name}) > first + 0.3, "the lag rises")
            status = _status_json(await stub.GetStatus(pb.GetStatusRequest()))
            assert int(status["read_replicas"][0]["lag_bytes"]) > 0
            # Read-your-basis: the replica has not replayed the new offset, and
            # the server says so rather than answering from an older basis.
            doc = keys_request("A", ["1"], AS_OF)
            doc["min_basis"] = [{"partition": 0, "offset": str(new_basis)}]
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await stub.GetFeatures(request_proto(doc))
            err = rich_error(refused.value)
            assert err.code == "UNAVAILABLE" and err.error.retryable
            assert sample(srv, "ofp_read_replica_fallbacks_total",
                          {"reason": "replica_behind"}) == 1

        async with server(primary, bus_root, fallback="primary") as (srv, stub):
            # Falling back to the primary for a min_basis the replica lacks.
            answer = await get_features(stub, doc)
            assert await basis_of(answer) == new_basis
            assert truth(answer) == truth(after[0])

        async with server(primary, bus_root, fallback="primary", max_lag_s=0.3) as (srv, stub):
            # Beyond the lag limit: out of rotation, reads go to the primary.
            router = srv.service.replicas
            assert router is not None
            await until(lambda: router.replicas[0].state == LAGGING, "the replica is LAGGING")
            fresh = await all_answers(stub)
            assert [truth(a) for a in fresh] == [truth(a) for a in after]
            assert sample(srv, "ofp_read_replica_in_rotation",
                          {"replica": router.replicas[0].name}) == 0
            await on_replica(primary, "SELECT pg_wal_replay_resume()")
            await until(lambda: router.replicas[0].state == IN_ROTATION,
                        "the resumed replica is back in rotation")
            n = replica_reads(srv)
            again = await all_answers(stub)
            assert [truth(a) for a in again] == [truth(a) for a in after]
            assert replica_reads(srv) == n + len(KEYS)
    finally:
        with contextlib.suppress(Exception):
            await on_replica(primary, "SELECT pg_wal_replay_resume()")


async def _load(stub: pb_grpc.FeatureServiceStub, stop: asyncio.Event,
                outcomes: dict[str, int]) -> None:
    """GetFeatures in a loop until `stop`: counts OK and each gRPC error code."""
    i = 0
    while not stop.is_set():
        i += 1
        try:
            await stub.GetFeatures(request_proto(keys_request("A", [KEYS[i % 3]], AS_OF)),
                                   timeout=5)
            outcomes["OK"] = outcomes.get("OK", 0) + 1
        except grpc.aio.AioRpcError as exc:
            code = exc.code().name
            outcomes[code] = outcomes.get(code, 0) + 1
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("fallback", ["primary", "unavailable"])
async def test_losing_the_replica_never_yields_internal_and_the_server_recovers(
    primary: asyncpg.Pool, bus_root: Path, pair: ReplicaPair, fallback: str
) -> None:
    generate(33, n_events=60, n_keys=3, n_partitions=1, noise=False).write(bus_root)
    await project_once(primary, bus_root)
    await caught_up(primary)
    async with server(primary, bus_root, fallback=fallback) as (srv, stub):
        router = srv.service.replicas
        assert router is not None
        outcomes: dict[str, int] = {}
        stop = asyncio.Event()
        load = [asyncio.create_task(_load(stub, stop, outcomes)) for _ in range(4)]
        try:
            await asyncio.sleep(0.3)
            await asyncio.to_thread(pair.stop_replica)
            await until(lambda: router.replicas[0].state != IN_ROTATION, "the replica is out")
            await asyncio.sleep(0.5)  # requests while it is down
            during = dict(outcomes)
            await asyncio.to_thread(pair.start_replica)
            await until(lambda: router.replicas[0].state == IN_ROTATION,
                        "the restarted replica is back in rotation")
            n = replica_reads(srv)
            await until(lambda: replica_reads(srv) > n + 10, "reads go to the replica again")
        finally:
            stop.set()
            await asyncio.gather(*load)
        assert set(outcomes) <= {"OK", "UNAVAILABLE"}, outcomes
        assert outcomes["OK"] > 0
        if fallback == "primary":
            # The primary took the reads while the replica was down.
            assert set(during) == {"OK"}, during
            assert sample(srv, "ofp_read_replica_reads_total", {"replica": "primary"}) > 0
        else:
            assert during.get("UNAVAILABLE", 0) > 0, during


async def test_a_promoted_replica_leaves_the_rotation_without_internal(
    primary: asyncpg.Pool, bus_root: Path, pair: ReplicaPair
) -> None:
    generate(34, n_events=60, n_keys=3, n_partitions=1, noise=False).write(bus_root)
    await project_once(primary, bus_root)
    await caught_up(primary)
    try:
        async with server(primary, bus_root, fallback="primary") as (srv, stub):
            router = srv.service.replicas
            assert router is not None
            outcomes: dict[str, int] = {}
            stop = asyncio.Event()
            load = [asyncio.create_task(_load(stub, stop, outcomes)) for _ in range(4)]
            try:
                await asyncio.sleep(0.3)
                assert await on_replica(primary, "SELECT pg_promote(true, 30)") is True
                await until(lambda: router.replicas[0].state == PROMOTED,
                            "the promoted replica is PROMOTED")
                # A write the promoted server will never see: answers come from
                # the primary and include it.
                append(bus_root, 5, 20_000)
                await project_once(primary, bus_root)
                answer = await get_features(stub, keys_request("A", ["1"], AS_OF))
                lines = (bus_root / TOPIC / "partition=0.jsonl").read_text().splitlines()
                assert await basis_of(answer) == len(lines)
            finally:
                stop.set()
                await asyncio.gather(*load)
            assert set(outcomes) <= {"OK"}, outcomes
            status = _status_json(await stub.GetStatus(pb.GetStatusRequest()))
            assert status["read_replicas"][0]["state"] == "PROMOTED"
            # The operator replaces it with a fresh replica at the same address:
            # the running server takes it back into rotation and reads from it.
            await asyncio.to_thread(pair.make_replica)
            await until(lambda: router.replicas[0].state == IN_ROTATION,
                        "the new replica is in rotation")
            n = replica_reads(srv)
            answer = await get_features(stub, keys_request("A", ["1"], AS_OF))
            assert await basis_of(answer) == len(lines)
            assert replica_reads(srv) == n + 1
    finally:
        if not await _in_recovery(pair.replica_dsn):
            await asyncio.to_thread(pair.make_replica)  # for the tests after this one


async def test_ofp_status_reports_each_replica_and_its_lag(
    primary: asyncpg.Pool, bus_root: Path, pair: ReplicaPair
) -> None:
    generate(35, n_events=30, n_keys=3, n_partitions=1, noise=False).write(bus_root)
    await project_once(primary, bus_root)
    await caught_up(primary)
    primary_dsn = replica_dsn(primary).replace(f":{pair.replica_port}/",
                                                f":{pair.primary_port}/")
    unreachable = f"postgresql://postgres@127.0.0.1:{_closed_port()}/nothing"
    cfg = make_settings(bus_root, database_url=primary_dsn,
                        database_read_urls=(replica_dsn(primary), unreachable))
    doc = await status_cli.collect(cfg)
    up, down = doc["read_replicas"]
    # Caught up, give or take WAL the primary writes on its own meanwhile.
    assert up["state"] == "IN_ROTATION" and up["in_rotation"] is True
    assert up["lag_bytes"] >= 0 and 0 <= up["lag_ms"] <= 5000
    assert down["state"] == "UNREACHABLE" and not down["in_rotation"] and down["error"]
    table = status_cli.render_table(doc)
    assert "read replicas" in table and "UNREACHABLE" in table


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port  # closed again: connecting is refused


def test_read_urls_come_from_the_environment_or_the_file_without_a_password(
    tmp_path: Path,
) -> None:
    env = {"OFP_DATABASE_READ_URLS": "postgresql://u:pw@r1:5432/db, postgresql://u@r2/db"}
    s = load_settings(None, env)
    assert s.database_read_urls == ("postgresql://u:pw@r1:5432/db", "postgresql://u@r2/db")
    assert "pw" not in repr(s)
    f = tmp_path / "ofp.yaml"
    f.write_text("database_read_urls: [postgresql://u@r1/db]\nreplica_fallback: unavailable\n")
    s = load_settings(f, {})
    assert s.database_read_urls == ("postgresql://u@r1/db",)
    assert s.replica_fallback == "unavailable" and s.replica_max_lag_s == 5.0
    f.write_text("database_read_urls: postgresql://u:secret@r1/db\n")
    with pytest.raises(ConfigError, match="password"):
        load_settings(f, {})
    with pytest.raises(ConfigError, match="replica_fallback"):
        load_settings(None, {"OFP_REPLICA_FALLBACK": "sometimes"})


@hsettings(max_examples=150)
@given(steps=st.lists(st.tuples(st.integers(0, 5000), st.floats(0.01, 2.0)), min_size=1,
                      max_size=40),
       replay_at=st.integers(0, 200_000), replay_age_s=st.none() | st.floats(0, 1000))
def test_replica_lag_seconds_bound_the_age_of_what_the_replica_lacks(
    steps: list[tuple[int, float]], replay_at: int, replay_age_s: float | None
) -> None:
    """The lag in seconds is an upper bound that is never negative, is 0 for a
    replica at the primary's position, and never exceeds the time since the
    primary was last seen at a position the replica has replayed."""
    router = ReadRouter(None, [], max_lag_s=5, check_interval_s=0.1)
    t, lsn = 0.0, 1_000
    for grow, dt in steps:  # the primary measured at growing WAL positions
        t, lsn = t + dt, lsn + grow
        router._history.append((t, lsn))
    now = t + 0.05
    replay = min(replay_at, lsn + 10)
    lag = router._lag_s(replay, lsn, replay_age_s, now)
    if replay >= lsn:
        assert lag == 0.0
        return
    seen = [now - ts for ts, pos in router._history if pos <= replay]
    if seen:
        assert lag is not None and 0 <= lag <= min(seen)
    elif replay_age_s is None:
        assert lag is None
    else:
        assert lag == max(0.0, replay_age_s)


@hsettings(max_examples=200)
@given(hi=st.integers(0, 2**32 - 1), lo=st.integers(0, 2**32 - 1))
def test_lsn_text_parses_to_its_wal_position(hi: int, lo: int) -> None:
    assert parse_lsn(f"{hi:X}/{lo:X}") == hi * 2**32 + lo
