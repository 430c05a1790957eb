"""The watermark after a reshard, end to end on both emulators (moto, kinesalite).

A parent shard closes at SHARD_END and receives nothing more; its last
event-time high mark must not hold the watermark (and so every answer's
freshness) back once the open partitions are further on. The watermark is the
least high mark over OPEN partitions that hold a valid record (the largest
closed one when no open partition holds one), while the basis keeps listing the
closed parents with their final offsets.

The stream is projected, resharded mid-stream, written to again and projected
again; then the real gRPC server answers as of the open partitions' latest event.
"""

from __future__ import annotations

import json
import uuid
from decimal import Decimal
from typing import Any

import asyncpg
import pytest
from google.protobuf import json_format

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.contracts.timefmt import format_micros
from ofp_projector.projector import Projector
from tests.support.harness import get_features, running_server
from tests.support.kinesis import (
    checkpoint_rows,
    create_stream,
    hash_range,
    kinesalite_endpoint,
    kinesis_client,
    kinesis_endpoint,
    kinesis_settings,
    policy_for,
    put_at,
    split_in_half,
    wait_active,
)
from tests.support.streams import BASE_US, HOUR_US, TruthEvent, brute_force, envelope, pins

__all__ = ["kinesalite_endpoint", "kinesis_endpoint"]
pytestmark = pytest.mark.integration
SHARD = "shardId-{:012d}".format
MINUTE_US = 60_000_000
KEYS = ("1", "2", "3")


@pytest.fixture(params=["moto", "kinesalite"])
def emulator(request: pytest.FixtureRequest) -> tuple[str, str]:
    fixture = {"moto": "kinesis_endpoint", "kinesalite": "kinesalite_endpoint"}[request.param]
    return request.param, str(request.getfixturevalue(fixture))


def _events(prefix: str, start_us: int, count: int, truth: list[TruthEvent]) -> list[str]:
    """`count` valid events of run A, keys 1..3 in turn, a minute apart from `start_us`."""
    lines = []
    for i in range(count):
        key, ts = KEYS[i % len(KEYS)], start_us + i * MINUTE_US
        amount = f"{i + 1}.25"
        lines.append(json.dumps(envelope(f"{prefix}{i:030x}", ts, "A",
                                         {"flow_id": key, "amount": amount})))
        truth.append(TruthEvent("A", key, ts, Decimal(amount)))
    return lines


async def test_closed_parents_no_longer_hold_the_watermark_back_after_a_reshard(
    pool: asyncpg.Pool, emulator: tuple[str, str]
) -> None:
    kind, endpoint = emulator
    name = f"ofp-wm-{uuid.uuid4().hex[:8]}"
    policy = policy_for(name)
    settings = kinesis_settings(endpoint, kinesis_get_records_limit=50)
    truth: list[TruthEvent] = []
    placed: list[tuple[str, str]] = []
    async with kinesis_client(endpoint) as client:
        await create_stream(client, name, shards=3)
        starts = [(await hash_range(client, name, SHARD(p)))[0] for p in range(3)]
        # Day 0: every shard gets events; projected before the reshard.
        for p in range(3):
            placed += await put_at(client, name, starts[p],
                                   _events(f"a{p}", BASE_US + p * MINUTE_US, 12, truth))
        assert (await Projector(settings, pool, policy).run(once=True)).records == 36

        await split_in_half(client, name, SHARD(0))  # children 3, 4
        lo0, hi0 = await hash_range(client, name, SHARD(0))
        if kind == "kinesalite":
            # Merge 1 and 2 (child 5). Writes go to the open children (as on AWS).
            await client.merge_shards(StreamName=name, ShardToMerge=SHARD(1),
                                      AdjacentShardToMerge=SHARD(2))
            targets = [lo0, (lo0 + hi0) // 2 + 1, starts[1]]
        else:
            # moto writes to the first shard of a hash range, closed parents included,
            # and copies a merge's parents into the child: merge the split's two empty
            # children (child 5), and write day 2 to the shards never resharded.
            await client.merge_shards(StreamName=name, ShardToMerge=SHARD(3),
                                      AdjacentShardToMerge=SHARD(4))
            targets = starts[1:]
        await wait_active(client, name)
        # Day 2: the open partitions move two days on; the closed parents stay at day 0.
        for i, target in enumerate(targets):
            placed += await put_at(client, name, target,
                                   _events(f"b{i}", BASE_US + 48 * HOUR_US + i * MINUTE_US,
                                           9, truth))
    totals = await Projector(settings, pool, policy).run(once=True)
    assert totals.records == len(placed) - 36

    cps = await checkpoint_rows(pool, name)
    closed = sorted(p for p, r in cps.items() if r["closed"])
    open_highs = [int(r["max_event_us"]) for r in cps.values()
                  if not r["closed"] and r["max_event_us"] is not None]
    closed_highs = [int(cps[p]["max_event_us"]) for p in closed
                    if cps[p]["max_event_us"] is not None]
    assert closed == ([0, 1, 2] if kind == "kinesalite" else [0, 3, 4])
    # The case in point: a closed parent's last high mark is two days behind.
    assert open_highs and closed_highs and min(closed_highs) < min(open_highs) - 24 * HOUR_US
    as_of = min(open_highs)  # the open partitions' latest event: they are all current

    last: dict[int, int] = {}
    for shard, seq in placed:
        p = int(shard.rsplit("-", 1)[1])
        last[p] = max(last.get(p, 0), int(seq))
    want_offsets = [(p, str(last[p] + 1) if p in last else "0") for p in sorted(cps)]

    request = {
        "pins": pins("A"),
        "as_of_time_utc": format_micros(as_of),
        "feature_keys": [{"key_type": "flow_id", "key_id": k} for k in KEYS],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
    }
    async with running_server(pool) as (_, stub):
        resp = await get_features(stub, request)
        status = json_format.MessageToDict(
            await stub.GetStatus(pb.GetStatusRequest(), timeout=10),
            preserving_proto_field_name=True)
    assert resp["status"] == "OK", resp
    snap = resp["snapshot"]
    assert snap["freshness"]["state"] == "GREEN", snap["freshness"]
    assert snap["freshness"]["flags"] == []  # no STALE_INPUT_BASIS
    basis = snap["eb_offset_basis"]
    assert basis["window_end_utc"] == format_micros(as_of)
    # The closed parents stay in the basis, with their final offsets.
    assert [(o["partition"], o["offset"]) for o in basis["offsets"]] == want_offsets
    for key in KEYS:
        want = brute_force(truth, "A", key, as_of)
        got: dict[str, Any] = snap["features"][f"flow_id:{key}"]["core_features"]
        assert {k: int(v) if isinstance(v, float) else v for k, v in got.items()} == want
    # GetStatus reports the same watermark.
    assert status["watermark_utc"] == format_micros(as_of)
    assert sorted(p["partition"] for p in status["partitions"] if p.get("closed")) == closed
