"""The last line of "no record can stop a partition": a record the database refuses.

Classification bounds every field it knows of, so these tests take a bound
away (the key length) to let records through that PostgreSQL refuses
(SQLSTATE 54000: an index entry too large), as a bound forgotten in some later
change would. The projector must pin each refusal to its record, quarantine it
as `store_refused`, and apply the rest of the batch, at any batch size.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import asyncpg
import pytest

from ofp import events
from ofp.store.writes import Record, find_store_refusals
from tests.support.harness import project_once
from tests.support.streams import BASE_US, TOPIC, envelope


def _huge_key(rng: random.Random) -> str:
    # Incompressible: far past the ~2.7 kB a btree entry may hold, even compressed.
    return "".join(chr(rng.randrange(0x4E00, 0x9FFF)) for _ in range(3000))


def _lines(seed: int, n: int, bad_every: int) -> tuple[list[str], set[int]]:
    rng = random.Random(seed)
    lines, bad = [], set()
    for i in range(n):
        key: object = i % 5
        if i % bad_every == bad_every - 1:
            key = _huge_key(rng)
            bad.add(i)
        doc = envelope(f"{i:032x}", BASE_US + i, "A", {"flow_id": key, "amount": "1"})
        lines.append(json.dumps(doc))
    return lines, bad


@pytest.mark.parametrize("batch_size", [1, 7, 2000])
async def test_records_the_store_refuses_are_quarantined_and_the_batch_applies(
    pool: asyncpg.Pool, bus_root: Path, monkeypatch: pytest.MonkeyPatch, batch_size: int
) -> None:
    monkeypatch.setattr(events, "MAX_KEY_CHARS", 10_000)  # a forgotten bound
    lines, bad = _lines(1, 40, bad_every=9)
    d = bus_root / TOPIC
    d.mkdir(parents=True)
    (d / "partition=0.jsonl").write_text("".join(x + "\n" for x in lines), encoding="utf-8")

    await project_once(pool, bus_root, batch_size=batch_size)

    assert await pool.fetchval("SELECT next_offset FROM checkpoints") == len(lines)
    rows = await pool.fetch(
        "SELECT record_offset, reason, detail FROM quarantine ORDER BY record_offset")
    assert [int(r["record_offset"]) for r in rows] == sorted(bad)
    assert {r["reason"] for r in rows} == {"store_refused"}
    assert all("SQLSTATE 54000" in r["detail"] for r in rows)
    counts = {(r["outcome"], r["reason"]): r["n"] for r in await pool.fetch(
        "SELECT outcome, reason, n FROM outcome_counters")}
    assert counts == {("APPLIED", ""): len(lines) - len(bad),
                      ("QUARANTINED", "store_refused"): len(bad)}
    assert await pool.fetchval("SELECT count(*) FROM event_dedupe") == len(lines) - len(bad)


async def test_bisection_pins_every_refusal_and_changes_nothing(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """find_store_refusals names exactly the refused records and leaves the store as it was."""
    from ofp.policy import load_policy
    from ofp.store.writes import record_policy
    from tests.support.harness import POLICY_PATH

    monkeypatch.setattr(events, "MAX_KEY_CHARS", 10_000)
    policy = load_policy(POLICY_PATH)
    lines, bad = _lines(2, 64, bad_every=13)
    records = [Record(i, x.encode(), events.classify(x.encode(), policy, None))
               for i, x in enumerate(lines)]
    async with pool.acquire() as conn:
        group_ids = await record_policy(conn, policy, None)
        found = await find_store_refusals(conn, records, group_ids, {})
        assert [f.offset for f in found] == sorted(bad)
        assert {f.sqlstate for f in found} == {"54000"}
        for table in ("event_dedupe", "feature_events", "feature_tiles", "run_scopes"):
            assert await conn.fetchval(f"SELECT count(*) FROM {table}") == 0
