"""Same data, same answer: replays, batch sizes, restarts and permutations (SPEC 3.1, 4.4)."""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg

from ofp.contracts.timefmt import format_micros
from ofp.policy import policy_from_dict
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import HOUR_US, TOPIC, Stream, generate, pins

PoolFactory = Callable[[], Awaitable[asyncpg.Pool]]


def _requests(stream: Stream) -> list[dict[str, Any]]:
    ts = sorted(e.ts_us for e in stream.truth)
    keys = [{"key_type": "flow_id", "key_id": k} for k in [*stream.keys, "nope"]]
    out = []
    for run in ("A", "B"):
        for as_of in (ts[0] + HOUR_US, ts[len(ts) // 2], ts[-1], ts[-1] + 2 * HOUR_US):
            out.append({
                "pins": pins(run),
                "as_of_time_utc": format_micros(as_of),
                "feature_keys": keys,
                "feature_groups": [{"name": "core_features", "version": "v1"}],
            })
    return out


async def _answers(pool: asyncpg.Pool, bus_root: Path, stream: Stream) -> list[dict[str, Any]]:
    async with running_server(pool, bus_root) as (_, stub):
        answers = []
        for req in _requests(stream):
            snap = (await get_features(stub, req))["snapshot"]
            snap.pop("created_at_utc")
            answers.append(snap)
        return answers


async def test_replays_agree_for_any_batch_size_restart_and_permutation(
    pool_factory: PoolFactory, tmp_path: Path
) -> None:
    stream = generate(23, n_events=300, n_keys=4, n_partitions=3)

    # 1. One pass, large batches.
    root1 = tmp_path / "one"
    stream.write(root1)
    pool1 = await pool_factory()
    await project_once(pool1, root1, batch_size=1000)
    reference = await _answers(pool1, root1, stream)

    # 2. A fresh replay in tiny batches, restarted half way: the first run sees
    #    only a prefix of every partition (and a torn last line), the second the rest.
    root2 = tmp_path / "restart"
    topic_dir = root2 / TOPIC
    topic_dir.mkdir(parents=True)
    for p, lines in enumerate(stream.partitions):
        cut = len(lines) // 2
        text = "".join(line + "\n" for line in lines[:cut])
        torn = lines[cut][: len(lines[cut]) // 2] if cut < len(lines) else ""
        (topic_dir / f"partition={p}.jsonl").write_text(text + torn, encoding="utf-8")
    pool2 = await pool_factory()
    await project_once(pool2, root2, batch_size=7)
    stream.write(root2)  # the rest arrives (the torn line is completed)
    await project_once(pool2, root2, batch_size=5)
    assert await _answers(pool2, root2, stream) == reference

    # 3. Every partition's lines in another order.
    rng = random.Random(99)
    permuted = Stream([rng.sample(p, k=len(p)) for p in stream.partitions], stream.truth)
    root3 = tmp_path / "permuted"
    permuted.write(root3)
    pool3 = await pool_factory()
    await project_once(pool3, root3, batch_size=64)
    assert await _answers(pool3, root3, stream) == reference


TWO_GROUPS = {
    "policy_id": "ofp.features.test",
    "revision": "r1",
    "source_topic": TOPIC,
    "feature_groups": [
        {"name": "core_features", "version": "v1", "key_type": "flow_id"},
        {"name": "short_features", "version": "v2", "key_type": "flow_id",
         "windows": [{"window": "10m", "duration": "10m", "ttl": "1h"}]},
    ],
}


async def test_group_and_key_order_in_request_do_not_change_the_hash(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    stream = generate(5, n_events=50, n_keys=2, n_partitions=1, runs=("A",), noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root, policy=policy_from_dict(TWO_GROUPS))
    req = _requests(stream)[2]
    req["feature_groups"] = [
        {"name": "core_features", "version": "v1"},
        {"name": "short_features", "version": "v2"},
    ]
    async with running_server(pool, bus_root) as (_, stub):
        a = (await get_features(stub, req))["snapshot"]
        assert [g["name"] for g in a["feature_groups"]] == ["core_features", "short_features"]
        reordered = {
            **req,
            "feature_keys": req["feature_keys"][::-1],
            "feature_groups": req["feature_groups"][::-1],
        }
        b = (await get_features(stub, reordered))["snapshot"]
        assert a["snapshot_hash"] == b["snapshot_hash"]
        assert a["features"] == b["features"]
        assert any("short_features" in f for f in a["features"].values())
        later = {**req, "as_of_time_utc": format_micros(stream.truth[0].ts_us + 1)}
        c = (await get_features(stub, later))["snapshot"]
        assert c["snapshot_hash"] != a["snapshot_hash"]
