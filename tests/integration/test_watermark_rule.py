"""One watermark rule in SQL and in Python (SPEC 4.3 as amended): the least high
mark over open partitions that hold one, else the largest closed high mark."""

from __future__ import annotations

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ofp.health import PartitionFacts, watermark_us
from ofp.store.reads import WATERMARK_EXPR

partitions = st.lists(
    st.tuples(st.booleans(), st.none() | st.integers(min_value=-(2**62), max_value=2**62)),
    max_size=6,
)


@settings(max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(parts=partitions)
async def test_the_sql_watermark_and_the_status_watermark_agree(
    pool: asyncpg.Pool, parts: list[tuple[bool, int | None]]
) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute("DELETE FROM checkpoints")
        for i, (closed, high) in enumerate(parts):
            await conn.execute(
                "INSERT INTO checkpoints (stream, partition, offset_kind, next_offset,"
                " max_event_us, closed) VALUES ('s', $1, 'file_line', 0, $2, $3)",
                i, high, closed)
        sql = await conn.fetchval(f"SELECT {WATERMARK_EXPR} FROM checkpoints WHERE stream = 's'")
    facts = [PartitionFacts(partition=i, offset_kind="file_line", next_offset="0", updated_us=0,
                            max_event_us=high, closed=closed)
             for i, (closed, high) in enumerate(parts)]
    assert sql == watermark_us(facts)
    open_highs = [h for c, h in parts if not c and h is not None]
    closed_highs = [h for c, h in parts if c and h is not None]
    expected = min(open_highs) if open_highs else (max(closed_highs) if closed_highs else None)
    assert sql == expected
