"""Protobuf evolution over real sockets: a client built from a NEWER proto (extra
fields in the request and the response) against this server, and this server's
client against a server that sends extra response fields.

The newer proto is this repository's proto with fields appended, compiled by
protoc (grpcio-tools) into a temporary directory and used from a separate
Python process, as a decision service built later would use it.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg
import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.unknown_fields import UnknownFieldSet

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.contracts.hashing import verify_response
from tests.support.harness import get_features, project_once, response_json, running_server
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
# Appended to the messages, as a later contract revision would.
NEWER_FIELDS = {
    "message GetFeaturesRequest {": "  optional string future_hint = 90;\n",
    "message FeatureKey {": "  optional int64 future_weight = 91;\n",
    "message GetFeaturesResponse {": "  optional string future_note = 92;\n",
}


def newer_stubs(tmp: Path) -> Path:
    text = (REPO / "protos/ofp/v1/feature_service.proto").read_text()
    for opening, field in NEWER_FIELDS.items():
        assert opening in text, opening
        text = text.replace(opening, opening + "\n" + field, 1)
    out = tmp / "newer"
    out.mkdir()
    (out / "feature_service.proto").write_text(text)
    import grpc_tools  # type: ignore[import-untyped]

    include = Path(grpc_tools.__file__).parent / "_proto"
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{out}", f"-I{include}",
         f"--python_out={out}", f"--grpc_python_out={out}", str(out / "feature_service.proto")],
        check=True, capture_output=True, timeout=60)
    return out


NEWER_CLIENT = r"""
import json, sys
import grpc
from google.protobuf import json_format
from google.protobuf.unknown_fields import UnknownFieldSet
import feature_service_pb2 as pb, feature_service_pb2_grpc as pb_grpc

port, doc = sys.argv[1], json.loads(sys.argv[2])
req = json_format.ParseDict(doc, pb.GetFeaturesRequest())
req.future_hint = "from a newer client"
for key in req.feature_keys:
    key.future_weight = 7
with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
    resp = pb_grpc.FeatureServiceStub(channel).GetFeatures(req, timeout=10)
print(json_format.MessageToJson(resp, preserving_proto_field_name=True))
"""

NEWER_SERVER = r"""
import json, sys
from concurrent import futures
import grpc
from google.protobuf import json_format
from google.protobuf.unknown_fields import UnknownFieldSet
import feature_service_pb2 as pb, feature_service_pb2_grpc as pb_grpc

answer = json_format.ParseDict(json.loads(sys.stdin.read()), pb.GetFeaturesResponse())
answer.future_note = "a field this client has never heard of"

class Service(pb_grpc.FeatureServiceServicer):
    def GetFeatures(self, request, context):
        return answer

server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
pb_grpc.add_FeatureServiceServicer_to_server(Service(), server)
port = server.add_insecure_port("127.0.0.1:0")
server.start()
print(port, flush=True)
server.wait_for_termination()
"""


async def test_a_client_built_from_a_newer_proto_gets_the_same_answer(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    stubs = newer_stubs(tmp_path)
    stream = generate(81, n_events=80, n_keys=3, n_partitions=1, noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    doc = keys_request("A", stream.keys, BASE_US + 9 * 24 * HOUR_US)
    async with running_server(pool, bus_root) as (srv, stub):
        current = await get_features(stub, doc)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", NEWER_CLIENT, str(srv.port), json.dumps(doc),
            cwd=stubs, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        metrics = srv.service.metrics.registry
        counted = {m: metrics.get_sample_value("ofp_request_unknown_fields_total",
                                               {"message": m})
                   for m in ("GetFeaturesRequest", "FeatureKey")}
    newer: dict[str, Any] = json.loads(out)
    assert newer["status"] == "OK"
    assert newer["snapshot"]["features"] == current["snapshot"]["features"]
    assert newer["snapshot"]["snapshot_hash"] == current["snapshot"]["snapshot_hash"]
    assert verify_response(newer)[0]
    assert counted == {"GetFeaturesRequest": 1.0, "FeatureKey": 1.0}


async def test_this_client_reads_a_server_that_sends_newer_response_fields(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    stubs = newer_stubs(tmp_path)
    stream = generate(82, n_events=40, n_keys=2, n_partitions=1, noise=False)
    stream.write(bus_root)
    await project_once(pool, bus_root)
    doc = keys_request("A", stream.keys, BASE_US + 9 * 24 * HOUR_US)
    async with running_server(pool, bus_root) as (_, stub):
        real = await get_features(stub, doc)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", NEWER_SERVER, cwd=stubs, stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(json.dumps(real).encode())
        proc.stdin.close()
        port = int((await asyncio.wait_for(proc.stdout.readline(), 30)).decode())
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            resp = await pb_grpc.FeatureServiceStub(channel).GetFeatures(
                json_format.ParseDict(doc, pb.GetFeaturesRequest()), timeout=10)
        # The CLI, this repository's other client, reads it too.
        keys = [a for k in doc["feature_keys"] for a in ("--key", f"{k['key_type']}:{k['key_id']}")]
        cli = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ofp_cli.main", "get-features", "--address",
            f"127.0.0.1:{port}", "--pins-json", json.dumps(doc["pins"]),
            "--as-of", doc["as_of_time_utc"], *keys, "--group", "core_features:v1",
            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        out, err = await asyncio.wait_for(cli.communicate(), 60)
    finally:
        proc.kill()
        await proc.wait()
    assert [f.field_number for f in UnknownFieldSet(resp)] == [92]
    got = response_json(resp)
    assert got == real  # the unknown field is kept aside, never in the way
    assert verify_response(got)[0]
    assert cli.returncode == 0, err.decode()
    assert json.loads(out)["snapshot"]["snapshot_hash"] == real["snapshot"]["snapshot_hash"]
