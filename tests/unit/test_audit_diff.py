"""The late-data audit's per-feature diff (ofp.audit), as a property."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ofp.audit import basis_offsets, feature_diffs, snapshot_cells

values = st.one_of(st.none(), st.integers(0, 5), st.sampled_from(["0", "1.5", "x"]),
                   st.lists(st.sampled_from(["a", "b"]), max_size=2))
groups = st.dictionaries(st.sampled_from(["g1", "g2"]),
                         st.dictionaries(st.sampled_from(["f1", "f2", "f3"]), values),
                         max_size=2)
features = st.dictionaries(st.sampled_from(["k:1", "k:2", "k:3"]), groups, max_size=3)


def apply(served: dict[str, Any], diffs: list[dict[str, Any]]) -> dict[tuple[str, str, str], Any]:
    flat = {(k, g, f): v for k, gs in served.items() for g, fs in gs.items()
            for f, v in fs.items()}
    for d in diffs:
        flat[(d["key"], d["group"], d["feature"])] = d["now"]
    return flat


@given(features, features)
def test_the_diff_turns_the_served_values_into_the_current_ones(
    served: dict[str, Any], now: dict[str, Any]
) -> None:
    diffs = feature_diffs(served, now)
    flat_now = {(k, g, f): v for k, gs in now.items() for g, fs in gs.items()
                for f, v in fs.items()}
    patched = apply(served, diffs)
    # Every current value is reached; what the diff leaves is only where now has no value.
    assert {k: v for k, v in patched.items() if k in flat_now} == flat_now
    assert all(v is None for k, v in patched.items() if k not in flat_now)
    assert (diffs == []) == (served == now) or _same_but_empty(served, now)
    assert diffs == sorted(diffs, key=lambda d: (d["key"], d["group"], d["feature"]))


def _same_but_empty(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Keys or groups without features differ in no feature."""
    def flat(x: dict[str, Any]) -> dict[tuple[str, str, str], Any]:
        return {(k, g, f): v for k, gs in x.items() for g, fs in gs.items()
                for f, v in fs.items()}
    return flat(a) == flat(b)


def test_a_key_that_appeared_differs_in_each_feature_from_null() -> None:
    now = {"flow_id:1": {"core": {"event_count_1h": 1, "last_event_ts_utc": "t"}}}
    assert feature_diffs({}, now) == [
        {"key": "flow_id:1", "group": "core", "feature": "event_count_1h",
         "served": None, "now": 1},
        {"key": "flow_id:1", "group": "core", "feature": "last_event_ts_utc",
         "served": None, "now": "t"},
    ]
    assert feature_diffs(now, now) == []


def test_cells_and_basis() -> None:
    request = {"feature_keys": [{"key_type": "flow_id", "key_id": "1"}],
               "feature_groups": [{"name": "a", "version": "v1"}, {"name": "b", "version": "v2"}]}
    assert snapshot_cells(request) == [("flow_id", "1", "a", "v1"), ("flow_id", "1", "b", "v2")]
    snap = {"eb_offset_basis": {"offsets": [{"partition": 1, "offset": "12"},
                                            {"partition": 0, "offset": 3}]}}
    assert basis_offsets(snap) == {0: 3, 1: 12}
