"""A real Kinesis-compatible endpoint for tests: moto in server mode, over HTTP.

The projector talks to it with its own aiobotocore client, exactly as to AWS;
nothing is mocked. Tests inject faults only through botocore event hooks.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


@pytest.fixture(scope="session")
def kinesis_endpoint() -> Iterator[str]:
    """moto's server in a thread of the test process, on a free port."""
    from moto.server import ThreadedMotoServer

    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    try:
        yield f"http://{host}:{port}"
    finally:
        server.stop()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@asynccontextmanager
async def kinesis_client(endpoint: str) -> AsyncIterator[Any]:
    cfg = AioConfig(connect_timeout=3, read_timeout=10, retries={"total_max_attempts": 3})
    async with get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=endpoint, config=cfg,
        aws_access_key_id="testing", aws_secret_access_key="testing",
    ) as client:
        yield client


async def create_stream(client: Any, name: str, shards: int) -> None:
    await client.create_stream(StreamName=name, ShardCount=shards)
    for _ in range(100):
        desc = await client.describe_stream_summary(StreamName=name)
        if desc["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        await asyncio.sleep(0.05)


def partition_key(line: str) -> str:
    """The flow id when the line has one (per-key order needs one shard lineage per key)."""
    try:
        doc = json.loads(line)
        flow = doc.get("payload", {}).get("flow_id") if isinstance(doc, dict) else None
    except ValueError:
        flow = None
    if flow is not None and not isinstance(flow, bool | dict | list):
        return f"flow-{flow}"
    return hashlib.sha256(line.encode()).hexdigest()[:16]


async def put_lines(client: Any, name: str, lines: list[str]) -> None:
    for i in range(0, len(lines), 250):
        chunk = lines[i : i + 250]
        resp = await client.put_records(
            StreamName=name,
            Records=[{"Data": line.encode(), "PartitionKey": partition_key(line)}
                     for line in chunk],
        )
        assert resp.get("FailedRecordCount", 0) == 0


async def count_records(client: Any, name: str) -> int:
    """Every record of every shard, read from TRIM_HORIZON to the end."""
    total = 0
    shards = (await client.list_shards(StreamName=name))["Shards"]
    for s in shards:
        it = (await client.get_shard_iterator(
            StreamName=name, ShardId=s["ShardId"], ShardIteratorType="TRIM_HORIZON"
        ))["ShardIterator"]
        while it:
            resp = await client.get_records(ShardIterator=it, Limit=10000)
            total += len(resp["Records"])
            if not resp["Records"]:
                break
            it = resp.get("NextShardIterator")
    return total


async def put_partitions(client: Any, name: str, partitions: list[list[str]]) -> None:
    """File-bus partition i -> shard i (ExplicitHashKey), so the two buses hold the same
    records per partition, in the same order, and agree on the watermark."""
    shards = (await client.list_shards(StreamName=name))["Shards"]
    assert len(shards) == len(partitions)
    for shard, lines in zip(shards, partitions, strict=True):
        start = shard["HashKeyRange"]["StartingHashKey"]
        for i in range(0, len(lines), 250):
            resp = await client.put_records(StreamName=name, Records=[
                {"Data": line.encode(), "PartitionKey": "p", "ExplicitHashKey": start}
                for line in lines[i : i + 250]
            ])
            assert resp.get("FailedRecordCount", 0) == 0
