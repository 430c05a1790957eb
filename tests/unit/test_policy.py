"""Feature policy loading: every start-up refusal names its problem (docs/contract.md 3)."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from ofp.policy import PolicyError, load_policy, policy_from_dict, policy_from_normalized

REPO = Path(__file__).resolve().parents[2]
BASE: dict[str, Any] = {
    "policy_id": "ofp.features.v0",
    "revision": "r1",
    "source_topic": "t",
    "feature_groups": [{
        "name": "core_features", "version": "v1", "key_type": "flow_id", "amount_field": "amount",
        "windows": [{"window": "1h", "duration": "1h", "ttl": "1h"}],
    }],
}


def _with(path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(BASE)
    target: Any = doc
    for part in path[:-1]:
        target = target[part]
    if value is _DELETE:
        del target[path[-1]]
    else:
        target[path[-1]] = value
    return doc


_DELETE = object()
W = ("feature_groups", 0, "windows")


@pytest.mark.parametrize(
    "doc, message",
    [
        (_with(("policy_id",), _DELETE), "policy_id"),
        (_with(("revision",), ""), "revision"),
        (_with(("feature_groups",), []), "feature_groups"),
        (_with((*W, 0, "duration"), "0h"), "duration"),
        (_with((*W, 0, "duration"), "90"), "duration"),
        (_with((*W, 0, "duration"), "1w"), "duration"),
        (_with((*W, 0, "duration"), "-1h"), "duration"),
        (_with((*W, 0, "ttl"), "30m"), "ttl"),
        (_with(W, [{"window": "a", "duration": "1h"}, {"window": "a", "duration": "2h"}]),
         "repeat"),
        (_with(("feature_groups", 0, "key_type"), _DELETE), "key_type"),
        (_with(("surprise",), 1), "unknown"),
    ],
    ids=lambda x: x if isinstance(x, str) else "",
)
def test_bad_policy_is_refused_with_a_message_naming_the_problem(
    doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError, match=message):
        policy_from_dict(doc)


def test_configured_group_must_exist() -> None:
    with pytest.raises(PolicyError, match="absent"):
        policy_from_dict(BASE, required_groups=("merchant_features",))


def test_omitted_windows_default_to_1h_24h_7d_with_ttl_equal_to_duration() -> None:
    policy = policy_from_dict(_with(W, _DELETE))
    assert [(w.name, w.duration_s, w.ttl_s) for w in policy.groups[0].windows] == [
        ("1h", 3600, 3600), ("24h", 86400, 86400), ("7d", 604800, 604800)
    ]


def test_digests_are_stable_and_transport_free() -> None:
    a = load_policy(REPO / "config" / "features_v0.yaml")
    b = policy_from_normalized(a.normalized())
    assert a.content_digest == b.content_digest
    assert a.run_config_digest(None) == b.run_config_digest(None)
    assert a.run_config_digest(None) != a.run_config_digest("platform_20260206T000000Z")
    assert "bus_kind" not in a.run_config(None)


def test_any_semantic_change_changes_the_content_digest() -> None:
    base = policy_from_dict(BASE).content_digest
    assert policy_from_dict(_with((*W, 0, "ttl"), "2h")).content_digest != base
    assert policy_from_dict(_with(("revision",), "r2")).content_digest != base


def test_decision_loop_outputs_are_not_consumed_by_default() -> None:
    g = policy_from_dict(BASE).groups[0]
    assert not g.consumes("decision_response")
    assert g.consumes("transaction_authorised")
