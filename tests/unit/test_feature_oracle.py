"""The v1 feature oracle against hand-computed cases (docs/features.md).

The oracle (tests/support/feature_oracle.py) is the reference the integration
tests hold OFP to, so it is checked here on its own, by numbers worked out by
hand, and its exact rounding against Decimal's own sqrt / quantize.
"""

from __future__ import annotations

import random
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from fractions import Fraction
from typing import Any

import pytest

from ofp.contracts.timefmt import format_micros
from tests.support.feature_oracle import (
    MISSING,
    KeyInvalid,
    OEvent,
    RawNumber,
    ValueInvalid,
    dumps_json,
    exact_number,
    feature_name,
    json_equal,
    key_of,
    matches,
    oracle,
    record_key_invalid,
    record_value_invalid,
    resolve,
    round_half_even,
    sqrt_half_even,
    stale_by_ttl,
    window_us,
)

T = 1_770_422_400_000_000  # 2026-02-07T00:00:00Z
MIN = 60_000_000
HOUR = 60 * MIN

GROUP: dict[str, Any] = {
    "name": "g",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["txn"],
    "features": [
        {"agg": "count", "window": "1h"},
        {"agg": "count", "field": "amount", "window": "1h"},
        {"agg": "sum", "field": "amount", "window": "1h"},
        {"agg": "min", "field": "amount", "window": "1h"},
        {"agg": "max", "field": "amount", "window": "1h"},
        {"agg": "mean", "field": "amount", "window": "1h"},
        {"agg": "variance", "field": "amount", "window": "1h"},
        {"agg": "stddev", "field": "amount", "window": "1h", "scale": 4},
        {"agg": "first", "field": "amount", "window": "1h"},
        {"agg": "last", "field": "amount", "window": "1h"},
        {"agg": "first", "field": "merchant.id", "window": "1h"},
        {"agg": "last", "field": "merchant.id", "window": "1h"},
        {"agg": "seconds_since_last", "window": "1h"},
        {"agg": "count", "window": "7d"},
        {"agg": "last_n", "field": "merchant.id", "window": "1h", "n": 3},
    ],
}


def ev(i: int, ts: int, **payload: Any) -> OEvent:
    return OEvent(f"e{i}", payload.pop("event_type", "txn"), ts, {"card_id": "c1", **payload})


HISTORY = [
    ev(1, T - 50 * MIN, amount=10, merchant={"id": "m1"}),
    ev(2, T - 40 * MIN, amount="-2.5", merchant={"id": "m2"}),
    ev(3, T - 30 * MIN, amount=0, merchant={"id": 7}),
    ev(4, T - 20 * MIN, amount=Decimal("12.125"), merchant={"id": "m4"}),
    ev(5, T - 10 * MIN),
    ev(6, T - 5 * MIN, amount=None),
    ev(7, T - 5 * MIN, event_type="auth", amount=1000),  # not consumed
    OEvent("e8", "txn", T - 5 * MIN, {"card_id": "c2", "amount": 1}),  # another key
    ev(9, T + 1, amount=99),  # after as-of
]


def test_every_kind_by_hand() -> None:
    assert oracle(HISTORY, GROUP, "c1", T) == {
        "count_1h": 6,
        "count_amount_1h": 4,
        "sum_amount_1h": "19.625",
        "min_amount_1h": "-2.5",
        "max_amount_1h": "12.125",
        "mean_amount_1h": "4.90625",  # 19.625 / 4
        "variance_amount_1h": "39.245117",  # 253.265625 / 4 - 4.90625^2 = 39.2451171875
        "stddev_amount_1h": "6.2646",  # sqrt(39.2451171875) = 6.26459234...
        "first_amount_1h": "10",
        "last_amount_1h": "12.125",
        "first_merchant_id_1h": "m1",
        "last_merchant_id_1h": "m4",
        "seconds_since_last_1h": "300",
        "count_7d": 6,
        "last_n_merchant_id_1h": ["m4", "7", "m2"],
        "last_event_ts_utc": format_micros(T - 5 * MIN),
    }


