"""Bad input is quarantined with its raw bytes and never stops the stream (SPEC 2.2)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.config import Settings
from ofp_projector.projector import Projector
from tests.support.harness import default_policy, project_once, settings
from tests.support.streams import BASE_US, TOPIC, envelope, generate

OK = envelope("a" * 32, BASE_US + 5, "A", {"flow_id": 1, "amount": "1"})


def _line(doc: dict[str, Any] | str) -> bytes:
    return (doc if isinstance(doc, str) else json.dumps(doc)).encode()


CASES: list[tuple[str, bytes]] = [
    ("unparseable", b'{"event_id": "x"'),
    ("unparseable", b"[1, 2, 3]"),
    ("unparseable", _line('{"envelope": ' + json.dumps(OK) + ', "extra": 1}')),
    ("envelope_invalid", _line({**OK, "ts_utc": "2026-02-06T00:00:00Z"})),
    ("envelope_invalid", _line({**OK, "ts_utc": "2026-13-06T00:00:00.000000Z"})),
    ("envelope_invalid", _line({**OK, "unknown_field": True})),
    ("envelope_invalid", _line({**OK, "manifest_fingerprint": "XYZ"})),
    ("envelope_invalid", _line({k: v for k, v in OK.items() if k != "event_id"})),
    ("envelope_invalid", _line({**OK, "seed": -1})),
    ("envelope_invalid", _line({**OK, "payload": [1]})),
    ("pins_invalid", _line({k: v for k, v in OK.items() if k != "scenario_id"})),
    ("pins_invalid", _line({**OK, "run_id": "0" * 32})),
    ("unknown_schema_major", _line({**OK, "schema_version": "2.0"})),
    ("amount_invalid", _line({**OK, "payload": {"flow_id": 1, "amount": "12,50"}})),
    ("amount_invalid", _line({**OK, "payload": {"flow_id": 1, "amount": True}})),
    ("amount_invalid", _line({**OK, "payload": {"flow_id": 1, "amount": "Infinity"}})),
    ("amount_invalid", _line({**OK, "payload": {"flow_id": 1, "amount": "1e400"}})),
    ("unparseable", _line(json.dumps(OK).replace('"1"}', "NaN}"))),
    ("key_invalid", _line({**OK, "payload": {"flow_id": 1.5}})),
    ("key_invalid", _line({**OK, "payload": {"flow_id": ""}})),
    ("key_invalid", _line({**OK, "payload": {"flow_id": "\ud800"}})),
    ("key_invalid", _line({**OK, "payload": {"flow_id": "a\u0000b"}})),
    ("envelope_invalid", _line({**OK, "event_id": "a\u0000b"})),
    ("envelope_invalid", _line({**OK, "scenario_id": "\udfff"})),
    ("unparseable", b"\xff\xfe not utf-8"),
]


async def _state(pool: asyncpg.Pool) -> dict[str, Any]:
    async with pool.acquire() as conn:
        return {
            "events": await conn.fetchval("SELECT count(*) FROM feature_events"),
            "tiles": await conn.fetchval("SELECT count(*) FROM feature_tiles"),
            "dedupe": await conn.fetchval("SELECT count(*) FROM event_dedupe"),
            "scopes": await conn.fetchval("SELECT count(*) FROM run_scopes"),
        }


@pytest.mark.parametrize("reason, raw", CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(CASES)])
async def test_each_bad_record_is_quarantined_with_raw_bytes_and_checkpoint_advances(
    pool: asyncpg.Pool, bus_root: Path, reason: str, raw: bytes
) -> None:
    d = bus_root / TOPIC
    d.mkdir(parents=True)
    good = json.dumps(envelope("e" * 32, BASE_US + 9, "A", {"flow_id": 2, "amount": 3})).encode()
    (d / "partition=0.jsonl").write_bytes(raw + b"\n" + good + b"\n")
    totals = await project_once(pool, bus_root)
    assert totals.by_outcome == {"QUARANTINED": 1, "APPLIED": 1}
    async with pool.acquire() as conn:
        rows = await conn.fetch("SELECT * FROM quarantine")
        checkpoint = await conn.fetchval(
            "SELECT next_offset FROM checkpoints WHERE stream = $1 AND partition = 0", TOPIC
        )
        counters = await conn.fetch("SELECT outcome, reason, n FROM outcome_counters")
    assert len(rows) == 1
    row = rows[0]
    assert row["reason"] == reason, row["detail"]
    assert bytes(row["raw"]) == raw
    assert (row["stream"], row["partition"], int(row["record_offset"])) == (TOPIC, 0, 0)
    assert row["detail"]
    assert int(checkpoint) == 2
    assert {(r["outcome"], r["reason"], r["n"]) for r in counters} == {
        ("QUARANTINED", reason, 1), ("APPLIED", "", 1)
    }
    # Only the good record changed state.
    assert await _state(pool) == {"events": 1, "tiles": 1, "dedupe": 1, "scopes": 1}


async def test_same_event_id_with_another_payload_is_quarantined_and_state_unchanged(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    d = bus_root / TOPIC
    d.mkdir(parents=True)
    first = envelope("f" * 32, BASE_US + 5, "A", {"flow_id": 1, "amount": "10"})
    same = {**first, "trace_id": "retry-2", "emitted_at_utc": "2026-02-06T00:00:01.000000Z"}
    changed = {**first, "payload": {"flow_id": 1, "amount": "11"}}
    (d / "partition=0.jsonl").write_text(json.dumps(first) + "\n" + json.dumps(changed) + "\n")
    (d / "partition=1.jsonl").write_text(json.dumps(same) + "\n")
    totals = await project_once(pool, bus_root)
    assert totals.by_outcome == {"APPLIED": 1, "QUARANTINED": 1, "DUPLICATE": 1}
    async with pool.acquire() as conn:
        reason = await conn.fetchval("SELECT reason FROM quarantine")
        total = await conn.fetchval("SELECT amount_sum FROM feature_tiles")
    assert reason == "payload_conflict"
    assert str(total) == "10"


async def test_a_batch_mixing_new_and_stored_event_ids_applies_only_the_new_ones(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    """One batch holds new events, a retry of a stored one and a conflicting
    reuse of another: only the new ones reach events and tiles."""
    d = bus_root / TOPIC
    d.mkdir(parents=True)
    path = d / "partition=0.jsonl"
    a = envelope("a" * 32, BASE_US + 1, "A", {"flow_id": 1, "amount": "1"})
    b = envelope("b" * 32, BASE_US + 2, "A", {"flow_id": 1, "amount": "2"})
    path.write_text(json.dumps(a) + "\n" + json.dumps(b) + "\n")
    first = await project_once(pool, bus_root)
    assert first.by_outcome == {"APPLIED": 2}

    c = envelope("c" * 32, BASE_US + 3, "A", {"flow_id": 1, "amount": "4"})
    a_retry = {**a, "trace_id": "retry-2"}
    b_changed = {**b, "payload": {"flow_id": 1, "amount": "200"}}
    e = envelope("e" * 32, BASE_US + 4, "A", {"flow_id": 2, "amount": "8"})
    with path.open("a") as f:
        for doc in (c, a_retry, b_changed, e):
            f.write(json.dumps(doc) + "\n")
    second = await project_once(pool, bus_root)
    assert second.by_outcome == {"APPLIED": 2, "DUPLICATE": 1, "QUARANTINED": 1}
    async with pool.acquire() as conn:
        events = await conn.fetch(
            "SELECT key_id, amount::text AS amount FROM feature_events ORDER BY ts_us"
        )
        tiles = await conn.fetch(
            "SELECT key_id, sum(event_count)::bigint AS n, sum(amount_sum)::text AS s"
            " FROM feature_tiles GROUP BY key_id ORDER BY key_id"
        )
        reason = await conn.fetchval("SELECT reason FROM quarantine")
    assert [(r["key_id"], r["amount"]) for r in events] == [
        ("1", "1"), ("1", "2"), ("1", "4"), ("2", "8")
    ]
    assert [(r["key_id"], r["n"], r["s"]) for r in tiles] == [("1", 3, "7"), ("2", 1, "8")]
    assert reason == "payload_conflict"


async def test_generated_stream_gives_every_record_exactly_one_outcome(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    stream = generate(17, n_events=200)
    stream.write(bus_root)
    totals = await project_once(pool, bus_root, batch_size=13)
    lines = sum(len(p) for p in stream.partitions)
    assert totals.records == lines
    assert totals.by_outcome == stream.expected_outcomes
    async with pool.acquire() as conn:
        counted = await conn.fetchval("SELECT sum(n) FROM outcome_counters")
        quarantined = await conn.fetchval("SELECT count(*) FROM quarantine")
    assert counted == lines
    assert quarantined == stream.expected_outcomes["QUARANTINED"]


async def test_database_outage_is_retried_without_losing_or_skipping(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path
) -> None:
    """Kill the projector's connections again and again: it retries and ends exact."""
    stream = generate(29, n_events=400, n_partitions=2, noise=False)
    stream.write(bus_root)
    cfg: Settings = settings(bus_root, batch_size=3)
    projector = Projector(cfg, pool, default_policy())
    await projector.prepare()
    task = asyncio.create_task(projector.run(once=True))
    admin = await asyncpg.connect(fresh_dsn)
    try:
        killed = 0
        while not task.done() and killed < 6:
            killed += await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                " AND state <> 'idle'"
            )
            await asyncio.sleep(0.02)
    finally:
        await admin.close()
    totals = await task
    assert killed > 0
    assert totals.retries > 0
    assert totals.by_outcome == {"APPLIED": 400}
    async with pool.acquire() as conn:
        events = await conn.fetchval("SELECT count(*) FROM feature_events")
        cps = await conn.fetch("SELECT partition, next_offset FROM checkpoints ORDER BY 1")
    assert events == 400
    assert [int(r["next_offset"]) for r in cps] == [len(p) for p in stream.partitions]
