"""Tuple keys of the v1 feature language: card and merchant together (docs/features.md)."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg

from ofp.contracts.timefmt import format_micros
from ofp.policy import load_policy
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import BASE_US, TOPIC, envelope, pins

POLICY = f"""
policy_id: p
revision: r1
source_topic: {TOPIC}
feature_groups:
  - name: pair
    version: v1
    key_type: card_id+merchant.id
    features:
      - {{agg: count, window: 1h}}
      - {{agg: sum, field: amount, window: 1h}}
  - name: card
    version: v1
    key_type: card_id
    features:
      - {{agg: count, window: 1h}}
"""


async def test_a_tuple_key_counts_card_and_merchant_together(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    (tmp_path / "p.yaml").write_text(POLICY)
    policy = load_policy(tmp_path / "p.yaml")
    payloads = [
        {"card_id": 1, "merchant": {"id": "m1"}, "amount": "5"},
        {"card_id": 1, "merchant": {"id": "m1"}, "amount": "7"},
        {"card_id": 1, "merchant": {"id": "m2"}, "amount": "1"},
        {"card_id": 1, "amount": "100"},                            # no merchant: pair skips it
        {"card_id": 2, "merchant": {"id": "a|b\\c"}, "amount": "2"},  # escaped parts
        {"card_id": 3, "merchant": {"id": True}, "amount": "2"},     # key_invalid
    ]
    d = bus_root / TOPIC
    d.mkdir(parents=True)
    (d / "partition=0.jsonl").write_text("".join(
        json.dumps(envelope(f"{i:032x}", BASE_US + i, "A", p)) + "\n"
        for i, p in enumerate(payloads)))
    await project_once(pool, bus_root, policy=policy)
    assert await pool.fetchval(
        "SELECT reason FROM quarantine") == "key_invalid"
    doc = {
        "pins": pins("A"),
        "as_of_time_utc": format_micros(BASE_US + 100),
        "feature_keys": [
            {"key_type": "card_id+merchant.id", "key_id": "1|m1"},
            {"key_type": "card_id+merchant.id", "key_id": "1|m2"},
            {"key_type": "card_id+merchant.id", "key_id": "2|a\\|b\\\\c"},
            {"key_type": "card_id+merchant.id", "key_id": "1|m9"},
            {"key_type": "card_id", "key_id": "1"},
        ],
        "feature_groups": [{"name": "pair", "version": "v1"}, {"name": "card", "version": "v1"}],
    }
    async with running_server(pool, bus_root) as (_, stub):
        snap = (await get_features(stub, doc))["snapshot"]
    f = snap["features"]
    assert f["card_id+merchant.id:1|m1"]["pair"]["count_1h"] == 2
    assert f["card_id+merchant.id:1|m1"]["pair"]["sum_amount_1h"] == "12"
    assert f["card_id+merchant.id:1|m2"]["pair"]["sum_amount_1h"] == "1"
    assert f["card_id+merchant.id:2|a\\|b\\\\c"]["pair"]["count_1h"] == 1
    assert f["card_id:1"]["card"]["count_1h"] == 4
    assert snap["freshness"]["missing_feature_keys"] == ["card_id+merchant.id:1|m9"]
