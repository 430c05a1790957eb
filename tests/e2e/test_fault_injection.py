"""Faults between the workloads and PostgreSQL, under load (issue 18).

A TCP fault proxy (tests/support/faultproxy.py) sits between each workload and
PostgreSQL and adds latency, resets connections or blackholes the link:

- two projector replicas ingesting a growing bus lose no record and apply none
  twice (the final answers and hashes equal a single clean pass), leases move
  to the replica that can reach the database, and the cut-off replica's commit
  attempt after its lease was taken is refused by fencing;
- the feature server under open-loop load answers only OK or UNAVAILABLE
  (retryable) during the faults, never INTERNAL, every OK with the clean
  answer's hash, and answers again within 5 s of the link healing.

- PostgreSQL (a cluster of the test's own) restarted, fast and by a crash, while
  two projector replicas ingest and the server answers, and 20 kill -9s of the
  workloads at random points: the final answers and hashes equal a single clean
  pass, and the server never answers INTERNAL.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import random
import shutil
import signal
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest

from tests.support.cli import cli_env, free_port, process_env
from tests.support.db import with_database
from tests.support.faultproxy import FaultProxy
from tests.support.harness import get_features, project_once, request_proto, running_server
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request
from tests.support.workloads import (
    LoadResult,
    OwnCluster,
    Workload,
    append_share,
    assert_commits_fenced_and_chained,
    drained,
    get_features_call,
    holdings,
    offered_load,
    projection_state,
    wait_until,
    write_prefix,
)

pytestmark = pytest.mark.integration


# -- the proxy itself ----------------------------------------------------------------


async def _echo_server() -> asyncio.Server:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(1024):
                writer.write(data)
                await writer.drain()
        writer.close()

    return await asyncio.start_server(echo, "127.0.0.1", 0)


async def test_the_fault_proxy_delays_blackholes_resets_and_refuses() -> None:
    echo = await _echo_server()
    port = echo.sockets[0].getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"ping")
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"ping"

        proxy.latency_s = 0.2  # each way: an echo takes two crossings
        t0 = time.monotonic()
        writer.write(b"slow")
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"slow"
        assert 0.38 <= time.monotonic() - t0 < 1.5
        proxy.heal()

        proxy.blackhole()
        writer.write(b"lost")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(reader.readexactly(4), 0.3)
        # A new connection is accepted and answers nothing either.
        r2, w2 = await asyncio.open_connection("127.0.0.1", proxy.port)
        w2.write(b"hello")
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(r2.readexactly(5), 0.3)
        proxy.heal()
        # The bytes sent into the blackhole are gone; the link works again.
        writer.write(b"back")
        assert await asyncio.wait_for(reader.readexactly(4), 2) == b"back"
        assert proxy.bytes_dropped >= 9

        assert proxy.reset() == 2
        with pytest.raises((ConnectionError, asyncio.IncompleteReadError)):
            writer.write(b"gone")
            await writer.drain()
            await asyncio.wait_for(reader.readexactly(4), 2)

        proxy.refuse = True
        r3, _ = await asyncio.open_connection("127.0.0.1", proxy.port)
        assert await asyncio.wait_for(r3.read(10), 2) == b""
        assert proxy.accepted == 3
        w2.close()
        writer.close()
    echo.close()
    await echo.wait_closed()


async def test_a_close_crosses_a_blackholed_link_only_once_it_heals() -> None:
    echo = await _echo_server()
    port = echo.sockets[0].getsockname()[1]
    async with FaultProxy("127.0.0.1", port) as proxy:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
        writer.write(b"x")
        await asyncio.wait_for(reader.readexactly(1), 2)
        proxy.blackhole()
        writer.write_eof()  # the client closes while the link is down
        await asyncio.sleep(0.3)
        assert proxy.open_connections == 1  # nothing crossed
        proxy.heal()
        assert await asyncio.wait_for(reader.read(10), 2) == b""
        await wait_until(lambda: _zero(proxy), 2, "the link closed")
        writer.close()
    echo.close()
    await echo.wait_closed()


async def _zero(proxy: FaultProxy) -> bool:
    return proxy.open_connections == 0


# -- the projector --------------------------------------------------------------------


def _named(dsn: str, application_name: str) -> str:
    """`dsn` whose sessions show `application_name` in pg_stat_activity."""
    return f"{dsn}{'&' if '?' in dsn else '?'}application_name={application_name}"


def _projector_env(dsn: str, bus_root: Path, **extra: str) -> dict[str, str]:
    return process_env(cli_env(dsn, bus_root, OFP_LEASE_TTL_S="2", OFP_BATCH_SIZE="10",
                               OFP_POLL_INTERVAL_MS="20", OFP_LOG_LEVEL="INFO", **extra))


async def test_two_replicas_through_faults_lose_nothing_and_fence_the_cut_off_one(
    fresh_dsn: str, pool_factory: object, bus_root: Path, tmp_path: Path
) -> None:
    stream = generate(181, n_events=2400, n_keys=10, n_partitions=4)
    write_prefix(stream, bus_root, [0.1] * 4)
    direct = await asyncpg.create_pool(fresh_dsn, min_size=1, max_size=3)
    pa = await FaultProxy.for_dsn(fresh_dsn).start()
    pb = await FaultProxy.for_dsn(fresh_dsn).start()
    a = await Workload.start(
        "ofp-projector", _projector_env(_named(pa.dsn(fresh_dsn), "ofp-replica-a"), bus_root),
        tmp_path)
    b = await Workload.start("ofp-projector", _projector_env(pb.dsn(fresh_dsn), bus_root),
                             tmp_path)
    try:
        async def both_hold_two() -> bool:
            h = await holdings(direct)
            return sorted(len(v) for v in h.values()) == [2, 2]

        await wait_until(both_hold_two, 60, "two replicas holding two leases each")
        a_owner, b_owner = a.owner, b.owner
        assert a_owner and b_owner

        # Latency on both links while the bus grows.
        pa.latency_s = pb.latency_s = 0.015
        append_share(stream, bus_root, 0.3)
        await asyncio.sleep(2.0)
        pa.heal()
        pb.heal()

        # Connection resets on both links, mid-batch.
        append_share(stream, bus_root, 0.5)
        resets = 0
        for _ in range(4):
            await asyncio.sleep(0.4)
            resets += pa.reset() + pb.reset()
        assert resets >= 4

        # A blackhole between replica A and the database while A is in the middle of
        # a batch, between two statements (none of its sessions running one): it
        # holds its lease row locked, and PostgreSQL ends that transaction after one
        # ttl of silence (the projector's idle_in_transaction_session_timeout); at
        # the heal A's worker learns its connection is gone and retries its commit
        # at once, while A's control loop still waits for the statement it lost.
        # Cut in the middle of a COPY instead, the server would wait for the rest of
        # the data (TCP keepalive ends that in production; the proxy's kernel
        # answers keepalives, so here only A's 30 s command timeout would): a cut
        # that did not catch A between two statements is healed and tried again.
        a_parts = (await holdings(direct))[a_owner]
        append_share(stream, bus_root, 0.85)

        async def b_took_over() -> bool:
            return (await holdings(direct)).get(b_owner, []) == [0, 1, 2, 3]

        a_state = ("SELECT bool_or(state = 'idle in transaction')"
                   " AND NOT bool_or(state = 'active') FROM pg_stat_activity"
                   " WHERE application_name = 'ofp-replica-a'")
        share = 0.85
        for attempt in range(15):
            # Polled without pause, the bus growing meanwhile so that A has batches.
            t_look, t_fed = time.monotonic(), 0.0
            while not await direct.fetchval(a_state):
                assert time.monotonic() - t_look < 30, "A never seen in the middle of a batch"
                if time.monotonic() - t_fed > 0.3:
                    share, t_fed = min(0.9, share + 0.004), time.monotonic()
                    append_share(stream, bus_root, share)
            pa.blackhole()
            t_cut = time.monotonic()
            # A may have sent its next statement between the look and the cut: the
            # state the server keeps from the cut on says whether it was caught.
            await asyncio.sleep(0.3)
            if await direct.fetchval(a_state):
                break
            assert attempt < 14, "A never cut in the middle of a batch: " + str([
                tuple(r) for r in await direct.fetch(
                    "SELECT state, wait_event, left(query, 60) FROM pg_stat_activity"
                    " WHERE application_name = 'ofp-replica-a'")])
            pa.heal()
            pa.reset()  # A's statements lost in the blackhole fail now, not in 30 s
        await wait_until(b_took_over, 4 * 2 + 4, "B holding every lease")
        took_s = time.monotonic() - t_cut
        append_share(stream, bus_root, 0.92)  # work for B on A's former partitions

        async def b_committed_on_a_partitions() -> bool:
            n = await direct.fetchval(
                "SELECT count(DISTINCT partition) FROM checkpoint_commits"
                " WHERE owner = $1 AND partition = ANY($2::int[])"
                " AND committed_at > now() - make_interval(secs => $3)",
                b_owner, a_parts, time.monotonic() - t_cut)
            return bool(n == len(a_parts))

        await wait_until(b_committed_on_a_partitions, 30, "B committing A's partitions")
        pa.heal()
        t_heal = time.monotonic()

        async def zombie_refused() -> bool:
            return bool(a.events("lease_lost", reason="fenced_at_commit"))

        try:
            await wait_until(zombie_refused, 20, "A's stale commit refused")
        except AssertionError:
            raise AssertionError(
                "A's stale commit refused: not within 20 s; A said since the cut: "
                + str([(x.get("event"), x.get("reason"), x.get("operation"), x.get("error"),
                        x.get("partition")) for x in a.lines[-40:]])) from None
        refused_s = time.monotonic() - t_heal

        append_share(stream, bus_root, 1.0)

        async def all_applied() -> bool:
            return await drained(direct, stream)

        await wait_until(all_applied, 90, "every record applied")
        assert (await b.stop()) < 10 and b.proc.returncode == 0, b.stderr[-2000:]
        # A may still wait on a statement it sent into the blackhole (the pool's
        # command timeout); its partitions are B's anyway.
        with contextlib.suppress(AssertionError):
            await a.stop(timeout_s=3)
    finally:
        await a.kill()
        await b.kill()
        await pa.close()
        await pb.close()

    try:
        refused = a.events("lease_lost", reason="fenced_at_commit")
        assert {e["partition"] for e in refused} <= set(a_parts)
        # The fenced-out attempt reached the database and changed nothing there.
        await assert_commits_fenced_and_chained(direct, stream)
        stale = await direct.fetchval(
            "SELECT count(*) FROM checkpoint_commits c WHERE c.owner = $1 AND c.token = ANY($2)"
            " AND c.committed_at > (SELECT min(acquired_at) FROM lease_history h"
            "   WHERE h.partition = c.partition AND h.token > c.token)",
            a_owner, [int(e["token"]) for e in refused])
        assert stale == 0
        assert a.events("store_retrying")  # the zombie's path: a retry, then the refusal

        single = await pool_factory()  # type: ignore[operator]
        stream.write(tmp_path / "single")
        await project_once(single, tmp_path / "single")
        assert await projection_state(direct, stream) == await projection_state(single, stream)
        print(f"\nfault-injection projector: B took every lease {took_s:.1f} s after the cut;"
              f" A's stale commit refused {refused_s:.2f} s after the heal;"
              f" {len(a.events('store_retrying'))} + {len(b.events('store_retrying'))}"
              f" store retries; {resets} connections reset; cut attempts {attempt + 1}")
    finally:
        await direct.close()


# -- the server -------------------------------------------------------------------------

SERVER_RATE = 500.0


async def test_the_server_under_load_answers_only_ok_or_unavailable_through_faults_and_recovers(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    generate(182, n_events=400, n_keys=6, n_partitions=2).write(bus_root)
    await project_once(pool, bus_root)
    doc = keys_request("A", ["1", "2", "3"], BASE_US + 9 * 24 * HOUR_US)
    async with running_server(pool) as (_, stub):
        clean_hash = (await get_features(stub, doc))["snapshot"]["snapshot_hash"]

    proxy = await FaultProxy.for_dsn(fresh_dsn).start()
    port = free_port()
    env = process_env(cli_env(proxy.dsn(fresh_dsn), bus_root,
                              OFP_GRPC_ADDRESS=f"127.0.0.1:{port}", OFP_DEADLINE_MS="1000",
                              OFP_LOG_LEVEL="WARNING", OFP_SNAPSHOT_LOG="off"))
    server = await Workload.start("ofp-server", env, tmp_path)
    channel, call = get_features_call(port)
    result = LoadResult()
    stop = asyncio.Event()
    try:
        async def answers() -> bool:
            with contextlib.suppress(Exception):
                await call(request_proto(doc), timeout=2)
                return True
            return False

        await wait_until(answers, 60, "the server answering")
        load = asyncio.create_task(
            offered_load(call, doc, rate=SERVER_RATE, stop=stop, result=result))
        marks: dict[str, float] = {"start": time.monotonic()}
        await asyncio.sleep(2.0)
        marks["latency"] = time.monotonic()
        proxy.latency_s = 0.01
        await asyncio.sleep(2.0)
        proxy.heal()
        marks["resets"] = time.monotonic()
        for _ in range(5):
            proxy.reset()
            await asyncio.sleep(0.4)
        marks["blackhole"] = time.monotonic()
        proxy.blackhole()
        await asyncio.sleep(3.0)
        proxy.heal()
        marks["heal"] = time.monotonic()
        await asyncio.sleep(7.0)
        marks["end"] = time.monotonic()
        stop.set()
        await load
        stop_s = await server.stop(timeout_s=90)
    finally:
        stop.set()
        await channel.close(None)
        await server.kill()
        await proxy.close()

    codes = result.codes()
    failures_after = [t for t, code, _ in result.calls if code != "OK" and t >= marks["heal"]]
    recovery_s = (max(failures_after) - marks["heal"]) if failures_after else 0.0
    elapsed = marks["end"] - marks["start"]
    rate = len(result.calls) / elapsed
    clean = result.latencies(marks["start"], marks["latency"])
    odd = [(round(t - marks["start"], 2), code, round(lat, 2)) for t, code, lat in result.calls
           if code not in ("OK", "UNAVAILABLE")]
    print(f"\nfault-injection server: {len(result.calls)} calls at {rate:.0f} req/s achieved;"
          f" codes {codes}; recovery {recovery_s:.2f} s after the heal;"
          f" clean p99 {1000 * clean[int(len(clean) * 0.99) - 1]:.1f} ms;"
          f" phases {_phase_codes(result, marks)}; stopped in {stop_s:.1f} s; odd {odd[:5]}")
    assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
    assert result.hashes == {clean_hash}
    assert set(result.codes(marks["start"], marks["latency"])) == {"OK"}
    during = result.codes(marks["blackhole"] + 1.5, marks["heal"])
    assert during.get("UNAVAILABLE", 0) > 0, during
    assert recovery_s < 5.0, recovery_s
    assert result.codes(marks["heal"] + recovery_s, marks["end"]).get("OK", 0) > 0
    assert stop_s < 10 and server.proc.returncode == 0, server.stderr[-2000:]


def _phase_codes(result: LoadResult, marks: dict[str, float]) -> dict[str, dict[str, int]]:
    names = list(marks)
    return {a: result.codes(marks[a], marks[b]) for a, b in itertools.pairwise(names)}


# -- PostgreSQL restarts and kill -9 of the workloads ------------------------------------

KILLS = 20


@pytest.fixture
async def own_cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[OwnCluster]:
    # The machines this suite runs on have them (docs/verification.md): a missing
    # binary fails the test, it does not skip the restart and kill -9 checks.
    assert OwnCluster.available(), "needs the PostgreSQL 15 binaries and an OS user postgres"
    root = Path(tempfile.mkdtemp(prefix="ofp-own-pg-"))
    cluster = OwnCluster(root, free_port())
    await cluster.init()
    await cluster.start()
    try:
        yield cluster
    finally:
        with contextlib.suppress(AssertionError):
            await cluster.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)


async def test_postgres_restarts_and_twenty_kill_9s_leave_the_answers_of_one_clean_pass(
    own_cluster: OwnCluster, pool_factory: object, bus_root: Path, tmp_path: Path
) -> None:
    rng = random.Random(183)
    stream = generate(183, n_events=3000, n_keys=10, n_partitions=3)
    write_prefix(stream, bus_root, [0.2] * 3)
    admin = await asyncpg.connect(own_cluster.dsn)
    await admin.execute("CREATE DATABASE ofp_faults")
    await admin.close()
    dsn = with_database(own_cluster.dsn, "ofp_faults")
    p_env = _projector_env(dsn, bus_root)
    port = free_port()
    s_env = process_env(cli_env(dsn, bus_root, OFP_GRPC_ADDRESS=f"127.0.0.1:{port}",
                                OFP_DEADLINE_MS="1000", OFP_LOG_LEVEL="WARNING",
                                OFP_SNAPSHOT_LOG="off"))
    projectors = [await Workload.start("ofp-projector", p_env, tmp_path) for _ in range(2)]
    server: Workload | None = None
    doc = keys_request("A", ["1", "2", "3"], BASE_US + 9 * 24 * HOUR_US)
    channel, call = get_features_call(port)
    result = LoadResult()
    stop = asyncio.Event()
    load: asyncio.Task[None] | None = None
    kills = {"ofp-projector": 0, "ofp-server": 0}
    restarts: list[tuple[str, float]] = []
    direct: asyncpg.Pool | None = None
    try:
        async def ingesting() -> bool:
            nonlocal direct
            if direct is None:
                direct = await asyncpg.create_pool(dsn, min_size=1, max_size=2)
            return bool(await direct.fetchval(
                "SELECT count(*) FROM checkpoint_commits"))

        await wait_until(ingesting, 60, "ingest started")
        # Once migrated: the server refuses a database whose schema is not its own.
        server = await Workload.start("ofp-server", s_env, tmp_path)
        load = asyncio.create_task(offered_load(call, doc, rate=100, stop=stop, result=result))
        share = 0.2
        for k in range(KILLS):
            share = min(1.0, share + 0.8 / (KILLS + 2))
            append_share(stream, bus_root, share)
            if k in (5, 13):  # PostgreSQL itself, while both workloads run
                t0 = time.monotonic()
                await own_cluster.restart("fast" if k == 5 else "immediate")
                restarts.append(("fast" if k == 5 else "immediate", time.monotonic() - t0))
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            if k % 3 == 2:
                victim = server
                await server.kill()
                server = await Workload.start("ofp-server", s_env, tmp_path)
            else:
                i = rng.randrange(2)
                victim = projectors[i]
                await victim.kill()
                projectors[i] = await Workload.start("ofp-projector", p_env, tmp_path)
            assert victim.proc.returncode == -signal.SIGKILL, (victim.name, victim.stderr)
            kills[victim.name] += 1
        append_share(stream, bus_root, 1.0)
        assert direct is not None
        pool = direct

        async def all_applied() -> bool:
            return await drained(pool, stream)

        await wait_until(all_applied, 120, "every record applied")
        await asyncio.sleep(1.0)  # the server answers again after the last kill
        t_end = time.monotonic()
        stop.set()
        await load
        for w in (*projectors, server):
            assert (await w.stop(timeout_s=30)) < 10 and w.proc.returncode == 0, w.stderr[-2000:]
    finally:
        stop.set()
        if load is not None and not load.done():
            await load
        await channel.close(None)
        for w in (*projectors, *([server] if server else [])):
            await w.kill()

    try:
        codes = result.codes()
        # Killed servers refuse connections (UNAVAILABLE at the client); a restarting
        # database makes the server refuse as retryable: never INTERNAL.
        assert set(codes) <= {"OK", "UNAVAILABLE"}, codes
        assert result.codes(t_end - 1.0, t_end).get("OK", 0) > 0
        await assert_commits_fenced_and_chained(pool, stream)
        single = await pool_factory()  # type: ignore[operator]
        stream.write(tmp_path / "single")
        await project_once(single, tmp_path / "single")
        assert await projection_state(pool, stream) == await projection_state(single, stream)
        print(f"\nfault-injection restarts: kill -9 {kills}; PostgreSQL restarts"
              f" {[(m, round(s, 1)) for m, s in restarts]}; server codes {codes}")
    finally:
        await pool.close()
