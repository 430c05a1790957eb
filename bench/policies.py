"""The feature policies the bench serves: v0 (config/features_v0.yaml) and a rich v1 policy.

The rich policy (docs/features.md) has three v1 groups keyed by three payload
fields of the rich bench events (`workload.write_bus(..., rich=True)`):
`flow_rich` (flow_id; every kind, filters, windows from 10 minutes to 7 days,
modelled on config/features_fraud_example.yaml), `card_rich` (card_id) and
`merchant_rich` (merchant_id). The hot-key policy adds one group per kind
(`kind_<agg>`, flow_id, one 7-day feature each), so a request can read one
kind alone over every event of a key's week.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import procs, workload

Feature = dict[str, Any]

FLOW_FEATURES: list[Feature] = [
    {"agg": "count", "window": "10m"},
    {"agg": "count", "window": "1h"},
    {"agg": "sum", "field": "amount", "window": "24h"},
    {"agg": "min", "field": "amount", "window": "24h"},
    {"agg": "max", "field": "amount", "window": "24h"},
    {"agg": "mean", "field": "amount", "window": "7d"},
    {"agg": "variance", "field": "amount", "window": "7d", "scale": 4},
    {"agg": "stddev", "field": "amount", "window": "7d", "scale": 4},
    {"agg": "first", "field": "event_seq", "window": "24h"},
    {"agg": "last", "field": "merchant_id", "window": "24h"},
    {"agg": "count", "window": "24h", "name": "declined_24h",
     "where": {"field": "status", "eq": "declined"}},
    {"agg": "sum", "field": "amount", "window": "1h", "name": "large_amount_1h",
     "where": {"all": [{"field": "amount", "ge": 300}, {"field": "fraud_flag", "eq": False}]}},
    {"agg": "seconds_since_last", "window": "7d"},
    {"agg": "last_n", "field": "merchant_id", "window": "24h", "n": 5},
    {"agg": "distinct_count", "field": "merchant_id", "window": "7d"},
    {"agg": "approx_distinct_count", "field": "merchant_id", "window": "7d"},
]
CARD_FEATURES: list[Feature] = [
    {"agg": "count", "window": "1h"},
    {"agg": "sum", "field": "amount", "window": "24h"},
    {"agg": "max", "field": "amount", "window": "24h"},
    {"agg": "mean", "field": "amount", "window": "7d", "scale": 2},
    {"agg": "distinct_count", "field": "merchant_id", "window": "24h"},
    {"agg": "last", "field": "merchant_id", "window": "24h"},
    {"agg": "seconds_since_last", "window": "7d"},
    {"agg": "count", "window": "1h", "name": "declined_1h",
     "where": {"field": "status", "eq": "declined"}},
]
MERCHANT_FEATURES: list[Feature] = [
    {"agg": "count", "window": "1h"},
    {"agg": "sum", "field": "amount", "window": "24h"},
    {"agg": "mean", "field": "amount", "window": "24h"},
    {"agg": "stddev", "field": "amount", "window": "7d"},
    {"agg": "distinct_count", "field": "card_id", "window": "24h"},
    {"agg": "approx_distinct_count", "field": "card_id", "window": "7d"},
    {"agg": "count", "window": "1h", "name": "declined_1h",
     "where": {"field": "status", "eq": "declined"}},
]

# One 7-day feature per kind, read alone by the per-kind hot-key runs.
KIND_FEATURES: dict[str, Feature] = {
    "count": {"agg": "count", "window": "7d"},
    "sum": {"agg": "sum", "field": "amount", "window": "7d"},
    "min": {"agg": "min", "field": "amount", "window": "7d"},
    "max": {"agg": "max", "field": "amount", "window": "7d"},
    "mean": {"agg": "mean", "field": "amount", "window": "7d"},
    "variance": {"agg": "variance", "field": "amount", "window": "7d"},
    "stddev": {"agg": "stddev", "field": "amount", "window": "7d"},
    "first": {"agg": "first", "field": "event_seq", "window": "7d"},
    "last": {"agg": "last", "field": "event_seq", "window": "7d"},
    "last_n": {"agg": "last_n", "field": "merchant_id", "window": "7d", "n": 10},
    "distinct_count": {"agg": "distinct_count", "field": "merchant_id", "window": "7d"},
    # every event has its own event_seq: the hot key's 7 days hold N distinct values,
    # the case the approximate kind is for (distinct_count above has 20)
    "approx_distinct_count": {"agg": "approx_distinct_count", "field": "event_seq",
                              "window": "7d"},
    "seconds_since_last": {"agg": "seconds_since_last", "window": "7d"},
}
KINDS = list(KIND_FEATURES)


def _group(name: str, key_type: str, features: list[Feature]) -> dict[str, Any]:
    return {"name": name, "version": "v1", "key_type": key_type, "event_types": ["txn"],
            "features": features}


RICH_GROUPS: list[dict[str, Any]] = [
    _group("flow_rich", "flow_id", FLOW_FEATURES),
    _group("card_rich", "card_id", CARD_FEATURES),
    _group("merchant_rich", "merchant_id", MERCHANT_FEATURES),
]
KIND_GROUPS: list[dict[str, Any]] = [
    _group(f"kind_{kind}", "flow_id", [feature]) for kind, feature in KIND_FEATURES.items()
]


def ref(group: dict[str, Any]) -> dict[str, str]:
    """How a request names the group."""
    return {"name": group["name"], "version": group["version"]}


FLOW_RICH = ref(RICH_GROUPS[0])
RICH_REFS = tuple(ref(g) for g in RICH_GROUPS)


def kind_ref(kind: str) -> dict[str, str]:
    return {"name": f"kind_{kind}", "version": "v1"}


def count_features(groups: list[dict[str, Any]]) -> tuple[int, int, int]:
    """(features, distinct kinds, key types) of `groups`."""
    features = [f for g in groups for f in g["features"]]
    return (len(features), len({f["agg"] for f in features}),
            len({g["key_type"] for g in groups}))


@dataclass(frozen=True)
class BenchPolicy:
    """What the projector and the server are configured with, and what a check asks."""

    name: str
    groups: tuple[dict[str, Any], ...] | None  # None: config/features_v0.yaml
    rich_events: bool  # the bus carries the rich payload
    check_groups: tuple[dict[str, str], ...]  # the groups of the request that says "up"

    def path(self, work: Path) -> Path:
        """OFP_FEATURES_PATH for this policy (written into `work` once)."""
        if self.groups is None:
            return procs.FEATURES_PATH
        path = work / f"policy-{self.name}.yaml"
        if not path.exists():
            doc = {"policy_id": f"ofp.bench.{self.name}", "revision": "r1",
                   "source_topic": workload.TOPIC, "feature_groups": list(self.groups)}
            path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path


V0 = BenchPolicy("v0", None, False, (workload.GROUP,))
RICH = BenchPolicy("rich", tuple(RICH_GROUPS), True, (FLOW_RICH,))
RICH_AND_KINDS = BenchPolicy("rich_kinds", tuple(RICH_GROUPS + KIND_GROUPS), True, (FLOW_RICH,))
