"""Long-lived client connections are recycled (max connection age + grace) without
a failed call, so a client spreads onto replicas added after it connected
(docs/operations.md, "Connections")."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import psutil  # type: ignore[import-untyped]
import pytest

from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request

pytestmark = pytest.mark.integration


def client_ports(server_port: int) -> set[int]:
    """Local ports of this process's established connections to the server."""
    return {c.laddr.port for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == server_port and c.status == "ESTABLISHED"}


async def test_a_client_is_moved_to_a_new_connection_after_max_age_without_failing(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(91, n_events=30, n_keys=2, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    doc = keys_request("A", ["1", "2"], BASE_US + 9 * 24 * HOUR_US)
    async with running_server(pool, bus_root, grpc_max_connection_age_s=1,
                              grpc_max_connection_age_grace_s=1) as (srv, stub):
        seen: set[int] = set()
        answered = 0
        deadline = time.monotonic() + 4.5
        while time.monotonic() < deadline:
            resp = await get_features(stub, doc)  # raises on any failed call
            assert resp["status"] == "OK"
            answered += 1
            seen |= client_ports(srv.port)
            await asyncio.sleep(0.02)
    assert answered > 50
    # One connection per max age (1 s + up to 1 s of grace, with jitter): several.
    assert len(seen) >= 2, seen


async def test_the_default_keeps_a_connection_for_minutes(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    generate(92, n_events=10, n_keys=1, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    doc = keys_request("A", ["1"], BASE_US + 9 * 24 * HOUR_US)
    async with running_server(pool, bus_root) as (srv, stub):
        seen: set[int] = set()
        for _ in range(40):
            await get_features(stub, doc)
            seen |= client_ports(srv.port)
            await asyncio.sleep(0.05)
    assert len(seen) == 1, seen
