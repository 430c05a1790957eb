"""A small, deterministic sample stream for `ofp dev` and the quickstart."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

from ofp.contracts.timefmt import format_micros, parse_micros

SAMPLE_PINS: dict[str, Any] = {
    "platform_run_id": "platform_20260206T000000Z",
    "scenario_run_id": "0123456789abcdef0123456789abcdef",
    "scenario_id": "baseline_v1",
    "manifest_fingerprint": "a" * 64,
    "parameter_hash": "b" * 64,
    "seed": 42,
}
SAMPLE_START = "2026-02-06T00:00:00.000000Z"


def sample_events(n: int = 500, *, keys: int = 5, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    t0 = parse_micros(SAMPLE_START)
    events = []
    for i in range(n):
        ts = t0 + i * 20 * 60 * 1_000_000 // 10 + rng.randrange(0, 60_000_000)
        events.append(
            {
                "event_id": f"{i:032x}",
                "event_type": "transaction_authorised",
                "ts_utc": format_micros(ts),
                **SAMPLE_PINS,
                "payload": {
                    "flow_id": rng.randrange(1, keys + 1),
                    "event_seq": i,
                    "amount": f"{rng.randrange(100, 50000) / 100:.2f}",
                    "fraud_flag": rng.random() < 0.01,
                },
            }
        )
    return events


def write_sample_bus(root: str | Path, topic: str, *, partitions: int = 2, n: int = 500) -> Path:
    """Write the sample stream round-robin over `partitions` files; returns the topic dir."""
    topic_dir = Path(root) / topic
    topic_dir.mkdir(parents=True, exist_ok=True)
    files = [(topic_dir / f"partition={p}.jsonl").open("w", encoding="utf-8")
             for p in range(partitions)]
    try:
        for i, event in enumerate(sample_events(n)):
            files[i % partitions].write(json.dumps(event, separators=(",", ":")) + "\n")
    finally:
        for f in files:
            f.close()
    return topic_dir
