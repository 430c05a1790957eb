"""Generated contract artifacts match their RTDL sources, pass buf lint, and agree."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from google.protobuf import json_format  # type: ignore[import-untyped,unused-ignore]

from ofp.api.v1 import feature_service_pb2 as pb
from ofp.contracts.schemas import GET_FEATURES_ERROR, GET_FEATURES_RESPONSE, first_error

ROOT = Path(__file__).resolve().parents[2]


def test_generated_contracts_match_sources_when_regenerated() -> None:
    done = subprocess.run(
        [sys.executable, "tools/gen_contracts.py", "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, f"drift (run python tools/gen_contracts.py):\n{done.stderr}"


def test_buf_lint_passes_when_run_on_protos() -> None:
    buf = Path(sys.executable).with_name("buf")
    assert buf.exists(), f"buf not found next to {sys.executable}"
    done = subprocess.run(
        [str(buf), "lint"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_proto_json_validates_against_schema_when_seed_is_read_back_as_number() -> None:
    """contract 4.2: the proto JSON form maps one-to-one onto the schema JSON."""
    ts = "2026-02-06T00:00:01.000000Z"
    response = pb.GetFeaturesResponse(status="OK", served_at_utc=ts, request_id="r1")
    snap = response.snapshot
    snap.snapshot_hash = "1" * 64
    snap.pins.platform_run_id = "platform_20260206T000000Z"
    snap.pins.scenario_run_id = "2" * 32
    snap.pins.scenario_id = "baseline"
    snap.pins.manifest_fingerprint = "3" * 64
    snap.pins.parameter_hash = "4" * 64
    snap.pins.seed = 0
    snap.as_of_time_utc = ts
    snap.created_at_utc = ts
    snap.feature_groups.add(name="core_features", version="v1")
    snap.feature_def_policy_rev.policy_id = "ofp.features.v0"
    snap.feature_def_policy_rev.revision = "r1"
    snap.feature_def_policy_rev.content_digest = "5" * 64
    snap.run_config_digest = "6" * 64
    basis = snap.eb_offset_basis
    basis.stream = "fp.bus.traffic.v1"
    basis.offset_kind = pb.OffsetKind.Value("file_line")
    basis.offsets.add(partition=0, offset="17")
    basis.basis_digest = "7" * 64
    basis.window_end_utc = ts
    snap.features.update({"flow_id:42": {"core_features": {"txn_count_1h": 3, "sum": "12.50"}}})
    snap.freshness.state = pb.HealthState.Value("GREEN")

    doc = json_format.MessageToDict(
        response, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )
    assert doc["snapshot"]["pins"]["seed"] == "0"  # proto3 JSON: 64-bit integers as strings
    assert doc["snapshot"]["eb_offset_basis"]["offset_kind"] == "file_line"
    assert doc["snapshot"]["freshness"] == {
        "state": "GREEN",
        "flags": [],
        "stale_groups": [],
        "missing_groups": [],
        "missing_feature_keys": [],
    }
    doc["snapshot"]["pins"]["seed"] = int(doc["snapshot"]["pins"]["seed"])
    assert first_error(GET_FEATURES_RESPONSE, doc) is None

    error = pb.ErrorResponse(status="ERROR", code="MISSING_PINS", retryable=False, detail="")
    error_doc = json_format.MessageToDict(error, preserving_proto_field_name=True)
    assert error_doc["retryable"] is False and error_doc["detail"] == ""  # explicit presence
    assert first_error(GET_FEATURES_ERROR, error_doc) is None
