"""The hand-built response equals json_format.ParseDict's, byte for byte."""

from __future__ import annotations

import copy
from typing import Any

import pytest
from google.protobuf import json_format

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.contracts.response_proto import response_proto
from tests.unit.test_golden_hashes import SNAPSHOT

GRAPH_TS = "2026-02-06T00:00:00.000000Z"


def _parse_dict(doc: dict[str, Any]) -> pb.GetFeaturesResponse:
    snap = {k: v for k, v in doc["snapshot"].items() if v is not None}
    msg = pb.GetFeaturesResponse()
    json_format.ParseDict({**doc, "snapshot": snap}, msg)
    return msg


def _doc(**snapshot_changes: Any) -> dict[str, Any]:
    snap = copy.deepcopy(SNAPSHOT)
    snap["snapshot_hash"] = "9" * 64
    snap.update(snapshot_changes)
    return {"status": "OK", "snapshot": snap, "served_at_utc": "2026-11-27T00:00:00.000001Z"}


@pytest.mark.parametrize(
    "doc",
    [
        _doc(),
        {**_doc(), "request_id": "r-1"},
        _doc(features={}),
        _doc(graph_version={"version_id": "a" * 32, "watermark_ts_utc": GRAPH_TS}),
        _doc(pins={**SNAPSHOT["pins"], "seed": 0, "run_id": "0123456789abcdef0123456789abcdef"}),
    ],
    ids=["full", "request_id", "no_features", "graph", "seed0_run_id"],
)
def test_hand_built_response_equals_parse_dict(doc: dict[str, Any]) -> None:
    built = response_proto(doc)
    assert built == _parse_dict(doc)
    assert built.SerializeToString(deterministic=True) == _parse_dict(doc).SerializeToString(
        deterministic=True
    )
