"""The snapshot log in S3 (or any S3 API): one object per snapshot, keyed by its hash.

`<prefix><hash>.json` holds the entry as one JSON document
(`SnapshotEntry.document`); the same hash served again writes the same key, so
a snapshot is stored once whatever the traffic repeats. Objects carry no
expiry of their own: long retention is the bucket's lifecycle rule.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from typing import Any

from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError  # type: ignore[import-untyped]

from ofp.store.snapshot_log import SnapshotEntry

# PUTs of one batch in flight at once.
PUT_CONCURRENCY = 16


def object_key(prefix: str, snapshot_hash: str) -> str:
    return f"{prefix}{snapshot_hash}.json"


def snapshot_ref(bucket: str, prefix: str, snapshot_hash: str) -> str:
    return f"s3://{bucket}/{object_key(prefix, snapshot_hash)}"


class S3SnapshotStore:
    """An open S3 client on one bucket and prefix (`async with` or open/close)."""

    def __init__(self, bucket: str, prefix: str, *, endpoint_url: str | None = None,
                 region: str | None = None) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self._endpoint_url = endpoint_url
        self._region = region
        self._stack: contextlib.AsyncExitStack | None = None
        self._client: Any = None

    async def open(self) -> S3SnapshotStore:
        stack = contextlib.AsyncExitStack()
        config = AioConfig(connect_timeout=3, read_timeout=10,
                           retries={"max_attempts": 3, "mode": "standard"})
        self._client = await stack.enter_async_context(get_session().create_client(
            "s3", endpoint_url=self._endpoint_url, region_name=self._region or "us-east-1",
            config=config))
        self._stack = stack
        return self

    async def close(self) -> None:
        if self._stack is not None:
            await self._stack.aclose()
            self._stack, self._client = None, None

    async def __aenter__(self) -> S3SnapshotStore:
        return await self.open()

    async def __aexit__(self, *_: object) -> None:
        await self.close()

    def ref(self, snapshot_hash: str) -> str:
        return snapshot_ref(self.bucket, self.prefix, snapshot_hash)

    async def put_entries(self, entries: Sequence[SnapshotEntry]) -> None:
        gate = asyncio.Semaphore(PUT_CONCURRENCY)

        async def put(entry: SnapshotEntry) -> None:
            async with gate:
                await self._client.put_object(
                    Bucket=self.bucket, Key=object_key(self.prefix, entry.snapshot_hash),
                    Body=entry.document(), ContentType="application/json")

        await asyncio.gather(*(put(e) for e in entries))

    async def get_entry(self, snapshot_hash: str) -> SnapshotEntry | None:
        try:
            resp = await self._client.get_object(
                Bucket=self.bucket, Key=object_key(self.prefix, snapshot_hash))
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        async with resp["Body"] as body:
            data = await body.read()
        return SnapshotEntry.from_document(data)

    async def entries_since(self, since_us: int,
                            until_us: int | None = None) -> AsyncIterator[SnapshotEntry]:
        """Entries recorded in [since, until): every object is listed, those written
        before `since` are skipped by their modification time, the rest read."""
        paginator = self._client.get_paginator("list_objects_v2")
        async for page in paginator.paginate(Bucket=self.bucket, Prefix=self.prefix):
            for obj in page.get("Contents", ()):
                # Written after it was recorded: a lower bound on recorded_at.
                if obj["LastModified"].timestamp() * 1_000_000 < since_us - 60_000_000:
                    continue
                entry = await self.get_entry(obj["Key"][len(self.prefix):-len(".json")])
                if entry is None or entry.recorded_at_us < since_us:
                    continue
                if until_us is not None and entry.recorded_at_us >= until_us:
                    continue
                yield entry
