"""The v1 feature language, pure parts: validation, names, filters, window cover, finalize."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ofp.features import Intermediate, finalize, parse_features
from ofp.policy import PolicyError, policy_from_dict, policy_from_normalized
from ofp.windows import HOUR_US, MINUTE_US, feature_window_probe


def _group(**group: Any) -> dict[str, Any]:
    return {"name": "g", "version": "v1", "key_type": "card_id", **group}


def _policy(*features: dict[str, Any], **group: Any) -> Any:
    return policy_from_dict({
        "policy_id": "p", "revision": "r1", "source_topic": "t",
        "feature_groups": [_group(features=list(features), **group)],
    })


def test_names_derive_from_the_definition_and_the_window_as_written() -> None:
    p = _policy(
        {"agg": "count", "window": "10m"},
        {"agg": "sum", "field": "amount", "window": "24h"},
        {"agg": "last", "field": "merchant.id", "window": "1d"},
        {"agg": "seconds_since_last", "window": "7d"},
        {"agg": "last_n", "field": "merchant.id", "window": "24h", "n": 5},
        {"agg": "count", "window": "1h", "name": "declined_1h",
         "where": {"field": "status", "eq": "declined"}},
    )
    assert p.groups[0].feature_names() == [
        "count_10m", "sum_amount_24h", "last_merchant_id_1d", "seconds_since_last_7d",
        "last_n_merchant_id_24h", "declined_1h", "last_event_ts_utc",
    ]
    # The normalized form round-trips through the database's JSON.
    assert policy_from_normalized(p.normalized()) == p


@pytest.mark.parametrize(("feature", "message"), [
    ({"agg": "median", "window": "1h"}, "agg 'median' is not one of"),
    ({"agg": "last_n", "field": "m", "window": "1h"}, "last_n needs n"),
    ({"agg": "last_n", "field": "m", "window": "1h", "n": 101}, "last_n needs n"),
    ({"agg": "last", "field": "m", "window": "1h", "n": 3}, "n applies to last_n only"),
    ({"agg": "distinct_count", "window": "1h"}, "needs a field"),
    ({"agg": "sum", "window": "1h"}, "needs a field"),
    ({"agg": "sum", "field": "a b", "window": "1h"}, "is not a dot path"),
    ({"agg": "count", "window": "30s"}, "whole number of minutes"),
    ({"agg": "count", "window": "0m"}, "whole number of minutes"),
    ({"agg": "count", "window": "1h", "ttl": "10m"}, "shorter than the window"),
    ({"agg": "mean", "field": "a", "window": "1h", "scale": 40}, "scale must be"),
    ({"agg": "sum", "field": "a", "window": "1h", "scale": 2}, "scale applies to"),
    ({"agg": "count", "window": "1h", "name": "Bad-Name"}, "must match"),
    ({"agg": "count", "window": "1h", "name": "last_event_ts_utc"}, "reserved"),
    ({"agg": "count", "window": "1h", "where": {"field": "a", "gt": "x"}}, "compares numbers"),
    ({"agg": "count", "window": "1h", "where": {"field": "a", "eq": 1, "ne": 2}},
     "exactly one of"),
    ({"agg": "count", "window": "1h", "where": {"all": []}}, "non-empty list"),
    ({"agg": "count", "window": "1h", "where": {"field": "a", "in": {"x": 1}}},
     "in takes a non-empty list"),
    ({"agg": "count", "window": "1h", "colour": "red"}, "unknown keys ['colour']"),
])
def test_a_bad_feature_is_refused_naming_the_feature_and_the_field(
    feature: dict[str, Any], message: str
) -> None:
    with pytest.raises(PolicyError) as info:
        _policy({"agg": "count", "window": "1h", "name": "ok"}, feature)
    text = str(info.value)
    assert message in text
    assert "features[1]" in text and "(g)" in text


def test_repeated_names_and_v0_keys_are_refused() -> None:
    with pytest.raises(PolicyError, match="feature names repeat"):
        _policy({"agg": "count", "window": "1h"},
                {"agg": "count", "window": "1h", "where": {"field": "a", "present": True}})
    with pytest.raises(PolicyError, match="amount_field belongs to the v0 form"):
        _policy({"agg": "count", "window": "1h"}, amount_field="amount")


FILTERS: list[tuple[dict[str, Any], dict[str, Any], str, bool]] = [
    ({"field": "s", "eq": "declined"}, {"s": "declined"}, "txn", True),
    ({"field": "s", "eq": "declined"}, {"s": "approved"}, "txn", False),
    ({"field": "n", "eq": 1}, {"n": Decimal("1.0")}, "txn", True),   # numbers as decimals
    ({"field": "n", "eq": 1}, {"n": "1"}, "txn", False),            # a string is not a number
    ({"field": "n", "ne": 1}, {}, "txn", True),                     # absent: not equal
    ({"field": "m", "in": ["a", "b"]}, {"m": "b"}, "txn", True),
    ({"field": "a", "gt": 100}, {"a": 100}, "txn", False),
    ({"field": "a", "ge": 100}, {"a": 100}, "txn", True),
    ({"field": "a", "lt": 0.5}, {"a": Decimal("0.49")}, "txn", True),
    ({"field": "a", "le": 5}, {"a": "5"}, "txn", False),            # not a number: false
    ({"field": "a", "gt": 1}, {}, "txn", False),
    ({"field": "d.id", "present": True}, {"d": {"id": None}}, "txn", False),
    ({"field": "d.id", "present": False}, {"d": {}}, "txn", True),
    ({"field": "d.id", "eq": "x"}, {"d": {"id": "x"}}, "txn", True),
    ({"field": "$event_type", "eq": "chargeback"}, {}, "chargeback", True),
    ({"all": [{"field": "a", "ge": 1}, {"field": "s", "eq": "ok"}]},
     {"a": 2, "s": "ok"}, "txn", True),
    ({"all": [{"field": "a", "ge": 1}, {"field": "s", "eq": "ok"}]},
     {"a": 0, "s": "ok"}, "txn", False),
    ({"any": [{"field": "c", "eq": "web"}, {"field": "c", "eq": "app"}]},
     {"c": "app"}, "txn", True),
    ({"field": "b", "eq": True}, {"b": True}, "txn", True),
    ({"field": "b", "eq": True}, {"b": 1}, "txn", False),
]


@pytest.mark.parametrize(("where", "payload", "event_type", "expected"), FILTERS)
def test_filters(where: dict[str, Any], payload: dict[str, Any], event_type: str,
                 expected: bool) -> None:
    (f,) = parse_features([{"agg": "count", "window": "1h", "where": where}], where="t")
    assert f.where is not None
    assert f.where.matches(payload, event_type) is expected


@given(as_of=st.integers(min_value=-(10**15), max_value=10**17),
       minutes=st.integers(min_value=1, max_value=60 * 24 * 8),
       ts=st.lists(st.integers(min_value=-(10**9), max_value=10**9), max_size=30))
def test_a_feature_window_covers_every_instant_of_lo_hi_exactly_once(
    as_of: int, minutes: int, ts: list[int]
) -> None:
    """Edges, minute tiles and hour tiles partition (lo, hi]: each event time in the
    window is counted once, none outside; at most a minute of events per edge."""
    d = minutes * MINUTE_US
    p = feature_window_probe(as_of, d)
    # Read event by event: at most two minutes of the window, however long it is.
    edges = (min(p.m0_us, p.hi_us + 1) - p.lo_us - 1) + max(0, p.hi_us + 1 - p.m1_us)
    assert edges <= 2 * MINUTE_US
    for offset in ts:
        t = as_of + offset * 1000
        hits = 0
        hits += p.lo_us < t < p.m0_us
        hits += p.m1_us <= t <= p.hi_us
        minute = t - t % MINUTE_US
        hour = t - t % HOUR_US
        hits += (p.m0_us <= minute < p.h0_us) or (p.h1_us <= minute < p.m1_us)
        hits += p.h0_us <= hour < p.h1_us
        assert hits == (1 if p.lo_us < t <= p.hi_us else 0), (t, p)


def _w(values: list[str]) -> Intermediate:
    xs = [Decimal(v) for v in values]
    return Intermediate(len(xs), sum(xs, Decimal(0)), sum((x * x for x in xs), Decimal(0)),
                        min(xs, default=None), max(xs, default=None), None, None, None)


@pytest.mark.parametrize(("agg", "scale", "values", "expected"), [
    ("mean", 2, ["1", "2"], "1.5"),
    ("mean", 0, ["1", "2"], "2"),             # 1.5 -> 2 (half-even)
    ("mean", 0, ["2", "3"], "2"),             # 2.5 -> 2 (half-even)
    ("mean", 6, ["1", "1", "2"], "1.333333"),
    ("variance", 6, ["2", "4", "4", "4", "5", "5", "7", "9"], "4"),  # population
    ("stddev", 6, ["2", "4", "4", "4", "5", "5", "7", "9"], "2"),
    ("stddev", 4, ["10", "30.5", "-2"], "13.4185"),
    ("variance", 2, ["5"], "0"),
    ("mean", 6, [], None),
])
def test_finalize_is_exact_and_rounds_half_even(
    agg: str, scale: int, values: list[str], expected: str | None
) -> None:
    (f,) = parse_features([{"agg": agg, "field": "a", "window": "1h", "scale": scale}],
                          where="t")
    assert finalize(f, _w(values), 0) == expected


@pytest.mark.parametrize("key_type", ["a+a", "a+b+c+d+e", "a b", "a+", "x" * 65])
def test_a_bad_key_type_is_refused(key_type: str) -> None:
    with pytest.raises(PolicyError, match="key_type"):
        _policy({"agg": "count", "window": "1h"}, key_type=key_type)


def test_tuple_key_ids_join_escaped_parts() -> None:
    from ofp.events import Quarantined, feature_key

    assert feature_key("card_id+m.id", {"card_id": 7, "m": {"id": "x|y\\z"}}) == "7|x\\|y\\\\z"
    assert feature_key("card_id+m.id", {"card_id": 7}) is None
    assert feature_key("card_id+m.id", {"card_id": 7, "m": {"id": None}}) is None
    refused = feature_key("card_id+m.id", {"card_id": 7, "m": {"id": "x" * 256}})
    assert isinstance(refused, Quarantined) and refused.reason == "key_invalid"
