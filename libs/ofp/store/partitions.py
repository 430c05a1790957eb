"""What the projector knows about a stream's partitions, beyond the offset.

Lineage (a Kinesis shard's parents), whether a shard is closed (SHARD_END
reached and every record applied), and how far behind the bus a reader is.
The checkpoint itself only moves in `ofp.store.writes.apply_batch`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ofp.store.db import Conn


@dataclass(frozen=True, slots=True)
class PartitionState:
    partition: int
    next_offset: int
    closed: bool
    parents: tuple[int, ...]


async def record_partitions(
    conn: Conn,
    *,
    stream: str,
    offset_kind: str,
    partitions: Iterable[tuple[int, tuple[int, ...]]],
) -> None:
    """Give every partition a checkpoint row (offset 0) with its parents; existing rows stay."""
    items = sorted(partitions)
    if not items:
        return
    # Parents travel as text ("1,2") because unnest cannot carry ragged arrays.
    await conn.execute(
        "INSERT INTO checkpoints (stream, partition, offset_kind, next_offset, parents)"
        " SELECT $1, p, $2, 0, COALESCE(string_to_array(NULLIF(ps, ''), ',')::integer[], '{}')"
        " FROM unnest($3::integer[], $4::text[]) AS u(p, ps)"
        " ON CONFLICT (stream, partition) DO NOTHING",
        stream,
        offset_kind,
        [p for p, _ in items],
        [",".join(str(x) for x in parents) for _, parents in items],
    )


async def read_partition_states(conn: Conn, stream: str) -> dict[int, PartitionState]:
    rows = await conn.fetch(
        "SELECT partition, next_offset, closed, parents FROM checkpoints WHERE stream = $1",
        stream,
    )
    return {
        int(r["partition"]): PartitionState(
            int(r["partition"]), int(r["next_offset"]), bool(r["closed"]),
            tuple(int(x) for x in r["parents"]),
        )
        for r in rows
    }


def workable(states: dict[int, PartitionState], listed: set[int]) -> list[int]:
    """Partitions a replica may consume now: open, and every parent closed.

    A parent that is neither listed by the bus nor known to the store has left
    the bus's retention: there is nothing of it to wait for. One the store knows
    as open but the bus no longer lists is workable itself: its reader finds it
    gone and closes it where its checkpoint stands (`kinesis_bus`), and then
    its children are workable.
    """
    out = []
    for p, s in states.items():
        if s.closed:
            continue
        ready = True
        for parent in s.parents:
            ps = states.get(parent)
            if ps is None:
                if parent in listed:
                    ready = False
            elif not ps.closed:
                ready = False
        if ready:
            out.append(p)
    return sorted(out)


async def record_lag(
    conn: Conn, *, stream: str, partition: int, token: int, lag_ms: int
) -> None:
    """How far behind the bus the reader of `partition` is (only under the current lease)."""
    await conn.execute(
        "UPDATE checkpoints c SET lag_ms = $3, lag_observed_at = now()"
        " FROM partition_leases l WHERE c.stream = $1 AND c.partition = $2"
        " AND l.stream = c.stream AND l.partition = c.partition AND l.token = $4",
        stream,
        partition,
        lag_ms,
        token,
    )