def test_empty_window_gives_null_or_zero_per_kind() -> None:
    # Two hours later: nothing in the 1 h window, the key still present via 7 d.
    got = oracle(HISTORY[:6], GROUP, "c1", T + 2 * HOUR)
    assert got is not None
    assert got["count_1h"] == 0 and got["count_amount_1h"] == 0 and got["count_7d"] == 6
    assert got["sum_amount_1h"] == "0"
    for name in ("min", "max", "mean", "variance", "first", "last"):
        assert got[f"{name}_amount_1h"] is None
    assert got["stddev_amount_1h"] is None
    assert got["first_merchant_id_1h"] is None and got["seconds_since_last_1h"] is None
    assert got["last_n_merchant_id_1h"] == []
    assert got["last_event_ts_utc"] == format_micros(T - 5 * MIN)
    # Missing: nothing within the longest window (7 d), or no such key at all.
    assert oracle(HISTORY[:6], GROUP, "c1", T - 5 * MIN + 7 * 24 * HOUR) is None
    assert oracle(HISTORY[:6], GROUP, "c1", T - 50 * MIN - 1) is None
    assert oracle(HISTORY, GROUP, "nope", T) is None


def test_window_edges_are_half_open() -> None:
    g = {**GROUP, "features": [{"agg": "count", "window": "1m"}, {"agg": "count", "window": "2d"}]}
    one = [ev(1, T)]
    assert oracle(one, g, "c1", T - 1) is None
    assert oracle(one, g, "c1", T) == {
        "count_1m": 1, "count_2d": 1, "last_event_ts_utc": format_micros(T)
    }
    assert oracle(one, g, "c1", T + MIN - 1)["count_1m"] == 1  # type: ignore[index]
    assert oracle(one, g, "c1", T + MIN)["count_1m"] == 0  # type: ignore[index]
    assert oracle(one, g, "c1", T + 2 * 24 * HOUR - 1) is not None
    assert oracle(one, g, "c1", T + 2 * 24 * HOUR) is None


def test_ties_order_by_event_id_code_points() -> None:
    g = {**GROUP, "features": [
        {"agg": "first", "field": "v", "window": "1h"},
        {"agg": "last", "field": "v", "window": "1h"},
        {"agg": "last_n", "field": "v", "window": "1h", "n": 4},
    ]}
    # Code points: "Z" (5A) < "a" (61) < "é" (E9) < U+FFFD < U+1F600.
    ids = ["\U0001f600", "a", "\ufffd", "Z", "\u00e9"]
    events = [OEvent(i, "txn", T, {"card_id": "c1", "v": i}) for i in ids]
    for order in (events, events[::-1]):
        got = oracle(order, g, "c1", T)
        assert got is not None
        assert (got["first_v_1h"], got["last_v_1h"]) == ("Z", "\U0001f600")
        assert got["last_n_v_1h"] == ["\U0001f600", "\ufffd", "\u00e9", "a"]


def test_first_last_value_forms() -> None:
    g = {**GROUP, "features": [{"agg": "last", "field": "v", "window": "1h"}]}
    for value, want in [
        ("12.50", "12.50"),  # a string as given
        (Decimal("12.50"), "12.5"),  # a number as canonical text
        (RawNumber("1E+2"), "100"),
        (RawNumber("-0.0"), "0"),
        (True, "true"),  # always a string
        (False, "false"),
        (0, "0"),
    ]:
        got = oracle([ev(1, T, v=value)], g, "c1", T)
        assert got is not None and got["last_v_1h"] == want, value


