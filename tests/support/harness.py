"""Run the real projector and the real gRPC server in-process for tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import asyncpg
import grpc
from google.protobuf import json_format

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.config import Settings
from ofp.policy import Policy, load_policy
from ofp_projector.projector import Projector, Totals
from ofp_server.server import FeatureServer, create_server
from tests.support.typed import assert_typed_agrees

REPO = Path(__file__).resolve().parents[2]
POLICY_PATH = REPO / "config" / "features_v0.yaml"


def default_policy() -> Policy:
    return load_policy(POLICY_PATH)


def settings(bus_root: Path | str, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "file_bus_root": str(bus_root),
        "features_path": str(POLICY_PATH),
        "poll_interval_ms": 10,
    }
    base.update(overrides)
    return Settings(**base).validate()


async def project_once(
    pool: asyncpg.Pool, bus_root: Path | str, *, policy: Policy | None = None, **overrides: Any
) -> Totals:
    projector = Projector(settings(bus_root, **overrides), pool, policy or default_policy())
    return await projector.run(once=True)


@asynccontextmanager
async def running_server(
    pool: asyncpg.Pool, bus_root: Path | str = ".", **overrides: Any
) -> AsyncIterator[tuple[FeatureServer, pb_grpc.FeatureServiceStub]]:
    srv = create_server(settings(bus_root, **overrides), pool, "127.0.0.1:0")
    await srv.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{srv.port}") as channel:
            yield srv, pb_grpc.FeatureServiceStub(channel)
    finally:
        await srv.stop(0)


def request_proto(doc: dict[str, Any]) -> pb.GetFeaturesRequest:
    return json_format.ParseDict(doc, pb.GetFeaturesRequest())


def response_json(resp: pb.GetFeaturesResponse) -> dict[str, Any]:
    """The response as a JSON client sees it (proto3 JSON, snake_case names)."""
    text = json_format.MessageToJson(
        resp, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    doc: dict[str, Any] = json.loads(text)
    return doc


async def get_features(
    stub: pb_grpc.FeatureServiceStub, doc: dict[str, Any]
) -> dict[str, Any]:
    """The answer's proto JSON; its typed values are checked against its snapshot on
    the way (every integration test's answers: tests.support.typed)."""
    answer = response_json(await stub.GetFeatures(request_proto(doc)))
    assert_typed_agrees(answer)
    return answer
