"""Golden vectors: the canonical form and the hashes are pinned byte for byte (contract 4.4).

If one of these changes, every hash any client ever stored changes with it:
that is a contract change, never a refactor.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from ofp.contracts.canonical import canonical_json
from ofp.contracts.hashing import basis_digest, normalize_json_snapshot, snapshot_hash

OFFSETS = [{"partition": 0, "offset": "250"}, {"partition": 1, "offset": "7"}]
GOLDEN_BASIS_CANONICAL = (
    b'{"offset_kind":"file_line","offsets":[{"offset":"250","partition":0},'
    b'{"offset":"7","partition":1}],"stream":"fp.bus.traffic.fraud.v1"}'
)
GOLDEN_BASIS_DIGEST = "3ded484ee23411df43f5c3498de5e29c6826f2971b911b98b13524b3c426f096"

SNAPSHOT: dict[str, Any] = {
    "pins": {
        "platform_run_id": "platform_20260206T000000Z",
        "scenario_run_id": "0123456789abcdef0123456789abcdef",
        "scenario_id": "baseline_v1",
        "manifest_fingerprint": "a" * 64,
        "parameter_hash": "b" * 64,
        "seed": 42,
    },
    "as_of_time_utc": "2026-02-06T12:00:00.000000Z",
    "created_at_utc": "2026-11-27T00:00:00.000000Z",
    "feature_groups": [{"name": "core_features", "version": "v1"}],
    "feature_def_policy_rev": {
        "policy_id": "ofp.features.v0",
        "revision": "r1",
        "content_digest": "c" * 64,
    },
    "run_config_digest": "d" * 64,
    "eb_offset_basis": {
        "stream": "fp.bus.traffic.fraud.v1",
        "offset_kind": "file_line",
        "offsets": OFFSETS,
        "basis_digest": GOLDEN_BASIS_DIGEST,
        "window_end_utc": "2026-02-06T16:36:33.393806Z",
    },
    "graph_version": None,
    "features": {
        "flow_id:3": {
            "core_features": {
                "event_count_1h": 6,
                "amount_sum_1h": "1142.43",
                "event_count_24h": 70,
                "amount_sum_24h": "17348.67",
                "event_count_7d": 70,
                "amount_sum_7d": "17348.67",
                "last_event_ts_utc": "2026-02-06T11:52:10.023699Z",
            }
        }
    },
    "freshness": {
        "state": "AMBER",
        "flags": ["MISSING_FEATURE_STATE"],
        "stale_groups": [],
        "missing_groups": [],
        "missing_feature_keys": ["flow_id:99"],
    },
}
GOLDEN_SNAPSHOT_HASH = "3820421a6a0fe4d618a72877f7359134d80ae7a61f738daee13e2a3364fddf4a"


def test_basis_canonical_form_and_digest_are_pinned() -> None:
    body = {"stream": "fp.bus.traffic.fraud.v1", "offset_kind": "file_line", "offsets": OFFSETS}
    assert canonical_json(body) == GOLDEN_BASIS_CANONICAL
    assert basis_digest("fp.bus.traffic.fraud.v1", "file_line", OFFSETS) == GOLDEN_BASIS_DIGEST


def test_snapshot_hash_is_pinned() -> None:
    assert snapshot_hash(SNAPSHOT) == GOLDEN_SNAPSHOT_HASH


def test_excluded_fields_do_not_change_the_hash() -> None:
    other = copy.deepcopy(SNAPSHOT)
    other.update(created_at_utc="2030-01-01T00:00:00.000000Z", snapshot_ref="s3://x", notes="n")
    other["snapshot_hash"] = "f" * 64
    assert snapshot_hash(other) == GOLDEN_SNAPSHOT_HASH


@pytest.mark.parametrize(
    "path, value",
    [
        (("pins", "seed"), 43),
        (("as_of_time_utc",), "2026-02-06T12:00:00.000001Z"),
        (("feature_def_policy_rev", "revision"), "r2"),
        (("run_config_digest",), "e" * 64),
        (("eb_offset_basis", "basis_digest"), "0" * 64),
        (("features", "flow_id:3", "core_features", "amount_sum_1h"), "1142.44"),
        (("freshness", "state"), "GREEN"),
    ],
)
def test_any_hashed_change_changes_the_hash(path: tuple[str, ...], value: Any) -> None:
    other = copy.deepcopy(SNAPSHOT)
    target = other
    for part in path[:-1]:
        target = target[part]
    target[path[-1]] = value
    assert snapshot_hash(other) != GOLDEN_SNAPSHOT_HASH


def test_proto_json_rendering_hashes_like_the_contract_form() -> None:
    """seed as a string, counts as floats, empty lists and null graph_version left out."""
    rendered = copy.deepcopy(SNAPSHOT)
    rendered["pins"]["seed"] = "42"
    values = rendered["features"]["flow_id:3"]["core_features"]
    for name in ("event_count_1h", "event_count_24h", "event_count_7d"):
        values[name] = float(values[name])
    del rendered["graph_version"]
    for name in ("stale_groups", "missing_groups"):
        del rendered["freshness"][name]
    assert snapshot_hash(normalize_json_snapshot(rendered)) == GOLDEN_SNAPSHOT_HASH


def test_canonical_json_refuses_floats() -> None:
    with pytest.raises(TypeError):
        canonical_json({"x": 1.5})
