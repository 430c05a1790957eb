"""GetStatus and the health ladder against a real projection (SPEC 4.6).

A scripted stream is projected; the status read (one statement) must report exactly
what was written: checkpoints = line counts, outcome counters = the generator's truth,
the watermark GetFeatures reports, lag where the bus reported it; and the ladder must
move GREEN -> AMBER -> RED at each threshold. "now" is injected where the test needs
it to sit on an edge; otherwise it is the database clock of the same snapshot.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from google.protobuf import json_format

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.contracts.schemas import first_error
from ofp.health import Thresholds, status_report
from ofp.store.status import read_status
from tests.support.harness import project_once, running_server
from tests.support.streams import TOPIC, envelope, generate, malformed_lines

pytestmark = pytest.mark.integration

S = 1_000_000
SCHEMA = "get_status_response.schema.yaml"


def write_lines(bus_root: Path, partition: int, lines: list[str]) -> None:
    d = bus_root / TOPIC
    d.mkdir(parents=True, exist_ok=True)
    with (d / f"partition={partition}.jsonl").open("a", encoding="utf-8") as f:
        f.writelines(line + "\n" for line in lines)


def recent_events(n: int, *, ago_s: float, prefix: str) -> list[str]:
    """Valid events whose event time is `ago_s` before the wall clock."""
    ts = time.time_ns() // 1000 - int(ago_s * S)
    return [
        json.dumps(envelope(f"{prefix}{i:030x}", ts + i, "A", {"flow_id": i % 3, "amount": "1"}))
        for i in range(n)
    ]


def report(facts: Any, *, now_us: int | None = None, **thresholds: int) -> dict[str, Any]:
    if now_us is not None:
        facts = dataclasses.replace(facts, now_us=now_us)
    return status_report(facts, Thresholds(**thresholds))


def reasons(doc: dict[str, Any]) -> set[tuple[str, str]]:
    return {(r["code"], r["state"]) for r in doc["health"]["reasons"]}


def as_contract_json(resp: pb.GetStatusResponse) -> dict[str, Any]:
    """proto3 JSON read back with 64-bit integers as numbers, as the contract has them."""
    from ofp_cli.client import _int64_as_numbers

    text = json_format.MessageToJson(
        resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    doc: dict[str, Any] = _int64_as_numbers(json.loads(text), resp.DESCRIPTOR)
    return doc


async def test_get_status_reports_checkpoints_counters_and_watermark_after_a_stream(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    stream = generate(21, n_events=240, n_partitions=3)
    stream.write(bus_root)
    await project_once(pool, bus_root)

    async with running_server(pool, bus_root) as (_server, stub):
        resp = await stub.GetStatus(pb.GetStatusRequest(request_id="st-1"), timeout=10)
    doc = as_contract_json(resp)

    assert first_error(SCHEMA, doc) is None, first_error(SCHEMA, doc)
    assert doc["stream"] == TOPIC and doc["request_id"] == "st-1"
    assert doc["policy"]["policy_id"] == "ofp.features.v0"
    assert {p["partition"]: int(p["next_offset"]) for p in doc["partitions"]} == {
        p: len(lines) for p, lines in enumerate(stream.partitions)
    }
    for p in doc["partitions"]:
        o = p["outcomes"]
        assert o["applied"] + o["duplicate"] + o["ignored"] + o["quarantined"] == len(
            stream.partitions[p["partition"]]
        )
        assert p["last_applied_at_utc"] <= doc["observed_at_utc"]
        assert p["closed"] is False
    totals = doc["totals"]
    assert {k.upper(): totals[k] for k in ("applied", "duplicate", "ignored", "quarantined")} == (
        stream.expected_outcomes
    )
    quarantined = {r["reason"]: r["count"] for r in totals["by_reason"]
                   if r["outcome"] == "QUARANTINED"}
    assert sum(quarantined.values()) == len(malformed_lines()) == doc["quarantine_open"]
    assert {"unparseable", "envelope_invalid", "amount_invalid"} <= set(quarantined)
    # The watermark is the one GetFeatures puts in window_end_utc (min of the high marks).
    assert doc["watermark_utc"] == min(p["event_time_high_utc"] for p in doc["partitions"])
    # Generated event times are in 2026-02, behind the clock: WATERMARK_STALE says RED.
    assert doc["health"]["state"] == "RED"
    assert reasons(doc) == {("WATERMARK_STALE", "RED"), ("QUARANTINE_OPEN", "AMBER")}
    assert doc["health"]["thresholds"] == Thresholds().as_json()


async def test_get_status_uses_the_configured_thresholds(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(22, n_events=50, n_partitions=2, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    lenient = {"status_watermark_amber_s": 10**9, "status_watermark_red_s": 10**9}
    async with running_server(pool, bus_root, **lenient) as (_server, stub):
        doc = as_contract_json(await stub.GetStatus(pb.GetStatusRequest(), timeout=10))
    assert doc["health"] == {
        "state": "GREEN", "reasons": [],
        "thresholds": {**Thresholds().as_json(), "watermark_amber_s": 10**9,
                       "watermark_red_s": 10**9},
    }


async def test_get_status_is_red_before_anything_was_projected(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    async with running_server(pool, bus_root) as (_server, stub):
        doc = as_contract_json(await stub.GetStatus(pb.GetStatusRequest(), timeout=10))
        named = as_contract_json(
            await stub.GetStatus(pb.GetStatusRequest(stream=TOPIC), timeout=10)
        )
    assert "stream" not in doc and doc["partitions"] == []
    assert reasons(doc) == {("NO_ACTIVE_POLICY", "RED"), ("NO_PARTITIONS", "RED")}
    assert named["stream"] == TOPIC and named["health"]["state"] == "RED"


async def test_health_ladder_moves_at_each_threshold_after_a_scripted_stream(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    # Two partitions of fresh events (event time ~ now), nothing malformed.
    write_lines(bus_root, 0, recent_events(20, ago_s=5, prefix="a"))
    write_lines(bus_root, 1, recent_events(10, ago_s=5, prefix="b"))
    await project_once(pool, bus_root)
    facts = await read_status(pool)
    assert [p.next_offset for p in facts.partitions] == ["20", "10"]
    assert facts.quarantine_open == 0
    applied = max(p.last_applied_us or 0 for p in facts.partitions)
    mark = min(p.max_event_us or 0 for p in facts.partitions)

    doc = report(facts)
    assert doc["health"]["state"] == "GREEN", doc["health"]
    assert 0 <= doc["partitions"][0]["checkpoint_age_ms"] < 60_000

    # The checkpoint thresholds, with the watermark thresholds out of the way.
    far = {"watermark_amber_s": 10**6, "watermark_red_s": 10**6}
    for after_s, state in ((119, "GREEN"), (120, "AMBER"), (299, "AMBER"), (300, "RED")):
        doc = report(facts, now_us=applied + after_s * S, **far)
        assert doc["health"]["state"] == state, (after_s, doc["health"])
        if state != "GREEN":
            assert reasons(doc) == {("CHECKPOINT_STALE", state)}

    # The watermark thresholds, with the checkpoint thresholds out of the way.
    far = {"checkpoint_amber_s": 10**6, "checkpoint_red_s": 10**6}
    for after_s, state in ((119, "GREEN"), (120, "AMBER"), (299, "AMBER"), (300, "RED")):
        doc = report(facts, now_us=mark + after_s * S, **far)
        assert doc["health"]["state"] == state, (after_s, doc["health"])
        assert doc["watermark_age_ms"] == after_s * 1000

    # A malformed record arrives: quarantined, and the ladder goes AMBER.
    write_lines(bus_root, 1, [malformed_lines()[0]])
    await project_once(pool, bus_root)
    facts = await read_status(pool)
    doc = report(facts)
    assert facts.quarantine_open == 1
    assert doc["health"]["state"] == "AMBER" and reasons(doc) == {("QUARANTINE_OPEN", "AMBER")}
    assert doc["partitions"][1]["next_offset"] == "11"

    # An operator resolves the quarantine (exported, then removed): GREEN again, while
    # the outcome counters keep the history.
    await pool.execute("DELETE FROM quarantine")
    doc = report(await read_status(pool))
    assert doc["health"]["state"] == "GREEN"
    assert doc["totals"]["quarantined"] == 1


async def test_status_reports_lag_and_treats_a_caught_up_idle_partition_as_current(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    write_lines(bus_root, 0, recent_events(5, ago_s=1, prefix="c"))
    await project_once(pool, bus_root)
    # What the projector records when it polls (Kinesis MillisBehindLatest, or a file
    # partition read to its end): one partition caught up, one 150 s behind the tip.
    await pool.execute(
        "UPDATE checkpoints SET lag_records = 0, lag_ms = 0, lag_observed_at = now()"
    )
    facts = await read_status(pool)
    # Ten minutes later with no newer observation: nobody knows it is current any more.
    idle = report(facts, now_us=facts.now_us + 600 * S,
                  watermark_amber_s=10**6, watermark_red_s=10**6)
    assert reasons(idle) == {("CHECKPOINT_STALE", "RED")}

    # Nothing applied for an hour, but observed caught up just now: current, GREEN.

    await pool.execute(
        "UPDATE checkpoints SET last_applied_at = now() - interval '1 hour',"
        " lag_records = 0, lag_ms = 0, lag_observed_at = now()"
    )
    doc = report(await read_status(pool), watermark_amber_s=10**6, watermark_red_s=10**6)
    assert doc["health"]["state"] == "GREEN", doc["health"]
    p = doc["partitions"][0]
    assert (p["lag_records"], p["lag_ms"]) == (0, 0) and p["checkpoint_age_ms"] < 60_000

    await pool.execute("UPDATE checkpoints SET lag_records = 900, lag_ms = 150000")
    doc = report(await read_status(pool), watermark_amber_s=10**6, watermark_red_s=10**6)
    assert reasons(doc) == {("CHECKPOINT_STALE", "RED"), ("BEHIND_BUS", "AMBER")}
    assert doc["partitions"][0]["lag_records"] == 900
