"""Day tiles of the two distinct kinds (migration 0008): a store written before
them answers as one written with them, and a day sketch created after the fact
holds its whole day, not only the values written since."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg

from ofp.policy import load_policy
from ofp.store.db import MIGRATIONS_DIR
from ofp.windows import DAY_US, HOUR_US
from tests.integration.test_approx_distinct import POLICY, _answer, _write
from tests.support.harness import project_once
from tests.support.streams import BASE_US, TOPIC, envelope


def _late(root: Path, day: int) -> None:
    """Late events inside an old whole day of the window, with values never seen."""
    lines = [json.dumps(envelope(f"{10**9 + i:032x}", day + 3 * HOUR_US + i * 1_000_000, "A",
                                 {"card_id": 1 + i % 2, "merchant": f"late-{i}"}))
             for i in range(300)]
    with (root / TOPIC / "partition=0.jsonl").open("a") as f:
        f.write("".join(x + "\n" for x in lines))


async def test_state_without_day_tiles_answers_the_same_and_day_sketches_are_made_whole(
    pool_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "p.yaml")
    root = tmp_path / "bus"
    last = _write(root, 12_000, 8_000, seed=5)  # 100 hours: several whole days
    as_of = last + 17
    pool = await pool_factory()
    await project_once(pool, root, policy=policy, batch_size=500)
    with_days = await _answer(pool, root, policy, as_of)
    # The state as written before 0008: no day tiles; then 0008 itself.
    await pool.execute(f"DELETE FROM fv_sketches WHERE tile_us = {DAY_US}")
    await pool.execute(f"DELETE FROM fv_distinct WHERE tile_us = {DAY_US}")
    await pool.execute((MIGRATIONS_DIR / "0008_add_day_tiles.sql").read_text())
    assert await pool.fetchval(f"SELECT count(*) FROM fv_distinct WHERE tile_us = {DAY_US}")
    assert not await pool.fetchval(f"SELECT count(*) FROM fv_sketches WHERE tile_us = {DAY_US}")
    # Distinct from the migrated day tiles, approximate from each day's hour sketches.
    again = await _answer(pool, root, policy, as_of)
    assert (again["features"], again["snapshot_hash"]) == (
        with_days["features"], with_days["snapshot_hash"])
    # A late batch into a whole day creates its day sketch: from the day's hour
    # sketches and the new values, so the answer is the one of a store that had
    # every event from the start.
    day = (BASE_US // DAY_US + 1) * DAY_US
    assert day + DAY_US <= as_of and as_of - 7 * 24 * HOUR_US < day
    _late(root, day)
    await project_once(pool, root, policy=policy, batch_size=500)
    assert await pool.fetchval(
        f"SELECT count(*) FROM fv_sketches WHERE tile_us = {DAY_US} AND tile_start_us = $1", day)
    upgraded = await _answer(pool, root, policy, as_of)
    fresh: asyncpg.Pool = await pool_factory()
    await project_once(fresh, root, policy=policy, batch_size=500)
    reference = await _answer(fresh, root, policy, as_of)
    assert upgraded["features"] == reference["features"]
    assert upgraded["features"] != with_days["features"]
    await fresh.close()
    await pool.close()
