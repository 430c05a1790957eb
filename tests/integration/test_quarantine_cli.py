"""`ofp quarantine list|show|replay` against a real PostgreSQL and the real projector.

The fix here is a configuration one an operator really makes: events stamped
20 minutes ahead of the database clock are quarantined as `ts_in_future` under a
60 s skew allowance; with the allowance raised to an hour, a replay applies them.
The state after the replay must equal the state of a projection that accepted
them at their offsets in the first place, and the checkpoints must not move.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.store import quarantine as store
from ofp.store.rollout import read_projection
from tests.support.cli import cli_env, run_ofp
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import TOPIC, envelope, keys_request

pytestmark = pytest.mark.integration

MINUTE_US = 60_000_000


def _stream(bus_root: Path, now_us: int) -> None:
    """Partition 0: a valid event, one 20 min ahead, an unparseable line, a valid one.
    Partition 1: a valid event and one 25 min ahead, of the same keys."""

    def line(event_id: str, minutes: int, key: int, amount: str) -> str:
        return json.dumps(envelope(event_id, now_us + minutes * MINUTE_US, "A",
                                   {"flow_id": key, "amount": amount}))

    d = bus_root / TOPIC
    d.mkdir(parents=True, exist_ok=True)
    (d / "partition=0.jsonl").write_text("\n".join([
        line("e-1", -30, 1, "10.00"), line("f-1", 20, 1, "7.25"), "{not json",
        line("e-2", -10, 2, "3.50")]) + "\n", encoding="utf-8")
    (d / "partition=1.jsonl").write_text("\n".join([
        line("e-3", -5, 1, "1.00"), line("f-2", 25, 2, "2.00")]) + "\n", encoding="utf-8")


async def _checkpoints(pool: asyncpg.Pool) -> dict[int, int]:
    rows = await pool.fetch("SELECT partition, next_offset FROM checkpoints")
    return {int(r[0]): int(r[1]) for r in rows}


async def _answer(pool: asyncpg.Pool, bus_root: Path, as_of_us: int) -> dict[str, Any]:
    async with running_server(pool, bus_root) as (_, stub):
        answer = await get_features(stub, keys_request("A", ["1", "2"], as_of_us))
    return dict(answer["snapshot"])


async def test_replay_applies_fixed_records_as_if_valid_at_their_offsets_and_keeps_checkpoints(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path, tmp_path: Path,
    pool_factory: Callable[[], Awaitable[asyncpg.Pool]],
) -> None:
    now_us = time.time_ns() // 1000
    _stream(bus_root, now_us)
    totals = await project_once(pool, bus_root, max_future_skew_s=60)
    assert totals.by_outcome.get("QUARANTINED") == 3
    before = await _checkpoints(pool)
    env = cli_env(fresh_dsn, bus_root, OFP_MAX_FUTURE_SKEW_S="3600")

    rc, out, err = await run_ofp("quarantine", "list", "--json", env=env, cwd=tmp_path)
    assert rc == 0, err
    listed = json.loads(out)
    assert {c["reason"]: c["open"] for c in listed["by_reason"]} == {
        "ts_in_future": 2, "unparseable": 1}
    assert [(r["partition"], r["offset"], r["reason"]) for r in listed["records"]] == [
        (0, "1", "ts_in_future"), (0, "2", "unparseable"), (1, "1", "ts_in_future")]
    rc, out, _ = await run_ofp("quarantine", "list", env=env, cwd=tmp_path)
    assert rc == 0 and "3 open, 0 resolved" in out and "ts_in_future" in out

    rc, out, err = await run_ofp("quarantine", "replay", "--json", env=env, cwd=tmp_path)
    assert rc == 0, err
    replayed = json.loads(out)
    assert replayed["by_outcome"] == {"APPLIED": 2, "QUARANTINED": 1}
    assert [(r["partition"], r["offset"], r["outcome"], r["reason"])
            for r in replayed["records"]] == [
        (0, "1", "APPLIED", ""), (0, "2", "QUARANTINED", "unparseable"),
        (1, "1", "APPLIED", "")]
    assert '"event": "progress"' in err  # off a terminal: JSON progress lines
    assert await _checkpoints(pool) == before  # the basis does not move

    first_id = listed["records"][0]["quarantine_id"]
    rc, out, err = await run_ofp("quarantine", "show", str(first_id), "--json", env=env,
                                 cwd=tmp_path)
    assert rc == 0, err
    shown = json.loads(out)
    assert (shown["partition"], shown["offset"], shown["reason"]) == (0, "1", "ts_in_future")
    assert (shown["replays"], shown["replay_outcome"], shown["open"]) == (1, "APPLIED", False)
    assert shown["replayed_at_utc"] is not None and '"f-1"' in shown["raw"]

    # The same answer as a projection that accepted the events at their offsets.
    as_of_us = now_us + 30 * MINUTE_US
    replayed_state = await _answer(pool, bus_root, as_of_us)
    accepting = await pool_factory()
    await project_once(accepting, bus_root, max_future_skew_s=3600)
    reference = await _answer(accepting, bus_root, as_of_us)
    assert replayed_state["features"] == reference["features"]
    assert replayed_state["eb_offset_basis"] == reference["eb_offset_basis"]
    assert replayed_state["snapshot_hash"] == reference["snapshot_hash"]

    # A second replay takes only what is still open and changes no state.
    rc, out, err = await run_ofp("quarantine", "replay", "--json", env=env, cwd=tmp_path)
    assert rc == 0, err
    again = json.loads(out)
    assert again["by_outcome"] == {"QUARANTINED": 1}
    assert (await _answer(pool, bus_root, as_of_us))["snapshot_hash"] == \
        replayed_state["snapshot_hash"]
    rc, out, err = await run_ofp("status", "--json", env=env, cwd=tmp_path)
    assert rc == 0, err
    assert json.loads(out)["quarantine_open"] == 1


async def test_concurrent_replays_apply_a_record_once(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    now_us = time.time_ns() // 1000
    _stream(bus_root, now_us)
    await project_once(pool, bus_root, max_future_skew_s=60)
    async with pool.acquire() as conn:
        projection = await read_projection(conn)
        ids = await store.open_ids(conn, TOPIC, reasons=["ts_in_future"])
    assert projection is not None
    assert len(ids) == 2

    async def replay(quarantine_id: int) -> store.ReplayOutcome | None:
        async with pool.acquire() as conn:
            return await store.replay_one(conn, quarantine_id, projection=projection,
                                          run_id=None, scope_cache={},
                                          max_future_us=3600 * 1_000_000)

    results = await asyncio.gather(*(replay(i) for i in ids for _ in range(3)))
    done = [r for r in results if r is not None]
    assert sorted((r.quarantine_id, r.outcome) for r in done) == [
        (ids[0], "APPLIED"), (ids[1], "APPLIED")]
    rows = await pool.fetch("SELECT event_id FROM event_dedupe ORDER BY event_id")
    assert [r[0] for r in rows] == ["e-1", "e-2", "e-3", "f-1", "f-2"]
    replays = await pool.fetch("SELECT replays FROM quarantine WHERE quarantine_id = ANY($1)",
                               ids)
    assert [r[0] for r in replays] == [1, 1]