def test_distinct_count_compares_values_as_first_last_give_them() -> None:
    g = {**GROUP, "features": [{"agg": "distinct_count", "field": "v", "window": "1h"}]}
    values = [1, "1", Decimal("1.0"), RawNumber("1E+0"), True, "true", "x", None]
    events = [ev(i, T - i, v=v) for i, v in enumerate(values)]
    assert oracle(events, g, "c1", T) == {
        "distinct_count_v_1h": 3, "last_event_ts_utc": format_micros(T)
    }
    assert oracle([ev(1, T, w=1)], g, "c1", T) == {
        "distinct_count_v_1h": 0, "last_event_ts_utc": format_micros(T)
    }


@pytest.mark.parametrize(("values", "scale", "mean", "variance", "stddev"), [
    (["1", "2"], 0, "2", "0", "0"),  # mean 1.5 -> 2; var 0.25 -> 0; sd 0.5 -> 0 (half-even)
    (["2", "3"], 0, "2", "0", "0"),  # mean 2.5 -> 2
    (["-1", "-2"], 0, "-2", "0", "0"),  # mean -1.5 -> -2
    (["0", "1"], 1, "0.5", "0.2", "0.5"),  # var 0.25 -> 0.2 (half-even)
    (["0", "3"], 1, "1.5", "2.2", "1.5"),  # var 2.25 -> 2.2
    (["1", "2", "4"], 6, "2.333333", "1.555556", "1.247219"),  # sd sqrt(14/9) = 1.2472191...
    (["-0.0000001", "0"], 6, "0", "0", "0"),  # -5e-8 rounds to -0: "0", never "-0"
    (["5"], 18, "5", "0", "0"),
    (["0.1", "0.2", "0.3"], 18, "0.2", "0.006666666666666667", "0.081649658092772603"),
])
def test_mean_variance_stddev_rounding_by_hand(
    values: list[str], scale: int, mean: str, variance: str, stddev: str
) -> None:
    g = {**GROUP, "features": [
        {"agg": kind, "field": "amount", "window": "1h", "scale": scale, "name": kind}
        for kind in ("mean", "variance", "stddev")
    ]}
    events = [ev(i, T - i, amount=v) for i, v in enumerate(values)]
    got = oracle(events, g, "c1", T)
    assert got is not None
    assert (got["mean"], got["variance"], got["stddev"]) == (mean, variance, stddev)


def test_exact_rounding_agrees_with_decimal_sqrt_and_quantize() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        value = Fraction(rng.randrange(0, 10**rng.randrange(1, 30)), 10**rng.randrange(0, 35))
        scale = rng.randrange(0, 19)
        with localcontext() as ctx:
            ctx.prec = 400
            exact = Decimal(value.numerator) / Decimal(value.denominator)
            q = Decimal(1).scaleb(-scale)
            assert round_half_even(value, scale) == exact.quantize(q, ROUND_HALF_EVEN)
            assert sqrt_half_even(value, scale) == exact.sqrt().quantize(q, ROUND_HALF_EVEN)
    # Exact ties, where a too-short precision would round the wrong way.
    assert sqrt_half_even(Fraction(25, 100), 0) == 0
    assert sqrt_half_even(Fraction(225, 100), 0) == 2
    assert sqrt_half_even(Fraction(625, 100), 0) == 2
    assert round_half_even(Fraction(-5, 2), 0) == -2
    assert round_half_even(Fraction(-7, 2), 0) == -4


def test_many_decimal_places_stay_exact() -> None:
    g = {**GROUP, "features": [
        {"agg": "sum", "field": "amount", "window": "1h"},
        {"agg": "mean", "field": "amount", "window": "1h", "scale": 18},
    ]}
    a = "0." + "0" * 29 + "1"  # 1e-30
    b = "123456789012345678901234567890.123456789012345678901234567890"
    got = oracle([ev(1, T, amount=a), ev(2, T - 1, amount=RawNumber(b))], g, "c1", T)
    assert got is not None
    assert got["sum_amount_1h"] == "123456789012345678901234567890.123456789012345678901234567891"
    assert got["mean_amount_1h"] == "61728394506172839450617283945.061728394506172839"


