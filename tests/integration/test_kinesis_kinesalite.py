"""The Kinesis bus against kinesalite, a second and stricter Kinesis emulator (npm).

Unlike moto, kinesalite hands out 56-digit sequence numbers (not 1, 2, ...),
routes writes after a split or merge to the children, answers a null
`NextShardIterator` at the end of a closed shard, expires iterators after
300 s and answers bad requests with AWS's error codes. The helpers are the
moto suite's (tests/support/kinesis.py). `make kinesalite` installs it; a
missing binary fails these tests, it never skips them.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from ofp_projector.kinesis_bus import KinesisBus
from ofp_projector.projector import Projector, make_bus
from tests.support.harness import project_once
from tests.support.kinesis import (
    assert_brute_force,
    create_stream,
    kinesalite_endpoint,
    kinesis_client,
    kinesis_settings,
    outcome_totals,
    policy_for,
    put_lines,
    put_partitions,
    snapshots,
    wait_active,
    wait_until,
)
from tests.support.streams import generate

__all__ = ["kinesalite_endpoint"]
pytestmark = pytest.mark.integration
PoolFactory = Callable[[], Awaitable[asyncpg.Pool]]
SEQ_DIGITS = 56


def _name() -> str:
    return f"ofp-kl-{uuid.uuid4().hex[:8]}"


def _last_plus_one(seqs: list[str]) -> str:
    """The exclusive-next checkpoint after `seqs`: decimal big-integer arithmetic."""
    return str(max(int(s) for s in seqs) + 1)


def _by_shard(placed: list[tuple[str, str]]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for shard_id, seq in placed:
        out.setdefault(int(shard_id.rsplit("-", 1)[1]), []).append(seq)
    return out


async def _checkpoints(pool: asyncpg.Pool, stream: str) -> dict[int, asyncpg.Record]:
    return {r["partition"]: r for r in await pool.fetch(
        "SELECT partition, next_offset, closed, parents FROM checkpoints WHERE stream = $1",
        stream)}


async def test_kinesalite_and_file_bus_give_the_same_values_with_56_digit_sequences(
    pool_factory: PoolFactory, bus_root: Path, kinesalite_endpoint: str
) -> None:
    name = _name()
    stream = generate(31, n_events=300, n_keys=5, n_partitions=3)
    policy = policy_for(name)
    stream.write(bus_root, topic=name)
    file_pool = await pool_factory()
    await project_once(file_pool, bus_root, policy=policy)

    async with kinesis_client(kinesalite_endpoint) as client:
        await create_stream(client, name, shards=3)
        seqs = await put_partitions(client, name, stream.partitions)
    assert all(len(s) == SEQ_DIGITS for part in seqs for s in part)
    k_pool = await pool_factory()
    settings = kinesis_settings(kinesalite_endpoint, kinesis_get_records_limit=37)
    totals = await Projector(settings, k_pool, policy).run(once=True)
    assert totals.records == sum(len(p) for p in stream.partitions)

    file_snaps = await snapshots(file_pool, stream)
    k_snaps = await snapshots(k_pool, stream)
    want_offsets = [(p, _last_plus_one(part)) for p, part in enumerate(seqs)]
    for f, k in zip(file_snaps, k_snaps, strict=True):
        for field in ("features", "run_config_digest", "feature_def_policy_rev", "freshness",
                      "pins", "as_of_time_utc", "feature_groups", "graph_version"):
            assert k.get(field) == f.get(field), field
        assert k["eb_offset_basis"]["window_end_utc"] == f["eb_offset_basis"]["window_end_utc"]
        basis = k["eb_offset_basis"]
        assert (basis["stream"], basis["offset_kind"]) == (name, "kinesis_sequence")
        # Exclusive-next: the last 56-digit sequence number + 1, exact (no float on the way).
        assert [(o["partition"], o["offset"]) for o in basis["offsets"]] == want_offsets
    _assert_offsets_are_exact(await _checkpoints(k_pool, name), dict(want_offsets))
    assert_brute_force(k_snaps, stream)
    assert await outcome_totals(k_pool, name) == {
        k: v for k, v in stream.expected_outcomes.items() if v
    } == await outcome_totals(file_pool, name)

    # Resuming from the checkpoints (AFTER_SEQUENCE_NUMBER of checkpoint - 1) reads nothing.
    again = await Projector(settings, k_pool, policy).run(once=True)
    assert again.records == 0


def _assert_offsets_are_exact(cps: dict[int, asyncpg.Record], want: dict[int, str]) -> None:
    got = {p: str(r["next_offset"]) for p, r in cps.items()}
    assert got == want
    assert all(len(v) == SEQ_DIGITS for v in got.values())


async def test_kinesalite_split_and_merge_mid_stream_route_new_records_to_the_children(
    pool: asyncpg.Pool, kinesalite_endpoint: str
) -> None:
    name = _name()
    stream = generate(47, n_events=450, n_keys=30, n_partitions=1, noise=False)
    lines = stream.partitions[0]
    policy = policy_for(name)
    settings = kinesis_settings(kinesalite_endpoint, batch_size=10)
    gate = _Gate(passes=3)
    projector = Projector(settings, pool, policy,
                          bus=make_bus(settings, policy, client_hook=gate.attach))
    async with kinesis_client(kinesalite_endpoint) as client:
        await create_stream(client, name, shards=3)
        before = _by_shard(await put_lines(client, name, lines[:200]))
        assert sorted(before) == [0, 1, 2]
        task = asyncio.create_task(projector.run())
        try:
            async def some_applied() -> bool:
                return bool(await pool.fetchval("SELECT count(*) FROM checkpoint_commits"))

            await wait_until(some_applied, 30)
            applied_at_reshard = await pool.fetchval(
                "SELECT coalesce(sum(n), 0) FROM outcome_counters WHERE stream = $1", name)
            # Split shard 0 (children 3, 4) and merge 1 and 2 (child 5) while the
            # projector is in the middle of the parents (held at the gate), then write more.
            shard0 = (await client.list_shards(StreamName=name))["Shards"][0]
            lo = int(shard0["HashKeyRange"]["StartingHashKey"])
            hi = int(shard0["HashKeyRange"]["EndingHashKey"])
            await client.split_shard(StreamName=name, ShardToSplit=shard0["ShardId"],
                                     NewStartingHashKey=str((lo + hi) // 2))
            await wait_active(client, name)
            await client.merge_shards(StreamName=name, ShardToMerge="shardId-000000000001",
                                      AdjacentShardToMerge="shardId-000000000002")
            await wait_active(client, name)
            after = _by_shard(await put_lines(client, name, lines[200:]))
            # kinesalite (like AWS) writes only to open shards: the children.
            assert sorted(after) == [3, 4, 5]
            gate.open.set()

            async def all_read() -> bool:
                got = await pool.fetchval(
                    "SELECT coalesce(sum(n), 0) FROM outcome_counters WHERE stream = $1", name)
                return bool(int(got) >= len(lines))

            await wait_until(all_read, 60)
        finally:
            projector.stop()
            await asyncio.wait_for(task, 30)
    assert 0 < applied_at_reshard <= 30  # at most 3 GetRecords of 10 before the reshard

    # Nothing lost, nothing applied twice: no copies on kinesalite, so no DUPLICATE either.
    assert await outcome_totals(pool, name) == {"APPLIED": len(lines)}
    cps = await _checkpoints(pool, name)
    assert sorted(cps) == [0, 1, 2, 3, 4, 5]
    assert {p: list(r["parents"]) for p, r in cps.items() if r["parents"]} == {
        3: [0], 4: [0], 5: [1, 2]}
    assert [p for p, r in sorted(cps.items()) if r["closed"]] == [0, 1, 2]
    # Closed parents keep their final offsets (last sequence + 1); children too.
    _assert_offsets_are_exact(cps, {
        p: _last_plus_one(seqs) for p, seqs in {**before, **after}.items()})

    commits = await pool.fetch(
        "SELECT partition, committed_at, from_offset, next_offset"
        " FROM checkpoint_commits WHERE stream = $1 ORDER BY committed_at", name)
    by_p: dict[int, list[Any]] = {}
    for r in commits:
        by_p.setdefault(r["partition"], []).append(r)
    assert sorted(by_p) == [0, 1, 2, 3, 4, 5]
    # A child's first commit comes after its parents' last (closing) commit.
    for child, parents in ((3, [0]), (4, [0]), (5, [1, 2])):
        first = by_p[child][0]["committed_at"]
        assert all(first > by_p[p][-1]["committed_at"] for p in parents), child
    # Every partition's exclusive-next chain has no gap and no overlap.
    for chain in by_p.values():
        for a, b in itertools.pairwise(chain):
            assert b["from_offset"] == a["next_offset"]

    snaps = await snapshots(pool, stream)
    assert_brute_force(snaps, stream)
    assert [o["partition"] for o in snaps[0]["eb_offset_basis"]["offsets"]] == [0, 1, 2, 3, 4, 5]


class _Gate:
    """botocore hook: lets the first `passes` GetRecords calls through, then holds every
    further one until `open` is set (the test reshards meanwhile)."""

    def __init__(self, passes: int) -> None:
        self.passes = passes
        self.open = asyncio.Event()

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-call.kinesis.GetRecords", self.hook)

    async def hook(self, **_: Any) -> None:
        if self.passes > 0:
            self.passes -= 1
            return
        await self.open.wait()


class _IteratorLog:
    """botocore hook: the GetShardIterator requests the reader makes."""

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.kinesis.GetShardIterator",
                                    self.hook)

    def hook(self, params: dict[str, Any], **_: Any) -> None:
        self.requests.append(dict(params))


async def test_kinesalite_resume_after_restart_applies_exactly_the_new_records(
    pool: asyncpg.Pool, kinesalite_endpoint: str
) -> None:
    """Project, stop, put more (after a split), project again: the second run resumes
    AFTER_SEQUENCE_NUMBER of each checkpoint - 1, applies exactly the new records,
    closes the split parent at kinesalite's null iterator and reads its children."""
    name = _name()
    stream = generate(61, n_events=240, n_keys=12, n_partitions=1, noise=False)
    lines = stream.partitions[0]
    policy = policy_for(name)
    settings = kinesis_settings(kinesalite_endpoint, kinesis_get_records_limit=25)
    async with kinesis_client(kinesalite_endpoint) as client:
        await create_stream(client, name, shards=2)
        first = _by_shard(await put_lines(client, name, lines[:140]))
        totals = await Projector(settings, pool, policy).run(once=True)
        assert totals.records == 140
        cps = await _checkpoints(pool, name)
        _assert_offsets_are_exact(cps, {p: _last_plus_one(s) for p, s in first.items()})

        # Split shard 0 two seconds (kinesalite's sequence clock ticks in seconds) after
        # its last record: reading on from that record, kinesalite first answers an
        # empty page with a next iterator, and only the next read the null one.
        await asyncio.sleep(2.0)
        shard0 = (await client.list_shards(StreamName=name))["Shards"][0]
        lo = int(shard0["HashKeyRange"]["StartingHashKey"])
        hi = int(shard0["HashKeyRange"]["EndingHashKey"])
        await client.split_shard(StreamName=name, ShardToSplit=shard0["ShardId"],
                                 NewStartingHashKey=str((lo + hi) // 2))
        await wait_active(client, name)
        second = _by_shard(await put_lines(client, name, lines[140:]))
    assert set(second) == {1, 2, 3}

    log = _IteratorLog()
    again = Projector(settings, pool, policy,
                      bus=make_bus(settings, policy, client_hook=log.attach))
    totals = await again.run(once=True)
    assert totals.records == len(lines) - 140
    assert await outcome_totals(pool, name) == {"APPLIED": len(lines)}
    resumed = {r["ShardId"]: r for r in log.requests if r["ShardId"] in (
        "shardId-000000000000", "shardId-000000000001")}
    for p, seqs in first.items():
        r = resumed[f"shardId-{p:012d}"]
        assert r["ShardIteratorType"] == "AFTER_SEQUENCE_NUMBER"
        assert r["StartingSequenceNumber"] == max(seqs, key=int)
    cps = await _checkpoints(pool, name)
    assert [p for p, r in sorted(cps.items()) if r["closed"]] == [0]
    merged = {**first}
    for p, seqs in second.items():
        merged[p] = merged.get(p, []) + seqs
    _assert_offsets_are_exact(cps, {p: _last_plus_one(s) for p, s in merged.items()})
    assert_brute_force(await snapshots(pool, stream), stream)


class _IteratorAger:
    """botocore hook: makes the 1st, 4th, 7th ... GetRecords call carry an iterator
    created 301 s ago (re-encrypted with kinesalite's published key), so kinesalite
    itself answers its real ExpiredIteratorException; the after-call hook counts them."""

    def __init__(self) -> None:
        self.calls = 0
        self.aged = 0
        self.expired_answers = 0

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.kinesis.GetRecords", self.age)
        client.meta.events.register("after-call.kinesis.GetRecords", self.seen)

    def age(self, params: dict[str, Any], **_: Any) -> None:
        self.calls += 1
        if self.calls % 3 == 1:
            params["ShardIterator"] = _aged_iterator(params["ShardIterator"], 301)
            self.aged += 1

    def seen(self, parsed: dict[str, Any], **_: Any) -> None:
        if parsed.get("Error", {}).get("Code") == "ExpiredIteratorException":
            self.expired_answers += 1


# kinesalite's iterator cipher (lib db/index.js, ITERATOR_PWD_KEY / _IV): public constants.
_KEY = bytes.fromhex("1133a5a833666b49abf28c8ba302930f0b2fb240dccd43cf4dfbc0ca91f17751")
_IV = bytes.fromhex("7bf139dbabbea2d9995d6fcae1dff7da")


def _aged_iterator(iterator: str, seconds: int) -> str:
    from cryptography.hazmat.primitives import padding
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    raw = base64.b64decode(iterator)
    cipher = Cipher(algorithms.AES(_KEY), modes.CBC(_IV))
    dec = cipher.decryptor()
    unpad = padding.PKCS7(128).unpadder()
    plain = unpad.update(dec.update(raw[8:]) + dec.finalize()) + unpad.finalize()
    pieces = plain.decode().split("/")
    pieces[0] = str(int(time.time() * 1000) - seconds * 1000).zfill(14)
    pad = padding.PKCS7(128).padder()
    data = pad.update("/".join(pieces).encode()) + pad.finalize()
    enc = cipher.encryptor()
    return base64.b64encode(raw[:8] + enc.update(data) + enc.finalize()).decode()


async def test_kinesalite_real_expired_iterators_are_renewed_and_lose_nothing(
    pool: asyncpg.Pool, kinesalite_endpoint: str
) -> None:
    name = _name()
    stream = generate(53, n_events=200, n_keys=4, n_partitions=2)
    policy = policy_for(name)
    async with kinesis_client(kinesalite_endpoint) as client:
        await create_stream(client, name, shards=2)
        await put_lines(client, name, [line for part in stream.partitions for line in part])
    settings = kinesis_settings(kinesalite_endpoint, kinesis_get_records_limit=25)
    ager = _IteratorAger()
    projector = Projector(settings, pool, policy,
                          bus=make_bus(settings, policy, client_hook=ager.attach))
    totals = await projector.run(once=True)
    assert ager.aged >= 3 and ager.expired_answers == ager.aged
    assert totals.records == sum(len(p) for p in stream.partitions)
    assert await outcome_totals(pool, name) == {
        k: v for k, v in stream.expected_outcomes.items() if v}
    assert_brute_force(await snapshots(pool, stream), stream)


async def test_kinesalite_bad_requests_fail_fast_with_the_service_error(
    pool: asyncpg.Pool, kinesalite_endpoint: str
) -> None:
    # A stream that does not exist: the projector stops with ResourceNotFoundException.
    missing = _name()
    settings = kinesis_settings(kinesalite_endpoint)
    with pytest.raises(ClientError) as info:
        await asyncio.wait_for(Projector(settings, pool, policy_for(missing)).run(once=True), 20)
    assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
    assert missing in str(info.value)

    # A reader of that stream, and a checkpoint that is not a sequence number of its
    # shard: GetShardIterator is refused at once, never retried forever.
    name = _name()
    async with kinesis_client(kinesalite_endpoint) as client:
        await create_stream(client, name, shards=2)
        placed = await put_lines(client, name, ["{}"] * 3)
    bus = KinesisBus(stream_name=missing, region="us-east-1", endpoint_url=kinesalite_endpoint)
    await bus.start()
    try:
        with pytest.raises(ClientError) as info:
            await asyncio.wait_for(bus.open(0, 0).read(10), 10)
        assert info.value.response["Error"]["Code"] == "ResourceNotFoundException"
        bus.stream = name
        other = 1 - int(placed[0][0].rsplit("-", 1)[1])  # a number from the other shard
        with pytest.raises(ClientError) as info:
            await asyncio.wait_for(bus.open(other, int(placed[0][1]) + 1).read(10), 10)
        assert info.value.response["Error"]["Code"] == "InvalidArgumentException"
    finally:
        await bus.close()
