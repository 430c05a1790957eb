"""A Kinesis stream named apart from the policy's topic (`OFP_KINESIS_STREAM_NAME`).

The projector records checkpoints under the Kinesis stream it reads; the
feature server and `ofp status` must read them under that same name
(`Settings.bus_stream`), not under the policy's `source_topic`. End to end on
moto: projector, the real gRPC server (GetFeatures, GetStatus) and the CLI.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import asyncpg
import pytest
from google.protobuf import json_format

from ofp.api.v1 import feature_service_pb2 as pb
from ofp_projector.projector import Projector
from tests.support.cli import cli_env, run_ofp
from tests.support.harness import get_features, running_server
from tests.support.kinesis import (
    assert_brute_force,
    create_stream,
    feature_requests,
    kinesis_client,
    kinesis_endpoint,
    kinesis_settings,
    policy_for,
    put_partitions,
)
from tests.support.streams import generate

__all__ = ["kinesis_endpoint"]
pytestmark = pytest.mark.integration


async def test_a_custom_stream_name_is_read_under_that_name_by_the_server_and_the_cli(
    pool: asyncpg.Pool, fresh_dsn: str, kinesis_endpoint: str, tmp_path: Path
) -> None:
    topic = f"ofp-topic-{uuid.uuid4().hex[:8]}"
    stream_name = f"ofp-custom-{uuid.uuid4().hex[:8]}"
    stream = generate(83, n_events=150, n_keys=5, n_partitions=2)
    policy = policy_for(topic)
    async with kinesis_client(kinesis_endpoint) as client:
        await create_stream(client, stream_name, shards=2)
        seqs = await put_partitions(client, stream_name, stream.partitions)
    overrides = {"kinesis_stream_name": stream_name}
    settings = kinesis_settings(kinesis_endpoint, **overrides)
    totals = await Projector(settings, pool, policy).run(once=True)
    assert totals.records == sum(len(p) for p in stream.partitions)
    want = {p: str(int(s[-1]) + 1) for p, s in enumerate(seqs)}

    async with running_server(pool, bus_kind="kinesis", **overrides) as (_, stub):
        snaps = []
        for req in feature_requests(stream):
            resp = await get_features(stub, req)
            assert resp["status"] == "OK", resp
            snaps.append(resp["snapshot"])
        status = json_format.MessageToDict(
            await stub.GetStatus(pb.GetStatusRequest(), timeout=10),
            preserving_proto_field_name=True)
    for snap in snaps:
        basis = snap["eb_offset_basis"]
        assert (basis["stream"], basis["offset_kind"]) == (stream_name, "kinesis_sequence")
        assert {o["partition"]: o["offset"] for o in basis["offsets"]} == want
    assert_brute_force(snaps, stream)
    assert status["stream"] == stream_name
    assert {p["partition"]: p["next_offset"] for p in status["partitions"]} == want

    env = cli_env(fresh_dsn, tmp_path, OFP_BUS_KIND="kinesis",
                  OFP_KINESIS_STREAM_NAME=stream_name)
    rc, out, err = await run_ofp("status", "--json", env=env, cwd=tmp_path)
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["stream"] == stream_name
    assert {p["partition"]: str(p["next_offset"]) for p in doc["partitions"]} == want
