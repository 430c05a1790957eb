"""The late-data audit (docs/audit.md): a snapshot served at T, then an event for T
arrives; `ofp audit` re-derives the snapshot and names the event and the diff."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.contracts.timefmt import format_micros
from tests.support.cli import cli_env, run_ofp
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import BASE_US, HOUR_US, TOPIC, envelope, keys_request

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
T = BASE_US + 3 * 24 * HOUR_US


def append(bus_root: Path, partition: int, docs: list[dict[str, Any]]) -> int:
    """Append events to a partition; the offset of the first one."""
    path = bus_root / TOPIC / f"partition={partition}.jsonl"
    path.parent.mkdir(parents=True, exist_ok=True)
    before = len(path.read_text().splitlines()) if path.exists() else 0
    with open(path, "a", encoding="utf-8") as f:
        for doc in docs:
            f.write(json.dumps(doc) + "\n")
    return before


def event(n: int, key: int, ts_us: int, amount: str = "10.5") -> dict[str, Any]:
    return envelope(f"{n:032x}", ts_us, "A", {"flow_id": key, "amount": amount,
                                             "event_seq": n})


async def audit(fresh_dsn: str, bus_root: Path, *args: str) -> tuple[int, str, str]:
    return await run_ofp("audit", "--since", "1h", *args,
                         env=cli_env(fresh_dsn, bus_root), cwd=REPO)


def lines(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines()]


async def test_a_late_event_for_t_is_reported_with_its_offset_and_the_diff(
    pool: asyncpg.Pool, bus_root: Path, fresh_dsn: str
) -> None:
    # On time: events of keys 1, 2 and 3 before T, on two partitions, and one
    # after T so the watermark covers T.
    append(bus_root, 0, [event(1, 1, T - 2 * HOUR_US), event(2, 2, T - 30 * 60_000_000)])
    append(bus_root, 1, [event(3, 1, T - 20 * 60_000_000), event(4, 3, T - HOUR_US),
                         event(5, 3, T + HOUR_US)])
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root) as (_, stub):
        served = await get_features(stub, keys_request("A", ["1", "2"], T))
        other = await get_features(stub, keys_request("A", ["3"], T))
        before = await get_features(stub, keys_request("A", ["1"], T - 3 * HOUR_US))
    digest = served["snapshot"]["snapshot_hash"]
    ones = served["snapshot"]["features"]["flow_id:1"]["core_features"]

    # Nothing arrived late yet: nothing to report.
    code, out, err = await audit(fresh_dsn, bus_root, "--json")
    assert code == 0, err
    (summary,) = lines(out)
    assert summary["type"] == "summary" and summary["snapshots_audited"] == 3
    assert summary["answers_changed"] == 0 and summary["late_events"] == 0

    # Late: an event of key 1 for 10 minutes before T on partition 0, one of key 1
    # after T (not for T), one 8 days before T (outside every window), and one of
    # key 3 for T on partition 1 (another snapshot's key).
    late_offset = append(bus_root, 0, [event(6, 1, T - 10 * 60_000_000, "4.25"),
                                       event(7, 1, T + 5 * 60_000_000),
                                       event(8, 1, T - 8 * 24 * HOUR_US)])
    other_offset = append(bus_root, 1, [event(9, 3, T - 60_000_000, "1")])
    await project_once(pool, bus_root)

    code, out, err = await audit(fresh_dsn, bus_root, "--json")
    assert code == 1, err
    assert out, err
    found = lines(out)
    by_hash = {d.get("snapshot_hash"): d for d in found[:-1]}
    summary = found[-1]
    assert set(by_hash) == {digest, other["snapshot"]["snapshot_hash"]}
    assert before["snapshot"]["snapshot_hash"] not in by_hash  # its as-of precedes the event
    report = by_hash[digest]
    assert report["type"] == "answer_changed"
    assert report["as_of_time_utc"] == format_micros(T)
    assert report["late_events"] == [{
        "event_id": f"{6:032x}", "partition": 0, "offset": str(late_offset),
        "ts_utc": format_micros(T - 10 * 60_000_000)}]
    diffs = {(d["key"], d["feature"]): (d["served"], d["now"]) for d in report["diffs"]}
    assert diffs[("flow_id:1", "event_count_1h")] == (ones["event_count_1h"],
                                                      ones["event_count_1h"] + 1)
    assert ("flow_id:1", "event_count_24h") in diffs
    assert all(key == "flow_id:1" for key, _ in diffs)  # key 2 is unchanged
    assert report["counts"] == {"features_changed": len(report["diffs"]), "late_events": 1}
    third = by_hash[other["snapshot"]["snapshot_hash"]]
    assert [(e["event_id"], e["partition"], e["offset"]) for e in third["late_events"]] == [
        (f"{9:032x}", 1, str(other_offset))]
    assert summary["answers_changed"] == 2 and summary["snapshots_audited"] == 3
    assert summary["late_events"] == 2

    # The table names the same things for a person.
    code, out, _ = await audit(fresh_dsn, bus_root)
    assert code == 1
    assert digest in out and f"{6:032x}" in out and "event_count_1h" in out
    assert "2 answers would now differ" in out


async def test_every_mode_audits_each_window_once(
    pool: asyncpg.Pool, bus_root: Path, fresh_dsn: str
) -> None:
    append(bus_root, 0, [event(1, 1, T - HOUR_US), event(2, 1, T + HOUR_US)])
    await project_once(pool, bus_root)
    async with running_server(pool, bus_root) as (_, stub):
        await get_features(stub, keys_request("A", ["1"], T))
    append(bus_root, 0, [event(3, 1, T - 60_000_000)])
    await project_once(pool, bus_root)
    code, out, err = await audit(fresh_dsn, bus_root, "--json", "--every", "1s", "--runs", "2")
    assert code == 1, err
    summaries = [d for d in lines(out) if d["type"] == "summary"]
    # The first run audits the snapshot; the second, what was recorded since: nothing.
    assert [s["snapshots_audited"] for s in summaries] == [1, 0]
    assert summaries[0]["answers_changed"] == 1
