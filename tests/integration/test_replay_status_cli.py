"""`ofp replay` from Kinesis (with its shortfall said) and `ofp status` without a
database (nothing created) or on historical data (explained)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg
import pytest

from tests.support.cli import cli_env, run_ofp
from tests.support.harness import POLICY_PATH, project_once
from tests.support.kinesis import create_stream, kinesis_client, kinesis_endpoint, put_partitions
from tests.support.streams import generate

__all__ = ["kinesis_endpoint"]
pytestmark = pytest.mark.integration


async def test_replay_reads_kinesis_from_trim_horizon_and_reports_the_shortfall(
    pg_server_dsn: str, fresh_dsn: str, bus_root: Path, tmp_path: Path, kinesis_endpoint: str
) -> None:
    name = f"ofp-t-{uuid.uuid4().hex[:8]}"
    stream = generate(41, n_events=90, n_partitions=2, noise=False)
    async with kinesis_client(kinesis_endpoint) as client:
        await create_stream(client, name, shards=2)
        await put_partitions(client, name, stream.partitions)
    env = cli_env(fresh_dsn, bus_root, OFP_BUS_KIND="kinesis", OFP_KINESIS_STREAM_NAME=name,
                  OFP_KINESIS_ENDPOINT_URL=kinesis_endpoint, AWS_REGION="us-east-1",
                  OFP_KINESIS_POLL_INTERVAL_MS="20")
    rc, out, err = await run_ofp("replay", "--json", env=env, cwd=tmp_path)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["source"] == "kinesis" and doc["stream"] == name
    assert doc["records"] == 90 and doc["kept"] is False
    assert "retention" in doc["shortfall"]
    assert len(doc["partitions"]) == 2
    assert all(p["earliest_event_utc"] for p in doc["partitions"])
    created = err.split("created database ", 1)[1].split()[0]
    admin = await asyncpg.connect(pg_server_dsn)
    try:
        left = await admin.fetchval("SELECT count(*) FROM pg_database WHERE datname = $1",
                                    created)
    finally:
        await admin.close()
    assert left == 0  # dropped without --keep


async def test_status_creates_nothing_when_no_database_is_configured(tmp_path: Path) -> None:
    rc, _, err = await run_ofp("status", env={"OFP_FEATURES_PATH": str(POLICY_PATH)},
                               cwd=tmp_path)
    assert rc == 2
    assert "no database is configured" in err and "nothing was created" in err
    assert not any(tmp_path.iterdir())  # no .ofp/, no data directory  # noqa: ASYNC240


async def test_status_explains_red_when_the_stream_is_historical(
    pool: asyncpg.Pool, fresh_dsn: str, bus_root: Path, tmp_path: Path
) -> None:
    generate(43, n_events=40, n_partitions=1, noise=False).write(bus_root)  # 2026-02 dates
    await project_once(pool, bus_root)
    rc, out, err = await run_ofp("status", env=cli_env(fresh_dsn, bus_root), cwd=tmp_path)
    assert rc == 0, err
    assert "health     RED" in out and "WATERMARK_STALE" in out
    assert "historical data" in out
