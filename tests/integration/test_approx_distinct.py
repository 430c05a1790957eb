"""approx_distinct_count: HyperLogLog tiles (lg_k 12), error measured against the exact
count, and an answer that depends only on the set of values, not on batching."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import asyncpg

from ofp.contracts.timefmt import format_micros
from ofp.policy import load_policy
from ofp.store.sketches import RSE
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import BASE_US, TOPIC, envelope, pins

POLICY = f"""
policy_id: p
revision: r1
source_topic: {TOPIC}
feature_groups:
  - name: g
    version: v1
    key_type: card_id
    features:
      - {{agg: approx_distinct_count, field: merchant, window: 7d}}
      - {{agg: distinct_count, field: merchant, window: 7d}}
      - {{agg: approx_distinct_count, field: merchant, window: 10m, name: approx_10m}}
      - {{agg: distinct_count, field: merchant, window: 10m, name: exact_10m}}
"""
MINUTE_US = 60_000_000


def _write(root: Path, n: int, distinct: int, seed: int) -> int:
    rng = random.Random(seed)
    lines = []
    for i in range(n):
        merchant = f"m{rng.randrange(distinct)}"
        ts = BASE_US + i * 30_000_000  # one every 30 s: minute and hour tiles, and edges
        card = 1 if i % 10 else 2
        lines.append(json.dumps(envelope(f"{i:032x}", ts, "A",
                                         {"card_id": card, "merchant": merchant})))
    rng.shuffle(lines)
    d = root / TOPIC
    d.mkdir(parents=True)
    (d / "partition=0.jsonl").write_text("".join(x + "\n" for x in lines))
    return BASE_US + (n - 1) * 30_000_000


async def _answer(pool: asyncpg.Pool, root: Path, policy: Any, as_of: int) -> dict[str, Any]:
    async with running_server(pool, root) as (_, stub):
        doc = await get_features(stub, {
            "pins": pins("A"), "as_of_time_utc": format_micros(as_of),
            "feature_keys": [{"key_type": "card_id", "key_id": k} for k in ("1", "2")],
            "feature_groups": [{"name": "g", "version": "v1"}]})
    snap: dict[str, Any] = doc["snapshot"]
    return snap


async def test_the_estimate_is_within_the_stated_error_and_independent_of_batching(
    pool_factory: Any, tmp_path: Path
) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "p.yaml")
    root = tmp_path / "bus"
    last = _write(root, 12_000, 8_000, seed=3)
    as_of = last + 17  # not on a minute: both edges are partial minutes
    snaps = []
    for batch_size in (97, 2000):
        pool = await pool_factory()
        await project_once(pool, root, policy=policy, batch_size=batch_size)
        snaps.append(await _answer(pool, root, policy, as_of))
        await pool.close()
    assert snaps[0]["features"] == snaps[1]["features"]
    assert snaps[0]["snapshot_hash"] == snaps[1]["snapshot_hash"]
    for key in ("card_id:1", "card_id:2"):
        values = snaps[0]["features"][key]["g"]
        exact = values["distinct_count_merchant_7d"]
        approx = values["approx_distinct_count_merchant_7d"]
        # Deterministic for these values; the bound is 3 standard errors.
        assert abs(approx - exact) <= 3 * RSE * exact, (key, approx, exact)
        # Few values: the sketch is exact (it keeps them all until it must not).
        assert values["approx_10m"] == values["exact_10m"] > 0