def test_numbers_read_exactly_or_invalid() -> None:
    for text, want in [("-0", "0"), ("1e2", "100"), ("1E-2", "0.01"), ("-12.50", "-12.50"),
                       ("0." + "0" * 99 + "1", "1E-100"), ("9" * 100, "9" * 100)]:
        assert exact_number(text) == Decimal(want), text
    for bad in ["+5", ".5", "5.", "01", " 5", "5 ", "0x10", "1e", "NaN", "Infinity", "abc", "",
                "0." + "0" * 100 + "1", "1" * 101, True, False, {"v": 1}, [1]]:
        with pytest.raises(ValueInvalid):
            exact_number(bad)
    assert exact_number(7) == 7 and exact_number(Decimal("1.0")) == Decimal("1.0")


def test_filters_by_hand() -> None:
    e = OEvent("x", "chargeback", T, {
        "card_id": "c1", "status": "declined", "code": 1, "s": "1", "flag": True,
        "amount": Decimal("100.0"), "text_amount": "150", "device": {"id": "d"}, "n": None,
    })
    yes: list[dict[str, Any]] = [
        {"field": "status", "eq": "declined"},
        {"field": "code", "eq": 1.0},
        {"field": "amount", "eq": 100},
        {"field": "s", "eq": "1"},
        {"field": "flag", "eq": True},
        {"field": "status", "ne": "approved"},
        {"field": "s", "ne": 1},
        {"field": "code", "in": ["1", 1]},
        {"field": "amount", "ge": 100},
        {"field": "amount", "le": 100},
        {"field": "amount", "gt": 99.99},
        {"field": "amount", "lt": 100.000001},
        {"field": "device.id", "present": True},
        {"field": "device.model", "present": False},
        {"field": "n", "present": False},
        {"field": "$event_type", "eq": "chargeback"},
        {"all": [{"field": "status", "eq": "declined"},
                 {"any": [{"field": "code", "eq": 2}, {"field": "flag", "eq": True}]}]},
        {"any": [{"all": []}, {"field": "nope", "present": True}]},
    ]
    no: list[dict[str, Any]] = [
        {"field": "code", "eq": "1"},
        {"field": "s", "eq": 1},
        {"field": "flag", "eq": 1},
        {"field": "code", "eq": True},
        {"field": "status", "ne": "declined"},
        {"field": "code", "in": ["1", 2]},
        {"field": "amount", "gt": 100},
        {"field": "amount", "lt": 100},
        {"field": "text_amount", "gt": 1},  # a string is not a number for a comparison
        {"field": "status", "lt": 1},
        {"field": "missing", "le": 1},
        {"field": "flag", "ge": 0},
        {"field": "device.id", "present": False},
        {"field": "missing", "eq": "x"},
        {"field": "$event_type", "eq": "txn"},
        {"any": [{"field": "code", "eq": 2}, {"all": [{"field": "flag", "eq": False}]}]},
    ]
    for w in yes:
        assert matches(w, e), w
    for w in no:
        assert not matches(w, e), w


def test_paths_resolve_through_objects_only() -> None:
    p = {"a": {"b": {"c": 3}}, "s": "text", "n": None}
    assert resolve(p, "a.b.c", "t") == 3
    assert resolve(p, "a.b", "t") == {"c": 3}
    assert resolve(p, "a.x.c", "t") is MISSING
    assert resolve(p, "s.x", "t") is MISSING
    assert resolve(p, "n", "t") is None
    assert resolve(p, "$event_type", "t") == "t"
    assert json_equal(Decimal("1.00"), 1) and not json_equal(MISSING, None)


