"""Partition leases with fencing tokens in Postgres (docs/contract.md 6).

A lease is one row of `partition_leases` per (stream, partition): the owner,
the fencing token of the current acquisition and an expiry. Every acquisition
takes a new token from the `lease_tokens` sequence and is written to
`lease_history`; `apply_batch` commits only while its token is the current one
(it locks the lease row), so an owner that lost its lease can never advance a
checkpoint, whatever its local clock says. Expiry is decided by the database
clock (`now()`), never by a replica's clock.

Replicas announce themselves in `projector_members` (a heartbeat with the same
ttl), so a replica that holds nothing yet still counts when the others work
out their fair share: `ceil(workable partitions / live members)`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ofp.store.db import Conn


@dataclass(frozen=True, slots=True)
class Lease:
    partition: int
    token: int


@dataclass(frozen=True, slots=True)
class Membership:
    live_members: int
    held_by_member: dict[str, int]


def fair_share(partitions: int, live_members: int) -> int:
    """Each live replica's share of the workable partitions (at least 1 when there are any)."""
    if partitions <= 0:
        return 0
    return math.ceil(partitions / max(1, live_members))


def plan_balance(
    *, me: str, held: int, partitions: int, membership: Membership
) -> tuple[int, int]:
    """(how many more leases to take, how many to give back) for one replica.

    Take free or expired leases up to the fair share. Give back what is above
    the share only while another live member is below it, so holdings converge
    on share / share-or-less without a replica ever releasing into a vacuum.
    """
    share = fair_share(partitions, membership.live_members)
    take = max(0, share - held)
    others_short = any(
        n < share for owner, n in membership.held_by_member.items() if owner != me
    )
    give = max(0, held - share) if others_short else 0
    return take, give


class LeaseManager:
    """The lease operations of one replica (`owner`) on one stream; stateless over SQL."""

    def __init__(self, *, stream: str, owner: str, ttl_s: float) -> None:
        self.stream = stream
        self.owner = owner
        self.ttl_s = ttl_s

    async def heartbeat(self, conn: Conn) -> Membership:
        """Announce this replica as live and count the live replicas and their leases."""
        await conn.execute(
            "INSERT INTO projector_members (stream, owner, expires_at)"
            " VALUES ($1, $2, now() + make_interval(secs => $3))"
            " ON CONFLICT (stream, owner) DO UPDATE SET expires_at = EXCLUDED.expires_at",
            self.stream,
            self.owner,
            self.ttl_s,
        )
        rows = await conn.fetch(
            "SELECT m.owner, (SELECT count(*) FROM partition_leases l WHERE l.stream = m.stream"
            "   AND l.owner = m.owner AND l.expires_at > now()) AS held"
            " FROM projector_members m WHERE m.stream = $1 AND m.expires_at > now()",
            self.stream,
        )
        return Membership(len(rows), {r["owner"]: int(r["held"]) for r in rows})

    async def leave(self, conn: Conn) -> None:
        await conn.execute(
            "DELETE FROM projector_members WHERE stream = $1 AND owner = $2",
            self.stream,
            self.owner,
        )

    async def acquire(
        self, conn: Conn, partitions: list[int], limit: int
    ) -> list[Lease]:
        """Take up to `limit` of `partitions` that are free or expired; new token for each.

        Rows another transaction has locked (a batch committing under its lease)
        are skipped, never waited for: the next round sees them again.
        """
        if limit <= 0 or not partitions:
            return []
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO partition_leases (stream, partition, owner, token, expires_at)"
                " SELECT $1, p, NULL, 0, '-infinity' FROM unnest($2::integer[]) AS p"
                " ON CONFLICT (stream, partition) DO NOTHING",
                self.stream,
                partitions,
            )
            rows = await conn.fetch(
                "WITH candidates AS ("
                "  SELECT partition FROM partition_leases"
                "  WHERE stream = $1 AND partition = ANY($2::integer[])"
                "    AND (owner IS NULL OR expires_at <= now())"
                "  ORDER BY partition LIMIT $3 FOR UPDATE SKIP LOCKED)"
                " UPDATE partition_leases l SET owner = $4, token = nextval('lease_tokens'),"
                "   expires_at = now() + make_interval(secs => $5),"
                "   acquired_at = clock_timestamp()"
                " FROM candidates c WHERE l.stream = $1 AND l.partition = c.partition"
                " RETURNING l.partition, l.token, l.acquired_at",
                self.stream,
                partitions,
                limit,
                self.owner,
                self.ttl_s,
            )
            if rows:
                await conn.execute(
                    "INSERT INTO lease_history (stream, partition, token, owner, acquired_at)"
                    " SELECT $1, p, t, $2, a FROM unnest($3::integer[], $4::bigint[],"
                    " $5::timestamptz[]) AS u(p, t, a)",
                    self.stream,
                    self.owner,
                    [r["partition"] for r in rows],
                    [r["token"] for r in rows],
                    [r["acquired_at"] for r in rows],
                )
        got = [Lease(int(r["partition"]), int(r["token"])) for r in rows]
        return sorted(got, key=lambda x: x.partition)

    async def renew(self, conn: Conn, leases: list[Lease]) -> list[Lease]:
        """Extend the leases whose token is unchanged; return the ones that are lost."""
        if not leases:
            return []
        rows = await conn.fetch(
            "UPDATE partition_leases l SET expires_at = now() + make_interval(secs => $5)"
            " FROM unnest($3::integer[], $4::bigint[]) AS u(p, t)"
            " WHERE l.stream = $1 AND l.owner = $2 AND l.partition = u.p AND l.token = u.t"
            " RETURNING l.partition",
            self.stream,
            self.owner,
            [x.partition for x in leases],
            [x.token for x in leases],
            self.ttl_s,
        )
        kept = {int(r["partition"]) for r in rows}
        return [x for x in leases if x.partition not in kept]

    async def release(self, conn: Conn, leases: list[Lease]) -> None:
        """Give leases back at once (graceful stop, rebalancing, a closed shard)."""
        if not leases:
            return
        await conn.execute(
            "UPDATE partition_leases l SET owner = NULL, expires_at = now()"
            " FROM unnest($3::integer[], $4::bigint[]) AS u(p, t)"
            " WHERE l.stream = $1 AND l.owner = $2 AND l.partition = u.p AND l.token = u.t",
            self.stream,
            self.owner,
            [x.partition for x in leases],
            [x.token for x in leases],
        )
