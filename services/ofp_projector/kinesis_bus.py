"""The Kinesis bus (docs/contract.md 2.4) over aiobotocore.

Shards are partitions; the partition number is the integer suffix of the shard
id and the offset of a record is its sequence number, so a checkpoint is the
last applied sequence number + 1 and a reader resumes AFTER_SEQUENCE_NUMBER of
checkpoint - 1 (TRIM_HORIZON for a shard nothing was applied from; LATEST only
when configured, and only for a shard without parents).

Retrying is ours, not botocore's: the client is built with retries off and
with connect and read timeouts, and a reader backs off on throttling
(`ProvisionedThroughputExceededException` and friends) and on transient
failures, presenting the same iterator again (a failed call leaves an iterator
valid, and a fresh one costs a GetShardIterator call, limited per shard); it
asks for a fresh iterator from its last applied record only when the old one
expired. Nothing is ever skipped: an error never advances a position.

LATEST is taken once per reader. Until a record arrives there is no sequence
number to resume from, so the reader remembers where it took LATEST: the
server's `Date` of that answer less a second (the header has whole seconds),
or the local clock at the request when that is earlier. An iterator renewed
before the first record is AT_TIMESTAMP of that moment: never later than the
LATEST position, so nothing written after it is skipped (a second or so of
records before it may be read too). The place lives in the reader, not the
store: a new reader of a shard still at checkpoint 0 (a restart, a lease taken
over) takes LATEST afresh, so records that arrived after the first reader took
LATEST and that it never committed (it stopped or lost its lease first) are
not read by the new one.

SHARD_END, the end of a closed shard, is one of:

- a null `NextShardIterator` (AWS, kinesalite); or
- an empty page while the last sequence number handed out is at or beyond
  the shard's listed `EndingSequenceNumber` (moto, which hands out iterators
  at the end of a closed shard forever). Before the first record the reader
  counts as at 0, below every sequence number (they are positive), so a
  closed shard listed with ending 0 (moto's empty closed shard) is at its end,
  and a closed shard that holds records is not until they are handed out.

An empty page by itself proves nothing: Kinesis documents empty pages before
the records of a shard and before its end, and emulators answer them too
(kinesalite reading past a shard closed a second or more after its last
record). The ending number is compared only after an empty read: moto's split
re-writes the parent's records, and an ending listed in that moment is too
small, but a read after it finds the re-written records.

A shard can leave the stream while a checkpoint of it is open: Kinesis drops
a closed shard from ListShards once it is older than the retention period, and
GetShardIterator answers ResourceNotFoundException. The reader then lists the
stream's shards: a stream that is missing is a configuration error and is
raised; a stream that no longer lists the shard means its unread records were
deleted upstream. The reader closes the partition at its checkpoint (a
closing batch marked `left_retention`), logs `partition_left_retention` as a
warning naming the stream, shard and checkpoint, and the projector counts it
(`ofp_projector_partitions_left_retention`), so the children are read and the
loss is reported, never hidden.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session
from botocore.exceptions import ClientError, HTTPClientError  # type: ignore[import-untyped]

from ofp.logs import get_logger

from . import retry
from .bus import Batch, PartitionInfo

OFFSET_KIND = "kinesis_sequence"
MAX_BACKOFF_S = 5.0
THROTTLED = frozenset({
    "ProvisionedThroughputExceededException",
    "LimitExceededException",
    "ThrottlingException",
    "KMSThrottlingException",
})
EXPIRED = frozenset({"ExpiredIteratorException"})
TRANSIENT = frozenset({"InternalFailure", "ServiceUnavailable", "InternalServerError"})
NOT_FOUND = "ResourceNotFoundException"
_SHARD_SUFFIX = re.compile(r"(\d+)$")
_log = get_logger("ofp.projector.kinesis")

ClientHook = Callable[[Any], None]


def shard_partition(shard_id: str) -> int:
    """`shardId-000000000007` -> 7."""
    m = _SHARD_SUFFIX.search(shard_id)
    if m is None:
        raise ValueError(f"shard id {shard_id!r} has no integer suffix")
    return int(m.group(1))


def error_kind(exc: BaseException) -> str | None:
    """'throttled', 'expired' or 'transient' for errors a retry outlives; None otherwise."""
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0)
        if code in THROTTLED:
            return "throttled"
        if code in EXPIRED:
            return "expired"
        if code in TRANSIENT or status >= 500:
            return "transient"
        return None
    if isinstance(exc, HTTPClientError | aiohttp.ClientError | TimeoutError | OSError):
        return "transient"
    return None


def backoff_s(attempt: int) -> float:
    """The projector's backoff, from a tenth of a second: a bus call is dearer to repeat."""
    return retry.backoff_s(attempt, base_s=0.1, cap_s=MAX_BACKOFF_S)


def error_code(exc: BaseException) -> str | None:
    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code", "")) or None
    return None


