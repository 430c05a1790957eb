"""The Kinesis shard reader at the edges of a shard, on both emulators (moto, kinesalite).

- Empty pages (Kinesis answers them before a shard's records and before its
  end) never close a closed shard that still holds records; an empty closed
  shard still closes, so its children are read.
- With start position LATEST, a transient failure or an expired iterator
  before the first record never skips what was written after LATEST was taken.
- A shard the stream no longer lists (dropped after its retention period) while
  its checkpoint is open is closed with a warning and a counted metric, and its
  children are read; the projector does not stop.

Faults are injected only through botocore event hooks (tests/support/kinesis.py);
the emulators are real servers over HTTP.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any, cast

import asyncpg
import pytest
import structlog
from structlog.testing import LogCapture

from ofp.store.partitions import record_partitions
from ofp_projector import kinesis_bus
from ofp_projector.projector import Projector, make_bus
from tests.support.kinesis import (
    EmptyPages,
    assert_brute_force,
    checkpoint_rows,
    create_stream,
    hash_range,
    kinesalite_endpoint,
    kinesis_client,
    kinesis_endpoint,
    kinesis_settings,
    outcome_totals,
    policy_for,
    put_at,
    put_lines,
    service_error,
    snapshots,
    split_in_half,
)
from tests.support.streams import generate

__all__ = ["kinesalite_endpoint", "kinesis_endpoint"]
pytestmark = pytest.mark.integration
SHARD = "shardId-{:012d}".format


@pytest.fixture(params=["moto", "kinesalite"])
def endpoint(request: pytest.FixtureRequest) -> str:
    fixture = {"moto": "kinesis_endpoint", "kinesalite": "kinesalite_endpoint"}[request.param]
    return str(request.getfixturevalue(fixture))


def _name() -> str:
    return f"ofp-r2-{uuid.uuid4().hex[:8]}"


async def test_empty_pages_never_close_a_closed_shard_that_holds_records(
    pool: asyncpg.Pool, endpoint: str
) -> None:
    name = _name()
    stream = generate(71, n_events=120, n_keys=6, n_partitions=1, noise=False)
    lines = stream.partitions[0]
    policy = policy_for(name)
    async with kinesis_client(endpoint) as client:
        await create_stream(client, name, shards=2)
        lo, _ = await hash_range(client, name, SHARD(0))
        first = await put_at(client, name, lo, lines[:80])
        await split_in_half(client, name, SHARD(0))  # children 2, 3
        await split_in_half(client, name, SHARD(1))  # an empty closed parent; children 4, 5
        # kinesalite writes these to child 2; moto to the first shard of the hash range,
        # the closed parent 0 itself.
        second = await put_at(client, name, lo, lines[80:])
    # Parent 0: its first three pages are empty (before any record is handed out), and
    # two more mid-shard; the empty parent 1 answers its first two reads empty.
    pages = EmptyPages({SHARD(0): {1, 2, 3, 5, 6}, SHARD(1): {1, 2}})
    settings = kinesis_settings(endpoint, kinesis_get_records_limit=25)
    projector = Projector(settings, pool, policy,
                          bus=make_bus(settings, policy, client_hook=pages.attach))
    totals = await asyncio.wait_for(projector.run(once=True), 60)

    # Nothing lost: every record of the parent (and of the children) applied, once.
    assert await outcome_totals(pool, name) == {"APPLIED": len(lines)}
    assert totals.records == len(lines)
    assert pages.injected[SHARD(0)] == 5 and pages.injected[SHARD(1)] >= 1
    cps = await checkpoint_rows(pool, name)
    assert sorted(cps) == [0, 1, 2, 3, 4, 5]
    assert [p for p, r in sorted(cps.items()) if r["closed"]] == [0, 1]
    in_parent = [int(seq) for shard, seq in first + second if shard == SHARD(0)]
    assert len(in_parent) >= len(first)
    assert cps[0]["next_offset"] == max(in_parent) + 1  # every record of the parent applied
    assert cps[1]["next_offset"] == 0
    assert {p: list(r["parents"]) for p, r in cps.items() if r["parents"]} == {
        2: [0], 3: [0], 4: [1], 5: [1]}
    assert_brute_force(await snapshots(pool, stream), stream)


class _IteratorRequests:
    """botocore hook: the GetShardIterator requests the reader makes, in order."""

    def __init__(self) -> None:
        self.kinds: list[str] = []

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.kinesis.GetShardIterator",
                                    self.hook)

    def hook(self, params: dict[str, Any], **_: Any) -> None:
        self.kinds.append(params["ShardIteratorType"])


class _WriteThenFail(_IteratorRequests):
    """The first GetRecords call (so after the first iterator was obtained) writes
    `lines` to the stream and then fails with `code`, as the service would answer it."""

    def __init__(self, client: Any, stream: str, lines: list[str], code: str, status: int):
        super().__init__()
        self.client, self.stream, self.lines = client, stream, lines
        self.code, self.status = code, status
        self.fired = False

    def attach(self, client: Any) -> None:
        super().attach(client)
        client.meta.events.register("before-call.kinesis.GetRecords", self.fail_once)

    async def fail_once(self, **_: Any) -> Any:
        if self.fired:
            return None
        self.fired = True
        await put_lines(self.client, self.stream, self.lines)
        return service_error(self.code, self.status)


@pytest.mark.parametrize(("code", "status", "renewed_as"), [
    ("InternalFailure", 500, []),
    ("ExpiredIteratorException", 400, ["AT_TIMESTAMP"]),
])
async def test_latest_keeps_its_place_across_a_failure_before_the_first_record(
    pool: asyncpg.Pool, endpoint: str, code: str, status: int, renewed_as: list[str]
) -> None:
    name = _name()
    stream = generate(73, n_events=60, n_keys=4, n_partitions=2, noise=False)
    old, new = stream.partitions
    policy = policy_for(name)
    settings = kinesis_settings(endpoint, kinesis_start_position="LATEST")
    async with kinesis_client(endpoint) as client:
        await create_stream(client, name, shards=1)
        await put_lines(client, name, old)
        if renewed_as:
            # The place LATEST is remembered at may be up to two seconds early (whole
            # seconds of the server's Date): `old` is written before that.
            await asyncio.sleep(2.1)
        fault = _WriteThenFail(client, name, new, code, status)
        projector = Projector(settings, pool, policy,
                              bus=make_bus(settings, policy, client_hook=fault.attach))
        totals = await asyncio.wait_for(projector.run(once=True), 60)
    assert fault.fired
    # Everything written after LATEST was taken is applied; nothing from before it.
    assert await outcome_totals(pool, name) == {"APPLIED": len(new)}
    assert totals.records == len(new)
    # A failed call leaves the iterator valid (same one again); an expired one is
    # renewed where LATEST was taken, never at a new LATEST.
    assert fault.kinds == ["LATEST", *renewed_as]


@pytest.fixture
def reader_log(monkeypatch: pytest.MonkeyPatch) -> Iterator[LogCapture]:
    """The reader's log lines (its module logger, whatever structlog's configuration)."""
    cap = LogCapture()
    monkeypatch.setattr(kinesis_bus, "_log", structlog.wrap_logger(None, processors=[cap]))
    yield cap


async def test_a_shard_that_left_retention_with_an_open_checkpoint_is_closed_and_reported(
    pool: asyncpg.Pool, endpoint: str, reader_log: LogCapture
) -> None:
    name = _name()
    stream = generate(79, n_events=90, n_keys=5, n_partitions=1, noise=False)
    lines = stream.partitions[0]
    policy = policy_for(name)
    async with kinesis_client(endpoint) as client:
        await create_stream(client, name, shards=2)
        await put_lines(client, name, lines)
    # An earlier run recorded shard 9, read it up to a point, and recorded shard 0 as its
    # child; since then shard 9 aged out of the stream's retention: ListShards no longer
    # lists it and GetShardIterator answers ResourceNotFoundException.
    async with pool.acquire() as conn:
        await record_partitions(cast(asyncpg.Connection, conn), stream=name,
                                offset_kind="kinesis_sequence",
                                partitions=[(9, ()), (0, (9,))])
        await conn.execute("UPDATE checkpoints SET next_offset = 42 WHERE stream = $1"
                           " AND partition = 9", name)
    settings = kinesis_settings(endpoint)
    projector = Projector(settings, pool, policy)
    totals = await asyncio.wait_for(projector.run(once=True), 60)

    cps = await checkpoint_rows(pool, name)
    assert cps[9]["closed"] and cps[9]["next_offset"] == 42  # closed where it stood
    assert list(cps[0]["parents"]) == [9]
    assert totals.records == len(lines)  # the child and its sibling were read
    assert await outcome_totals(pool, name) == {"APPLIED": len(lines)}
    first_child = await pool.fetchval(
        "SELECT min(committed_at) FROM checkpoint_commits WHERE stream = $1 AND partition = 0",
        name)
    parent_closed = await pool.fetchval(
        "SELECT max(committed_at) FROM checkpoint_commits WHERE stream = $1 AND partition = 9",
        name)
    assert first_child > parent_closed
    assert projector.metrics.registry.get_sample_value(
        "ofp_projector_partitions_left_retention_total", {"partition": "9"}) == 1
    warned = [e for e in reader_log.entries if e["event"] == "partition_left_retention"]
    assert len(warned) == 1
    assert warned[0]["log_level"] == "warning"
    assert (warned[0]["stream"], warned[0]["partition"], warned[0]["next_offset"]) == (
        name, 9, "42")
    assert_brute_force(await snapshots(pool, stream), stream)
