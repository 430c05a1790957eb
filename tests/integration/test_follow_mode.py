"""Follow mode: an appended line becomes visible without a restart (SPEC 2.3)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import asyncpg
import grpc

from ofp.contracts.timefmt import format_micros
from ofp_projector.projector import Projector
from tests.support.harness import default_policy, get_features, running_server, settings
from tests.support.streams import BASE_US, TOPIC, envelope, pins


async def test_appended_lines_and_new_partitions_are_applied_while_following(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    d = bus_root / TOPIC
    d.mkdir(parents=True)
    first = envelope("1" * 32, BASE_US + 1, "A", {"flow_id": 5, "amount": "1"})
    (d / "partition=0.jsonl").write_text(json.dumps(first) + "\n")
    projector = Projector(settings(bus_root, poll_interval_ms=10), pool, default_policy())
    await projector.prepare()
    task = asyncio.create_task(projector.run())
    request = {
        "pins": pins("A"),
        "as_of_time_utc": format_micros(BASE_US + 10),
        "feature_keys": [{"key_type": "flow_id", "key_id": "5"}],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
    }

    async def count_when(expected: int) -> dict[str, object]:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                snap = (await get_features(stub, request))["snapshot"]
            except grpc.aio.AioRpcError as exc:
                # Until the first line is applied the run scope is unknown.
                assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
                await asyncio.sleep(0.02)
                continue
            values = snap["features"].get("flow_id:5", {}).get("core_features", {})
            if values.get("event_count_1h") == expected:
                return snap
            await asyncio.sleep(0.02)
        raise AssertionError(f"count {expected} never became visible")

    try:
        async with running_server(pool, bus_root) as (_, stub):
            await count_when(1)
            # A torn line is not read; completing it makes it visible.
            second = json.dumps(envelope("2" * 32, BASE_US + 2, "A", {"flow_id": 5}))
            with (d / "partition=0.jsonl").open("a") as f:
                f.write(second[:20])
                f.flush()
                await asyncio.sleep(0.1)
                f.write(second[20:] + "\n")
            await count_when(2)
            # A partition file that appears later joins the basis.
            third = envelope("3" * 32, BASE_US + 3, "A", {"flow_id": 5})
            (d / "partition=1.jsonl").write_text(json.dumps(third) + "\n")
            snap = await count_when(3)
            offsets = snap["eb_offset_basis"]["offsets"]  # type: ignore[index]
            assert offsets == [{"partition": 0, "offset": "2"}, {"partition": 1, "offset": "1"}]
    finally:
        projector.stop()
        await asyncio.wait_for(task, timeout=10)