def latest_anchor(resp: dict[str, Any], asked_at: datetime) -> datetime:
    """Where a LATEST iterator stands, never later than it: the answer's `Date` (whole
    seconds, stamped after LATEST was taken) less a second, or the local clock when
    the request left if that is earlier (or the answer has no usable `Date`)."""
    date = resp.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        server = parsedate_to_datetime(str(date)) - timedelta(seconds=1)
    except (TypeError, ValueError):
        return asked_at
    if server.tzinfo is None:
        return asked_at
    return min(server, asked_at)


class KinesisBus:
    """One Kinesis stream; one client shared by every shard reader of this replica."""

    offset_kind = OFFSET_KIND

    def __init__(
        self,
        *,
        stream_name: str,
        region: str | None,
        endpoint_url: str | None,
        start_position: str = "TRIM_HORIZON",
        get_records_limit: int = 1000,
        idle_s: float = 0.25,
        connect_timeout_s: float = 3.0,
        read_timeout_s: float = 10.0,
        client_hook: ClientHook | None = None,
        list_page_size: int = 1000,
    ) -> None:
        self.stream = stream_name
        self.idle_s = idle_s
        self.start_position = start_position
        self.get_records_limit = get_records_limit
        self.list_page_size = list_page_size
        self._region = region or "us-east-1"
        self._endpoint_url = endpoint_url
        self._config = AioConfig(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            retries={"total_max_attempts": 1},
            max_pool_connections=64,
        )
        self._client_hook = client_hook
        self._client_cm: Any = None
        self.client: Any = None
        # EndingSequenceNumber of closed shards, from the latest listing.
        self._ending: dict[int, int] = {}
        self._parents: dict[int, tuple[int, ...]] = {}
        # moto wants StreamName next to NextToken; AWS refuses it. Learnt on first refusal.
        self._token_with_stream = False

    async def start(self) -> None:
        if self.client is not None:
            return
        self._client_cm = get_session().create_client(
            "kinesis", region_name=self._region, endpoint_url=self._endpoint_url,
            config=self._config,
        )
        self.client = await self._client_cm.__aenter__()
        if self._client_hook is not None:
            self._client_hook(self.client)

    async def close(self) -> None:
        if self._client_cm is not None:
            await self._client_cm.__aexit__(None, None, None)
        self._client_cm = self.client = None

    async def discover(self) -> list[PartitionInfo]:
        """Every shard of the stream (all pages of ListShards), with its parents."""
        shards = await self._list_shards()
        out = []
        for s in shards:
            p = shard_partition(s["ShardId"])
            parents = tuple(
                shard_partition(s[k]) for k in ("ParentShardId", "AdjacentParentShardId")
                if s.get(k)
            )
            self._parents[p] = parents
            ending = s.get("SequenceNumberRange", {}).get("EndingSequenceNumber")
            if ending is not None:
                self._ending[p] = int(ending)
            out.append(PartitionInfo(p, parents))
        return sorted(out, key=lambda i: i.partition)

    def ending_sequence(self, partition: int) -> int | None:
        return self._ending.get(partition)

    def parents(self, partition: int) -> tuple[int, ...]:
        return self._parents.get(partition, ())

    def open(self, partition: int, checkpoint: int) -> ShardReader:
        return ShardReader(self, partition, checkpoint)

    def is_retryable(self, exc: BaseException) -> bool:
        return error_kind(exc) is not None

    async def is_listed(self, partition: int) -> bool:
        """Whether ListShards still lists the shard; a missing stream raises (as ListShards)."""
        return any(shard_partition(s["ShardId"]) == partition for s in await self._list_shards())

    async def _list_shards(self) -> list[dict[str, Any]]:
        shards: list[dict[str, Any]] = []
        token: str | None = None
        attempt = 0
        while True:
            kwargs: dict[str, Any] = {"MaxResults": self.list_page_size}
            if token is None or self._token_with_stream:
                kwargs["StreamName"] = self.stream
            if token is not None:
                kwargs["NextToken"] = token
            try:
                resp = await self.client.list_shards(**kwargs)
            except ClientError as exc:
                code = exc.response.get("Error", {}).get("Code")
                if token is not None and not self._token_with_stream and code in (
                    "InvalidToken", "InvalidArgumentException", "ValidationException"
                ):
                    self._token_with_stream = True
                    continue
                kind = error_kind(exc)
                if kind is None or attempt >= 8:
                    raise
                attempt += 1
                await asyncio.sleep(backoff_s(attempt))
                continue
            except Exception as exc:
                if error_kind(exc) is None or attempt >= 8:
                    raise
                attempt += 1
                await asyncio.sleep(backoff_s(attempt))
                continue
            shards.extend(resp.get("Shards", []))
            token = resp.get("NextToken")
            if not token:
                return shards


