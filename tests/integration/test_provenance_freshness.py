"""Basis, isolation and freshness (SPEC 2.5, 4.2, 4.3)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncpg

from ofp.contracts.hashing import basis_digest, verify_response
from ofp.contracts.timefmt import format_micros
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import BASE_US, HOUR_US, TOPIC, envelope, generate
from tests.support.streams import keys_request as req


def write_lines(bus_root: Path, partition: int, docs: list[dict[str, Any]]) -> None:
    import json

    d = bus_root / TOPIC
    d.mkdir(parents=True, exist_ok=True)
    with (d / f"partition={partition}.jsonl").open("a", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")


async def test_basis_offsets_equal_line_counts_and_hash_recomputes(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    stream = generate(2, n_events=120, n_partitions=4)
    stream.write(bus_root)
    await project_once(pool, bus_root, batch_size=16)
    async with running_server(pool, bus_root) as (_, stub):
        doc = await get_features(stub, req("A", stream.keys, BASE_US + 48 * HOUR_US))
    basis = doc["snapshot"]["eb_offset_basis"]
    assert basis["stream"] == TOPIC
    assert basis["offset_kind"] == "file_line"
    assert basis["offsets"] == [
        {"partition": p, "offset": str(len(lines))} for p, lines in enumerate(stream.partitions)
    ]
    assert basis["basis_digest"] == basis_digest(TOPIC, "file_line", basis["offsets"])
    ok, claimed, recomputed = verify_response(doc)
    assert ok and claimed == recomputed
    # The watermark is the minimum over partitions of each one's largest valid ts.
    assert "window_end_utc" in basis


async def test_run_b_never_sees_run_a_state(pool: asyncpg.Pool, bus_root: Path) -> None:
    write_lines(bus_root, 0, [
        envelope("a" * 32, BASE_US + 10, "A", {"flow_id": 7, "amount": "5"}),
        envelope("b" * 32, BASE_US + 20, "B", {"flow_id": 8, "amount": "6"}),
    ])
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root) as (_, stub):
        a = (await get_features(stub, req("A", ["7", "8"], BASE_US + 30)))["snapshot"]
        b = (await get_features(stub, req("B", ["7", "8"], BASE_US + 30)))["snapshot"]
    assert set(a["features"]) == {"flow_id:7"}
    assert a["freshness"]["missing_feature_keys"] == ["flow_id:8"]
    assert set(b["features"]) == {"flow_id:8"}
    assert b["features"]["flow_id:8"]["core_features"]["amount_sum_1h"] == "6"
    assert b["freshness"]["missing_feature_keys"] == ["flow_id:7"]


async def test_same_event_id_in_two_runs_is_applied_in_each(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    write_lines(bus_root, 0, [
        envelope("c" * 32, BASE_US + 10, "A", {"flow_id": 1, "amount": "1"}),
        envelope("c" * 32, BASE_US + 10, "B", {"flow_id": 1, "amount": "1"}),
    ])
    totals = await project_once(pool, bus_root)
    assert totals.by_outcome == {"APPLIED": 2}


async def test_freshness_states_follow_the_watermark_missing_keys_and_ttl(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    t = BASE_US + 100 * HOUR_US
    write_lines(bus_root, 0, [
        envelope("1" * 32, t - 5 * HOUR_US, "A", {"flow_id": 1, "amount": "2.50"}),
        envelope("2" * 32, t, "A", {"flow_id": 2, "amount": "1"}),
    ])
    write_lines(bus_root, 1, [envelope("3" * 32, t, "A", {"flow_id": 2, "amount": "1"})])
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root, max_basis_lag_s=300) as (_, stub):
        green = (await get_features(stub, req("A", ["2"], t)))["snapshot"]["freshness"]
        assert green == {
            "state": "GREEN", "flags": [], "stale_groups": [], "missing_groups": [],
            "missing_feature_keys": [],
        }
        # Key 1's last event is 5 h before T: beyond the 1h ttl, within 24h / 7d.
        ttl = (await get_features(stub, req("A", ["1"], t)))["snapshot"]["freshness"]
        assert ttl["state"] == "AMBER"
        assert ttl["flags"] == ["STALE_BY_TTL"]
        assert ttl["stale_groups"] == ["core_features"]

        missing = (await get_features(stub, req("A", ["2", "404"], t)))["snapshot"]["freshness"]
        assert missing["state"] == "AMBER"
        assert missing["flags"] == ["MISSING_FEATURE_STATE"]
        assert missing["missing_feature_keys"] == ["flow_id:404"]
        assert missing["missing_groups"] == []

        only_missing = (await get_features(stub, req("A", ["404"], t)))["snapshot"]["freshness"]
        assert only_missing["missing_groups"] == ["core_features"]

        # The watermark is min over partitions of their largest ts: here exactly t.
        ahead = (await get_features(stub, req("A", ["2"], t + 1)))["snapshot"]
        assert ahead["eb_offset_basis"]["window_end_utc"] == format_micros(t)
        assert ahead["freshness"]["state"] == "AMBER"
        assert ahead["freshness"]["flags"] == ["STALE_INPUT_BASIS"]
        assert ahead["freshness"]["stale_groups"] == ["core_features"]

        far = (await get_features(stub, req("A", ["2"], t + 301 * 1_000_000)))["snapshot"]
        assert far["freshness"]["state"] == "RED"
        assert far["freshness"]["flags"] == ["STALE_INPUT_BASIS"]
        edge = (await get_features(stub, req("A", ["2"], t + 300 * 1_000_000)))["snapshot"]
        assert edge["freshness"]["state"] == "AMBER"


async def test_watermark_is_the_minimum_over_partitions_and_counts_duplicates(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    early, late = BASE_US + HOUR_US, BASE_US + 9 * HOUR_US
    dup = envelope("9" * 32, late, "A", {"flow_id": 3, "amount": "1"})
    write_lines(bus_root, 0, [dup, envelope("8" * 32, early, "A", {"flow_id": 3})])
    # Partition 1 holds only a re-delivery of the late event: DUPLICATE still counts.
    write_lines(bus_root, 1, [dup])
    # Partition 2 holds only an ignored event: it does not hold the watermark back.
    ignored = envelope("7" * 32, BASE_US, "A", {"flow_id": 3}, "decision_response")
    write_lines(bus_root, 2, [ignored])
    totals = await project_once(pool, bus_root)
    assert totals.by_outcome == {"APPLIED": 2, "DUPLICATE": 1, "IGNORED": 1}
    async with running_server(pool, bus_root) as (_, stub):
        snap = (await get_features(stub, req("A", ["3"], late)))["snapshot"]
    assert snap["eb_offset_basis"]["window_end_utc"] == format_micros(late)
    assert snap["features"]["flow_id:3"]["core_features"]["event_count_24h"] == 2
