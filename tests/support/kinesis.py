"""Real Kinesis-compatible endpoints for tests, over HTTP: moto in server mode and
kinesalite (npm, installed by `make kinesalite` into .tools/; stricter than moto).

The projector talks to them with its own aiobotocore client, exactly as to AWS;
nothing is mocked. Tests inject faults only through botocore event hooks. The
helpers below are shared by the moto and the kinesalite test modules.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import os
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from ofp.contracts.timefmt import format_micros, parse_micros
from ofp.policy import Policy
from tests.support.harness import default_policy, get_features, running_server
from tests.support.harness import settings as make_settings
from tests.support.streams import HOUR_US, Stream, brute_force, pins

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_REGION": "us-east-1",
}


REPO_ROOT = Path(__file__).resolve().parents[2]
KINESALITE_BIN = REPO_ROOT / ".tools" / "kinesalite" / "node_modules" / ".bin" / "kinesalite"


@contextmanager
def _aws_env() -> Iterator[None]:
    """Fake credentials for the projector's default credential chain, restored after."""
    saved = {k: os.environ.get(k) for k in AWS_ENV}
    os.environ.update(AWS_ENV)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="session")
def kinesis_endpoint() -> Iterator[str]:
    """moto's server in a thread of the test process, on a free port."""
    from moto.server import ThreadedMotoServer

    with _aws_env():
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        try:
            yield f"http://{host}:{port}"
        finally:
            server.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _answers_list_streams(endpoint: str) -> bool:
    import botocore.session  # type: ignore[import-untyped]
    from botocore.config import Config  # type: ignore[import-untyped]

    client = botocore.session.get_session().create_client(
        "kinesis", region_name="us-east-1", endpoint_url=endpoint,
        aws_access_key_id="testing", aws_secret_access_key="testing",
        config=Config(connect_timeout=1, read_timeout=2, retries={"total_max_attempts": 1}),
    )
    try:
        client.list_streams()
        return True
    except Exception:
        return False
    finally:
        client.close()