def test_value_invalid_needs_a_consuming_group_and_the_key() -> None:
    g = GROUP
    assert record_value_invalid([g], ev(1, T, amount="abc"))
    assert record_value_invalid([g], ev(1, T, amount=True))
    assert not record_value_invalid([g], ev(1, T, amount=None))
    assert not record_value_invalid([g], ev(1, T, amount="12.5"))
    assert not record_value_invalid([g], ev(1, T, event_type="auth", amount="abc"))
    # merchant.id is read by first / last: a scalar is fine, an object or array is not.
    assert not record_value_invalid([g], ev(1, T, merchant={"id": "abc"}))
    assert not record_value_invalid([g], ev(1, T, merchant={"id": False}))
    assert record_value_invalid([g], ev(1, T, merchant={"id": {"x": 1}}))
    assert record_value_invalid([g], ev(1, T, merchant={"id": []}))
    # count with a field reads any value.
    counting = {**GROUP, "features": [{"agg": "count", "field": "amount", "window": "1h"}]}
    assert not record_value_invalid([counting], ev(1, T, amount={"x": 1}))


def test_keys_dot_paths_and_tuples() -> None:
    single = {"key_type": "card.id"}
    pair = {"key_type": "card_id+merchant.id"}
    assert key_of(single, {"card": {"id": 42}}) == "42"
    assert key_of(single, {"card": {"id": "a|b\\c"}}) == "a|b\\c"  # one part: as is
    assert key_of(single, {"card_id": 1}) is None
    assert key_of(pair, {"card_id": 4111, "merchant": {"id": "m-77"}}) == "4111|m-77"
    assert key_of(pair, {"card_id": "4111", "merchant": {"id": "m-77"}}) == "4111|m-77"
    assert key_of(pair, {"card_id": "a|b", "merchant": {"id": "c\\d"}}) == "a\\|b|c\\\\d"
    assert key_of(pair, {"card_id": "a", "merchant": {"id": "b|c\\d"}}) == "a|b\\|c\\\\d"
    assert key_of(pair, {"card_id": "4111"}) is None
    assert key_of(pair, {"card_id": "4111", "merchant": {"id": None}}) is None
    bad_keys: list[dict[str, Any]] = [
        {"card_id": True, "merchant": {"id": "m"}},
        {"card_id": "c", "merchant": {"id": {"x": 1}}},
        {"card_id": "", "merchant": {"id": "m"}},
        {"card_id": "x" * 200, "merchant": {"id": "y" * 56}},  # 257 joined
    ]
    for bad in bad_keys:
        with pytest.raises(KeyInvalid):
            key_of(pair, bad)
    assert key_of(pair, {"card_id": "x" * 200, "merchant": {"id": "y" * 55}}) is not None
    e = OEvent("k", "txn", T, {"card_id": True, "merchant": {"id": "m"}})
    assert record_key_invalid([{**pair, "features": []}], e)


def test_names_windows_ttl() -> None:
    assert feature_name({"agg": "last", "field": "merchant.id", "window": "24h"}) == (
        "last_merchant_id_24h"
    )
    assert feature_name({"agg": "count", "window": "10m"}) == "count_10m"
    assert feature_name({"agg": "count", "field": "a", "window": "10m"}) == "count_a_10m"
    assert feature_name({"agg": "count", "window": "1h", "name": "x"}) == "x"
    assert [window_us(w) for w in ("1m", "10m", "25h", "7d")] == [
        MIN, 10 * MIN, 25 * HOUR, 7 * 24 * HOUR
    ]
    for bad in ("30s", "0m", "1w", "1.5h", 60):
        with pytest.raises(ValueError):
            window_us(bad)
    g = {**GROUP, "features": [{"agg": "count", "window": "1h", "ttl": "3h"},
                               {"agg": "count", "window": "7d"}]}
    e = [ev(1, T)]
    assert not stale_by_ttl(e, g, "c1", T + 3 * HOUR)
    assert stale_by_ttl(e, g, "c1", T + 3 * HOUR + 1)


def test_event_lines_write_numbers_exactly() -> None:
    assert dumps_json({"a": Decimal("1.10"), "b": RawNumber("1e2"), "c": [True, None, "x"]}) == (
        '{"a":1.10,"b":1e2,"c":[true,null,"x"]}'
    )
    with pytest.raises(TypeError):
        dumps_json({"a": 0.1})