class ShardReader:
    """Reads one shard from a checkpoint: at most one GetRecords response in flight."""

    def __init__(self, bus: KinesisBus, partition: int, checkpoint: int) -> None:
        self.bus = bus
        self.partition = partition
        self.shard_id = f"shardId-{partition:012d}"
        # The last sequence number handed out (= applied, as the projector reads
        # the next batch only after applying this one); None before the first.
        self.position: int | None = checkpoint - 1 if checkpoint > 0 else None
        self._iterator: str | None = None
        # Where LATEST was taken, while no record has been handed out (module docstring).
        self._latest_at: datetime | None = None
        self.throttled = 0
        self.expired = 0
        self.transient = 0

    async def _new_iterator(self) -> str:
        kwargs: dict[str, Any] = {"StreamName": self.bus.stream, "ShardId": self.shard_id}
        latest = False
        if self.position is not None:
            kwargs.update(ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                          StartingSequenceNumber=str(self.position))
        elif self._latest_at is not None:
            # LATEST again would skip what arrived since it was first taken.
            kwargs.update(ShardIteratorType="AT_TIMESTAMP", Timestamp=self._latest_at)
        elif self.bus.start_position == "LATEST" and not self.bus.parents(self.partition):
            kwargs["ShardIteratorType"] = "LATEST"
            latest = True
        else:
            kwargs["ShardIteratorType"] = "TRIM_HORIZON"
        asked_at = datetime.now(UTC)
        resp = await self.bus.client.get_shard_iterator(**kwargs)
        if latest:
            self._latest_at = latest_anchor(resp, asked_at)
        return str(resp["ShardIterator"])

    async def read(self, max_records: int) -> Batch:
        limit = max(1, min(max_records, self.bus.get_records_limit))
        attempt = 0
        while True:
            try:
                if self._iterator is None:
                    self._iterator = await self._new_iterator()
                resp = await self.bus.client.get_records(ShardIterator=self._iterator, Limit=limit)
            except Exception as exc:
                if error_code(exc) == NOT_FOUND and not await self.bus.is_listed(self.partition):
                    return self._left_retention()
                kind = error_kind(exc)
                if kind is None:
                    raise
                attempt += 1
                if kind == "expired":
                    # A fresh iterator from the last record handed out: nothing skipped.
                    self.expired += 1
                    self._iterator = None
                    _log.info("iterator_renewed", stream=self.bus.stream,
                              partition=self.partition)
                    if attempt <= 1:
                        continue
                elif kind == "throttled":
                    self.throttled += 1  # the iterator stays valid; same request again
                else:
                    self.transient += 1  # so does a failed call's; same request again
                delay = backoff_s(attempt)
                _log.warning("kinesis_retrying", stream=self.bus.stream,
                             partition=self.partition, kind=kind, attempt=attempt,
                             error=type(exc).__name__, delay_ms=round(delay * 1000))
                await asyncio.sleep(delay)
                continue
            return self._batch(resp)

    def _next_offset(self) -> int:
        return 0 if self.position is None else self.position + 1

    def _left_retention(self) -> Batch:
        """The shard is gone from the stream (older than its retention): close it where
        the checkpoint stands; whatever followed the checkpoint was deleted upstream."""
        next_offset = self._next_offset()
        self._iterator = None
        _log.warning("partition_left_retention", stream=self.bus.stream,
                     partition=self.partition, shard_id=self.shard_id,
                     next_offset=str(next_offset), records_after_checkpoint="lost upstream",
                     detail="the stream no longer lists the shard; closing it so its"
                            " children are read")
        return Batch([], next_offset, at_end=True, closes=True, left_retention=True)

    def _batch(self, resp: dict[str, Any]) -> Batch:
        records = [(int(r["SequenceNumber"]), bytes(r["Data"])) for r in resp.get("Records", [])]
        if records:
            self.position = records[-1][0]
        next_iterator = resp.get("NextShardIterator")
        lag = resp.get("MillisBehindLatest")
        lag_ms = None if lag is None else int(lag)
        self._iterator = next_iterator
        ending = self.bus.ending_sequence(self.partition)
        # SHARD_END (module docstring): a null iterator, or an empty page once the last
        # sequence handed out (0 before the first: sequence numbers are positive)
        # reached the listed EndingSequenceNumber. Never an empty page alone.
        closes = next_iterator is None or (
            ending is not None
            and not records
            and (0 if self.position is None else self.position) >= ending
        )
        # A closed shard is drained only at SHARD_END: before its null iterator, AWS and
        # kinesalite may answer an empty page with a next iterator (kinesalite does when
        # the shard closed a second or more after its last record).
        at_end = not records and not lag_ms and (ending is None or closes)
        return Batch(records, self._next_offset(), at_end=at_end, closes=closes, lag_ms=lag_ms)

    async def close(self) -> None:
        self._iterator = None
