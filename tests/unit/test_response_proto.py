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


def test_typed_values_are_built_as_their_json_form_says() -> None:
    """Every oneof member, a status, a scale, a missing key: the hand-built typed
    cells equal ParseDict of the JSON form docs/clients.md shows."""
    from ofp.snapshot import (
        DECIMAL,
        INT,
        LIST,
        NO_EVENTS_IN_WINDOW,
        PRESENT,
        STALE,
        TEXT,
        TIME,
        TypedCell,
        TypedValue,
    )

    last_us = 1_770_336_001_000_007
    cells = [
        TypedCell("flow_id", "1", "g", "v1", last_us, (
            TypedValue("count_1h", PRESENT, INT, 3),
            TypedValue("sum_amount_1h", STALE, DECIMAL, "-1.5"),
            TypedValue("mean_amount_7d", PRESENT, DECIMAL, "0.333333", 6),
            TypedValue("min_amount_10m", NO_EVENTS_IN_WINDOW, DECIMAL, None),
            TypedValue("last_merchant_1h", PRESENT, TEXT, "m-7"),
            TypedValue("last_n_merchant_1h", PRESENT, LIST, ["m-7", "m-2"]),
            TypedValue("last_event_ts_utc", PRESENT, TIME, last_us),
        )),
        TypedCell("flow_id", "2", "g", "v1", None, ()),
    ]
    typed_json = [
        {"key_type": "flow_id", "key_id": "1", "group_name": "g", "group_version": "v1",
         "present": True, "last_event_time": "2026-02-06T00:00:01.000007Z", "features": [
             {"name": "count_1h", "status": "VALUE_STATUS_PRESENT", "int64_value": "3"},
             {"name": "sum_amount_1h", "status": "VALUE_STATUS_STALE_BY_TTL",
              "decimal_value": "-1.5"},
             {"name": "mean_amount_7d", "status": "VALUE_STATUS_PRESENT",
              "decimal_value": "0.333333", "scale": 6},
             {"name": "min_amount_10m", "status": "VALUE_STATUS_NO_EVENTS_IN_WINDOW",
              "null_value": None},
             {"name": "last_merchant_1h", "status": "VALUE_STATUS_PRESENT",
              "string_value": "m-7"},
             {"name": "last_n_merchant_1h", "status": "VALUE_STATUS_PRESENT",
              "list_value": {"values": ["m-7", "m-2"]}},
             {"name": "last_event_ts_utc", "status": "VALUE_STATUS_PRESENT",
              "timestamp_value": "2026-02-06T00:00:01.000007Z"},
         ]},
        {"key_type": "flow_id", "key_id": "2", "group_name": "g", "group_version": "v1",
         "present": False, "features": []},
    ]
    built = response_proto(_doc(), cells)
    expected = _parse_dict({**_doc(), "typed_features": typed_json})
    assert built == expected
    assert built.typed_features[0].features[3].WhichOneof("value") == "null_value"
    assert not built.typed_features[1].HasField("last_event_time")
