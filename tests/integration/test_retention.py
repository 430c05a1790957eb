"""Retention: old state is removed and an as-of that reaches it is refused (SPEC 6)."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import grpc
import pytest

from ofp.contracts.timefmt import format_micros
from ofp.store.timeparts import list_partitions, period_start
from tests.support.harness import get_features, project_once, request_proto, running_server
from tests.support.streams import HOUR_US, brute_force, generate, pins

DAY_US = 24 * HOUR_US


def _req(as_of_us: int, keys: list[str]) -> dict[str, object]:
    return {
        "pins": pins("A"),
        "as_of_time_utc": format_micros(as_of_us),
        "feature_keys": [{"key_type": "flow_id", "key_id": k} for k in keys],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
    }


async def test_state_beyond_the_horizon_is_pruned_and_old_as_of_refused(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    stream = generate(41, n_events=300, n_keys=3, n_partitions=1, runs=("A",),
                      span_us=20 * DAY_US, noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root, retention_days=8)
    watermark = max(e.ts_us for e in stream.truth)
    floor = watermark - 8 * DAY_US
    floor_day = period_start(floor)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT retained_from_us FROM retention") == floor
        # Whole days are dropped (migration 0009): only the day holding the
        # floor keeps rows at or below it, which no answered window reads.
        assert await conn.fetchval("SELECT min(ts_us) FROM feature_events") >= floor_day
        assert await conn.fetchval("SELECT min(ts_us) FROM event_dedupe") >= floor_day
        assert not [p for p in await list_partitions(conn) if p.hi_us <= floor + 1]

    async with running_server(pool, bus_root) as (_, stub):
        # The newest as-of whose 7-day window still starts at the floor is answered exactly.
        for as_of in (floor + 7 * DAY_US, watermark):
            doc = await get_features(stub, _req(as_of, stream.keys))
            for key in stream.keys:
                expected = brute_force(stream.truth, "A", key, as_of)
                got = doc["snapshot"]["features"].get(f"flow_id:{key}", {}).get("core_features")
                if expected is None:
                    assert got is None
                else:
                    assert {k: int(v) if isinstance(v, float) else v
                            for k, v in got.items()} == expected
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await stub.GetFeatures(request_proto(_req(floor + 7 * DAY_US - 1, stream.keys)))
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "retained" in (info.value.details() or "")
