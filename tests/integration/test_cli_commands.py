"""`ofp migrate`, `ofp status` and `ofp replay` as an operator runs them: real subprocesses
against a real PostgreSQL, reading a generated stream with a known truth."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.store.db import create_pool
from tests.support.cli import cli_env, run_ofp
from tests.support.db import with_database
from tests.support.harness import project_once
from tests.support.streams import TOPIC, generate

pytestmark = pytest.mark.integration


async def checkpoints(dsn: str) -> dict[int, int]:
    conn = await asyncpg.connect(dsn)
    try:
        rows = await conn.fetch(
            "SELECT partition, next_offset FROM checkpoints WHERE stream = $1", TOPIC
        )
    finally:
        await conn.close()
    return {int(r["partition"]): int(r["next_offset"]) for r in rows}


async def test_status_reports_line_counts_when_stream_projected(
    fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    env = cli_env(fresh_dsn, bus_root)
    rc, out, err = await run_ofp("migrate", env=env, cwd=tmp_path)
    assert rc == 0, err
    assert "applied 0001_create_schema" in out
    rc, out, _ = await run_ofp("migrate", env=env, cwd=tmp_path)
    assert rc == 0 and out.strip() == "schema up to date"

    stream = generate(11, n_events=150, n_partitions=3)
    stream.write(bus_root)
    pool = await create_pool(fresh_dsn)
    try:
        await project_once(pool, bus_root)
    finally:
        await pool.close()

    rc, out, err = await run_ofp("status", "--json", env=env, cwd=tmp_path)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["stream"] == TOPIC
    assert doc["policy"]["policy_id"] == "ofp.features.v0"
    assert {p["partition"]: int(p["next_offset"]) for p in doc["partitions"]} == {
        p: len(lines) for p, lines in enumerate(stream.partitions)
    }
    for p in doc["partitions"]:
        o = p["outcomes"]
        line_count = len(stream.partitions[p["partition"]])
        assert o["applied"] + o["duplicate"] + o["ignored"] + o["quarantined"] == line_count
        assert p["event_time_high_utc"].endswith("Z")
    totals = doc["totals"]
    assert {k.upper(): totals[k] for k in ("applied", "duplicate", "ignored", "quarantined")} == (
        stream.expected_outcomes
    )
    quarantined_by_reason = [r["count"] for r in totals["by_reason"]
                             if r["outcome"] == "QUARANTINED"]
    assert sum(quarantined_by_reason) == totals["quarantined"]
    # Quarantined records wait for an operator: the ladder says AMBER (or worse: the
    # generated event times are far behind the wall clock, so the watermark is RED).
    assert doc["quarantine_open"] == totals["quarantined"] > 0
    assert doc["health"]["state"] == "RED"
    assert {r["code"] for r in doc["health"]["reasons"]} == {"QUARANTINE_OPEN", "WATERMARK_STALE"}

    rc, table, err = await run_ofp("status", env=env, cwd=tmp_path)
    assert rc == 0, err
    assert "partition" in table and "quarantined" in table and TOPIC in table
    assert "health     RED" in table and "WATERMARK_STALE" in table

    rc, _, err = await run_ofp("status", "--fail-on", "red", env=env, cwd=tmp_path)
    assert rc == 1, err


async def test_replay_rebuilds_same_checkpoints_when_target_dsn_given(
    pg_server_dsn: str, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    generate(12, n_events=400, n_partitions=2).write(bus_root)
    pool = await create_pool(fresh_dsn)
    try:
        await project_once(pool, bus_root)
    finally:
        await pool.close()
    name = f"ofp_t_{uuid.uuid4().hex[:12]}"
    admin = await asyncpg.connect(pg_server_dsn)
    await admin.execute(f'CREATE DATABASE "{name}"')
    target = with_database(pg_server_dsn, name)
    try:
        rc, out, err = await run_ofp(
            "replay", "--target-dsn", target, env=cli_env(fresh_dsn, bus_root), cwd=tmp_path
        )
        assert rc == 0, err
        assert '"rate_per_s"' in err  # progress lines (a tqdm bar on a terminal)
        assert "replayed" in out and "checkpoints:" in out and "(dropped" not in out
        assert await checkpoints(target) == await checkpoints(fresh_dsn)

        # A second replay into the now non-empty target is refused, in one line.
        rc, _, err = await run_ofp(
            "replay", "--target-dsn", target, env=cli_env(fresh_dsn, bus_root), cwd=tmp_path
        )
        assert rc == 2 and "empty database" in err and "Traceback" not in err
    finally:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_replay_creates_timestamped_database_and_drops_it_unless_kept_when_no_target(
    pg_server_dsn: str, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    generate(13, n_events=60, n_partitions=2, noise=False).write(bus_root)
    admin = await asyncpg.connect(pg_server_dsn)
    before = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
    created: set[str] = set()
    try:
        rc, out, err = await run_ofp("replay", env=cli_env(fresh_dsn, bus_root), cwd=tmp_path)
        assert rc == 0, err
        assert "replayed 60 records" in out and "(dropped; --keep keeps it)" in out
        after = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
        assert not {d for d in after - before if d.startswith("ofp_replay_")}
        # Off a terminal the progress is JSON lines on stderr, the last one final.
        progress = [json.loads(x) for x in err.splitlines() if x.startswith("{")]
        assert progress[-1]["finished"] and progress[-1]["done"] == progress[-1]["total"] == 60

        rc, out, err = await run_ofp("replay", "--keep", "--json",
                                     env=cli_env(fresh_dsn, bus_root), cwd=tmp_path)
        assert rc == 0, err
        summary = json.loads(out)
        assert summary["records"] == 60 and summary["kept"] is True
        assert sum(int(p["next_offset"]) for p in summary["partitions"]) == 60
        after = {r["datname"] for r in await admin.fetch("SELECT datname FROM pg_database")}
        created = {d for d in after - before if d.startswith("ofp_replay_")}
        assert len(created) == 1
    finally:
        for name in created:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


async def test_errors_are_one_masked_line_when_database_unreachable(
    bus_root: Path, tmp_path: Path
) -> None:
    env: dict[str, Any] = cli_env("postgresql://ofp:s3cret-pw@127.0.0.1:1/ofp", bus_root)
    for command in (["migrate"], ["status"], ["replay"]):
        rc, out, err = await run_ofp(*command, env=env, cwd=tmp_path)
        assert rc == 2, (command, err)
        assert "s3cret-pw" not in out + err
        assert "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


@pytest.mark.usefixtures("pool")  # migrated: a bare database is refused (exit 3)
async def test_ofp_server_exits_2_naming_the_address_when_its_port_is_taken(
    fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        address = f"127.0.0.1:{holder.getsockname()[1]}"
        proc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).parent / "ofp-server"),
            env={**os.environ, **cli_env(fresh_dsn, bus_root, OFP_GRPC_ADDRESS=address)},
            cwd=tmp_path, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert proc.returncode == 2, err
    assert f"cannot bind {address}" in err.decode()
    assert b"Traceback" not in err