@pytest.fixture(scope="session")
def kinesalite_endpoint() -> Iterator[str]:
    """kinesalite (node) as a child process on a free port, in memory, streams ACTIVE
    at once; stopped at the end of the session. Missing binary = failure, never a skip."""
    if not os.access(KINESALITE_BIN, os.X_OK):
        pytest.fail(f"kinesalite is not installed ({KINESALITE_BIN} is missing): run"
                    " `make kinesalite` (needs node and npm)", pytrace=False)
    last = ""
    with _aws_env():
        for _ in range(3):  # a free port can be taken by somebody else before we bind it
            port = _free_port()
            proc = subprocess.Popen(
                [str(KINESALITE_BIN), "--port", str(port), "--createStreamMs", "0",
                 "--deleteStreamMs", "0", "--updateStreamMs", "0", "--shardLimit", "100"],
                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            )
            endpoint = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 20
            while proc.poll() is None and time.monotonic() < deadline:
                if _answers_list_streams(endpoint):
                    break
                time.sleep(0.1)
            else:
                err = b""
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                elif proc.stderr is not None:
                    err = proc.stderr.read()
                last = err.decode(errors="replace")[-2000:]
                continue
            try:
                yield endpoint
            finally:
                proc.terminate()
                try:
                    proc.wait(timeout=5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
                if proc.stderr is not None:
                    proc.stderr.close()
            return
        pytest.fail(f"kinesalite did not answer ListStreams on a free port: {last}",
                    pytrace=False)


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
    await wait_active(client, name)


async def wait_active(client: Any, name: str) -> None:
    """Until the stream is ACTIVE (after a create, split or merge)."""
    for _ in range(100):
        desc = await client.describe_stream_summary(StreamName=name)
        if desc["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE":
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"stream {name} did not become ACTIVE")


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


async def put_lines(client: Any, name: str, lines: list[str]) -> list[tuple[str, str]]:
    """Put `lines` keyed by flow; returns (shard id, sequence number) of each, in order."""
    placed: list[tuple[str, str]] = []
    for i in range(0, len(lines), 250):
        chunk = lines[i : i + 250]
        resp = await client.put_records(
            StreamName=name,
            Records=[{"Data": line.encode(), "PartitionKey": partition_key(line)}
                     for line in chunk],
        )
        assert resp.get("FailedRecordCount", 0) == 0
        placed.extend((r["ShardId"], r["SequenceNumber"]) for r in resp["Records"])
    return placed


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


async def put_partitions(
    client: Any, name: str, partitions: list[list[str]]
) -> list[list[str]]:
    """File-bus partition i -> shard i (ExplicitHashKey), so the two buses hold the same
    records per partition, in the same order, and agree on the watermark. Returns the
    sequence numbers given to each partition's records."""
    shards = (await client.list_shards(StreamName=name))["Shards"]
    assert len(shards) == len(partitions)
    seqs: list[list[str]] = []
    for shard, lines in zip(shards, partitions, strict=True):
        start = shard["HashKeyRange"]["StartingHashKey"]
        seqs.append([])
        for i in range(0, len(lines), 250):
            resp = await client.put_records(StreamName=name, Records=[
                {"Data": line.encode(), "PartitionKey": "p", "ExplicitHashKey": start}
                for line in lines[i : i + 250]
            ])
            assert resp.get("FailedRecordCount", 0) == 0
            assert {r["ShardId"] for r in resp["Records"]} <= {shard["ShardId"]}
            seqs[-1].extend(r["SequenceNumber"] for r in resp["Records"])
    return seqs


# ---------------------------------------------------------------- shared by the test modules


def policy_for(stream_name: str) -> Policy:
    """The default policy whose source topic is this test's own Kinesis stream."""
    return dataclasses.replace(default_policy(), source_topic=stream_name)


def kinesis_settings(endpoint: str, **overrides: Any) -> Any:
    return make_settings(
        ".", bus_kind="kinesis", kinesis_endpoint_url=endpoint, aws_region="us-east-1",
        kinesis_poll_interval_ms=20, lease_ttl_s=3, **overrides,
    )


def feature_requests(stream: Stream) -> list[dict[str, Any]]:
    ts = sorted(e.ts_us for e in stream.truth)
    keys = [{"key_type": "flow_id", "key_id": k} for k in [*stream.keys, "nope"]]
    return [
        {
            "pins": pins(run),
            "as_of_time_utc": format_micros(as_of),
            "feature_keys": keys,
            "feature_groups": [{"name": "core_features", "version": "v1"}],
        }
        for run in ("A", "B")
        for as_of in (ts[0] + HOUR_US, ts[len(ts) // 2], ts[-1], ts[-1] + 2 * HOUR_US)
    ]


async def snapshots(pool: asyncpg.Pool, stream: Stream) -> list[dict[str, Any]]:
    async with running_server(pool) as (_, stub):
        out = []
        for req in feature_requests(stream):
            resp = await get_features(stub, req)
            assert resp["status"] == "OK", resp
            out.append(resp["snapshot"])
        return out


async def outcome_totals(pool: asyncpg.Pool, stream: str) -> dict[str, int]:
    rows = await pool.fetch(
        "SELECT outcome, sum(n)::bigint AS n FROM outcome_counters WHERE stream = $1"
        " GROUP BY outcome", stream)
    return {r["outcome"]: int(r["n"]) for r in rows}


def assert_brute_force(snaps: list[dict[str, Any]], stream: Stream) -> None:
    for snap in snaps:
        run = "A" if snap["pins"]["scenario_id"] == "scenario_A" else "B"
        as_of = parse_micros(snap["as_of_time_utc"])
        for key in stream.keys:
            want = brute_force(stream.truth, run, key, as_of)
            got = snap["features"].get(f"flow_id:{key}", {}).get("core_features")
            if want is None:
                assert got is None
            else:
                assert got is not None
                got = {k: int(v) if isinstance(v, float) else v for k, v in got.items()}
                assert got == want, (run, key, as_of)


async def wait_until(predicate: Callable[[], Awaitable[bool]], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError("condition not reached in time")


# ---------------------------------------------------------------- fault injection (botocore hooks)


class FakeHttp:
    """The HTTP half of an answer a `before-call` hook gives instead of the server."""

    def __init__(self, status: int) -> None:
        self.status_code = status
        self.headers: dict[str, str] = {}
        self.content = b""


def service_error(code: str, status: int) -> tuple[FakeHttp, dict[str, Any]]:
    """A `before-call` answer: the service refused the call with `code`."""
    return FakeHttp(status), {
        "Error": {"Code": code, "Message": f"injected {code}"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }


class ShardIterators:
    """botocore hooks that tell which shard every iterator the client uses belongs to:
    those GetShardIterator handed out, and every NextShardIterator after them.

    A GetRecords call's shard is `context["ofp_shard"]` in later hooks of that call."""

    def __init__(self) -> None:
        self.shard_of: dict[str, str] = {}

    def attach(self, client: Any) -> None:
        events = client.meta.events
        events.register("before-parameter-build.kinesis.GetShardIterator", self._asked)
        events.register("after-call.kinesis.GetShardIterator", self._handed_out)
        events.register("before-parameter-build.kinesis.GetRecords", self._reading)
        events.register("after-call.kinesis.GetRecords", self._read)

    def _asked(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["ofp_shard"] = params["ShardId"]

    def _handed_out(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if "ShardIterator" in parsed:
            self.shard_of[parsed["ShardIterator"]] = context["ofp_shard"]

    def _reading(self, params: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        context["ofp_iterator"] = params["ShardIterator"]
        context["ofp_shard"] = self.shard_of.get(params["ShardIterator"])

    def _read(self, parsed: dict[str, Any], context: dict[str, Any], **_: Any) -> None:
        if parsed.get("NextShardIterator") and context.get("ofp_shard"):
            self.shard_of[parsed["NextShardIterator"]] = context["ofp_shard"]


class EmptyPages(ShardIterators):
    """Answers chosen GetRecords calls of chosen shards with an empty page (no records,
    `MillisBehindLatest` 0, the same iterator as the next one), as Kinesis may before
    a shard's records or its end; the call never reaches the server.

    `calls` maps a shard id to the 1-based numbers of its GetRecords calls to answer so."""

    def __init__(self, calls: dict[str, set[int]]) -> None:
        super().__init__()
        self.calls = calls
        self.seen: dict[str, int] = {}
        self.injected: dict[str, int] = {}

    def attach(self, client: Any) -> None:
        super().attach(client)
        client.meta.events.register("before-call.kinesis.GetRecords", self._answer)

    def _answer(self, context: dict[str, Any], **_: Any) -> Any:
        shard = context.get("ofp_shard")
        if shard is None:
            return None
        n = self.seen[shard] = self.seen.get(shard, 0) + 1
        if n not in self.calls.get(shard, set()):
            return None
        self.injected[shard] = self.injected.get(shard, 0) + 1
        return FakeHttp(200), {
            "Records": [],
            "NextShardIterator": context["ofp_iterator"],
            "MillisBehindLatest": 0,
            "ResponseMetadata": {"HTTPStatusCode": 200},
        }


async def put_at(
    client: Any, name: str, hash_key: int, lines: list[str]
) -> list[tuple[str, str]]:
    """Put `lines` with one ExplicitHashKey (so one shard takes them all, in order);
    returns (shard id, sequence number) of each."""
    placed: list[tuple[str, str]] = []
    for i in range(0, len(lines), 250):
        resp = await client.put_records(StreamName=name, Records=[
            {"Data": line.encode(), "PartitionKey": "p", "ExplicitHashKey": str(hash_key)}
            for line in lines[i : i + 250]
        ])
        assert resp.get("FailedRecordCount", 0) == 0
        placed.extend((r["ShardId"], r["SequenceNumber"]) for r in resp["Records"])
    return placed


async def hash_range(client: Any, name: str, shard_id: str) -> tuple[int, int]:
    for s in (await client.list_shards(StreamName=name))["Shards"]:
        if s["ShardId"] == shard_id:
            r = s["HashKeyRange"]
            return int(r["StartingHashKey"]), int(r["EndingHashKey"])
    raise AssertionError(f"{shard_id} is not listed")


async def split_in_half(client: Any, name: str, shard_id: str) -> None:
    lo, hi = await hash_range(client, name, shard_id)
    await client.split_shard(StreamName=name, ShardToSplit=shard_id,
                             NewStartingHashKey=str((lo + hi) // 2))
    await wait_active(client, name)


async def checkpoint_rows(pool: asyncpg.Pool, stream: str) -> dict[int, asyncpg.Record]:
    return {r["partition"]: r for r in await pool.fetch(
        "SELECT partition, next_offset, closed, parents, max_event_us FROM checkpoints"
        " WHERE stream = $1", stream)}
