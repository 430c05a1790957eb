"""The v1 feature language, black box, against a brute-force oracle (docs/features.md).

Every test writes a v1 policy YAML, projects hand-made (or generated) events
through the real projector into a real PostgreSQL, and asks the real gRPC
server. Answers are compared with `tests.support.feature_oracle` (written from
docs/features.md alone, unit-tested by hand in tests/unit/test_feature_oracle.py)
and, for the cases worked out by hand, with literal values.

Features come back through `google.protobuf.Struct`, so an integer count
arrives as a float such as `3.0`: only where the expected value is an integer
is an integral float read back as an int; every other value must have exactly
the expected JSON type (a decimal is a string, a missing value is null).

Tests whose expectation rests on a reading docs/features.md leaves open say so
in their docstring ("Interpretation").
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from ofp.api.v1 import feature_service_pb2_grpc as pb_grpc
from ofp.contracts.hashing import verify_response
from ofp.contracts.timefmt import format_micros
from ofp.policy import Policy, load_policy
from tests.support.feature_oracle import (
    MISSING,
    OEvent,
    RawNumber,
    oracle,
    record_key_invalid,
    record_value_invalid,
    stale_by_ttl,
    window_us,
)
from tests.support.harness import get_features, project_once, running_server
from tests.support.streams import (
    BASE_US,
    HOUR_US,
    TOPIC,
    brute_force,
    generate,
    keys_request,
    pins,
)

pytestmark = pytest.mark.integration

PoolFactory = Callable[[], Awaitable[asyncpg.Pool]]
SEC = 1_000_000
MIN = 60 * SEC
DAY = 24 * HOUR_US
T0 = BASE_US + 10 * HOUR_US  # the as-of most hand-worked cases are stated at


# ------------------------------------------------------------------ helpers


def write_policy(tmp_path: Path, *groups: Mapping[str, Any]) -> tuple[Policy, dict[str, Any]]:
    """A v1 policy YAML in tmp_path: (what OFP loads, the dict the oracle reads)."""
    doc = {
        "policy_id": "ofp.features.lang",
        "revision": "r1",
        "source_topic": TOPIC,
        "feature_groups": [dict(g) for g in groups],
    }
    path = Path(tempfile.mkdtemp(dir=tmp_path)) / "features.yaml"
    text = yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)
    path.write_text(text, encoding="utf-8")
    return load_policy(path), yaml.safe_load(text)


def write_partitions(root: Path, partitions: list[list[str]]) -> None:
    d = root / TOPIC
    d.mkdir(parents=True, exist_ok=True)
    for p, lines in enumerate(partitions):
        (d / f"partition={p}.jsonl").write_text(
            "".join(line + "\n" for line in lines), encoding="utf-8"
        )


def request(
    key_type: str, keys: Iterable[str], groups: Iterable[Mapping[str, Any]], as_of_us: int
) -> dict[str, Any]:
    return {
        "pins": pins("A"),
        "as_of_time_utc": format_micros(as_of_us),
        "feature_keys": [{"key_type": key_type, "key_id": k} for k in keys],
        "feature_groups": [{"name": g["name"], "version": g["version"]} for g in groups],
    }


async def ask(
    stub: pb_grpc.FeatureServiceStub,
    key_type: str,
    keys: Iterable[str],
    groups: Iterable[Mapping[str, Any]],
    as_of_us: int,
) -> dict[str, Any]:
    doc = await get_features(stub, request(key_type, keys, groups, as_of_us))
    ok, claimed, recomputed = verify_response(doc)
    assert ok, f"snapshot_hash does not recompute: {claimed} != {recomputed}"
    snap: dict[str, Any] = doc["snapshot"]
    return snap


def cell(snap: Mapping[str, Any], key_type: str, key: str, group: str) -> dict[str, Any] | None:
    got = snap["features"].get(f"{key_type}:{key}", {}).get(group)
    return None if got is None else dict(got)


def normalised(got: dict[str, Any] | None, want: Mapping[str, Any] | None) -> Any:
    """Read back as int only what is expected to be an int (Struct numbers are floats)."""
    if got is None or want is None:
        return got
    out = dict(got)
    for name, value in want.items():
        v = out.get(name)
        if (
            isinstance(value, int) and not isinstance(value, bool)
            and isinstance(v, float) and v.is_integer()
        ):
            out[name] = int(v)
    return out


def differences(got: Any, want: Any) -> str:
    if got is None or want is None:
        return f"got {got!r}, want {want!r}"
    names = sorted(set(got) | set(want))
    return ", ".join(
        f"{n}: got {got.get(n, '<absent>')!r} want {want.get(n, '<absent>')!r}"
        for n in names if got.get(n, MISSING) != want.get(n, MISSING)
    )


async def oracle_problems(
    stub: pb_grpc.FeatureServiceStub,
    events: list[OEvent],
    group: Mapping[str, Any],
    keys: list[str],
    as_ofs: Iterable[int],
) -> list[str]:
    """Every (as-of, key) whose answer differs from the oracle, described."""
    problems: list[str] = []
    key_type = group["key_type"]
    for as_of in sorted(set(as_ofs)):
        snap = await ask(stub, key_type, keys, [group], as_of)
        missing = snap["freshness"].get("missing_feature_keys", [])
        for key in keys:
            want = oracle(events, group, key, as_of)
            got = normalised(cell(snap, key_type, key, group["name"]), want)
            where = f"{group['name']} {key_type}:{key} at {format_micros(as_of)}"
            if got != want:
                problems.append(f"{where}: {differences(got, want)}")
            if (want is None) != (f"{key_type}:{key}" in missing):
                problems.append(f"{where}: missing_feature_keys {missing}")
    return problems


def assert_no_problems(problems: list[str]) -> None:
    assert not problems, f"{len(problems)} disagreements:\n" + "\n".join(problems[:25])


def edges(events: Iterable[OEvent], windows: Iterable[str]) -> set[int]:
    """Every event time and both window edges around it, to the microsecond."""
    out: set[int] = set()
    durations = [window_us(w) for w in windows]
    for e in events:
        for d in durations:
            for t in (e.ts_us, e.ts_us + d):
                out.update((t - 1, t, t + 1))
    return out


def lines(events: Iterable[OEvent]) -> list[str]:
    return [e.line("A") for e in events]


def txn(event_id: str, ts_us: int, key: Any, event_type: str = "txn", **payload: Any) -> OEvent:
    return OEvent(event_id, event_type, ts_us, {"card_id": key, **payload})


# ------------------------------------------------------------------ every kind

KINDS: dict[str, Any] = {
    "name": "kinds",
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
        {"agg": "last", "field": "flag", "window": "1h"},
        {"agg": "seconds_since_last", "window": "1h"},
        {"agg": "seconds_since_last", "field": "merchant.id", "window": "1h"},
        {"agg": "count", "window": "7d"},
        {"agg": "sum", "field": "amount", "window": "7d"},
        {"agg": "mean", "field": "amount", "window": "7d", "scale": 0, "name": "mean_7d_s0"},
        {"agg": "variance", "field": "amount", "window": "7d", "scale": 18, "name": "var_7d"},
        {"agg": "stddev", "field": "amount", "window": "7d", "scale": 18, "name": "sd_7d"},
        {"agg": "last_n", "field": "merchant.id", "window": "1h", "n": 3},
        {"agg": "last_n", "field": "amount", "window": "7d", "n": 100, "name": "amounts"},
        {"agg": "distinct_count", "field": "merchant.id", "window": "1h"},
        {"agg": "approx_distinct_count", "field": "merchant.id", "window": "1h"},
    ],
}

KINDS_EVENTS = [
    txn("k1", T0 - 50 * MIN, "c1", amount=10, merchant={"id": "m1"}, flag=True),
    txn("k2", T0 - 40 * MIN, "c1", amount="-2.5", merchant={"id": "m2"}, flag=False),
    txn("k3", T0 - 30 * MIN, "c1", amount=0, merchant={"id": 7}),
    txn("k4", T0 - 20 * MIN, "c1", amount=Decimal("12.125"), merchant={"id": "m4"}),
    txn("k5", T0 - 10 * MIN, "c1"),  # no amount, no merchant
    txn("k6", T0 - 5 * MIN, "c1", amount=None, merchant={"id": None}),
    txn("k7", T0 - 5 * MIN, "c1", event_type="auth", amount=1000),  # not consumed
    txn("k8", T0 - 3 * MIN, "c2", amount=1),
    txn("k9", T0 + 1, "c1", amount=99, merchant={"id": "late"}),  # after T0
    # c3: one event two hours before T0: present through 7d, nothing in 1h.
    txn("k10", T0 - 2 * HOUR_US, 42, amount=RawNumber("7.50"), merchant={"id": "m"}),
]


async def test_every_kind_by_hand_and_by_oracle(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    policy, parsed = write_policy(tmp_path, KINDS)
    group = parsed["feature_groups"][0]
    write_partitions(bus_root, [lines(KINDS_EVENTS)])
    totals = await project_once(pool, bus_root, policy=policy)
    assert totals.by_outcome == {"APPLIED": 9, "IGNORED": 1}
    events = [e for e in KINDS_EVENTS if e.event_type == "txn"]
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "card_id", ["c1", "42"], [KINDS], T0)
        counts = {"count_1h": 0, "count_7d": 0, "count_amount_1h": 0,
                  "distinct_count_merchant_id_1h": 0, "approx_distinct_count_merchant_id_1h": 0}
        c1 = normalised(cell(snap, "card_id", "c1", "kinds"), counts)
        assert c1 == {
            "count_1h": 6,
            "count_amount_1h": 4,
            "sum_amount_1h": "19.625",
            "min_amount_1h": "-2.5",
            "max_amount_1h": "12.125",
            "mean_amount_1h": "4.90625",  # 19.625 / 4
            "variance_amount_1h": "39.245117",  # 253.265625/4 - 4.90625^2 = 39.2451171875
            "stddev_amount_1h": "6.2646",  # sqrt(39.2451171875) = 6.26459234...
            "first_amount_1h": "10",
            "last_amount_1h": "12.125",
            "first_merchant_id_1h": "m1",
            "last_merchant_id_1h": "m4",
            "last_flag_1h": "false",  # always a string
            "seconds_since_last_1h": "300",
            "seconds_since_last_merchant_id_1h": "1200",
            "count_7d": 6,
            "sum_amount_7d": "19.625",
            "mean_7d_s0": "5",  # 4.90625 -> 5
            "var_7d": "39.2451171875",
            "sd_7d": "6.264592340088858487",  # sqrt(39.2451171875) = 6.2645923400888584874...
            "last_n_merchant_id_1h": ["m4", "7", "m2"],  # newest first; k6's null skipped
            "amounts": ["12.125", "0", "-2.5", "10"],
            "distinct_count_merchant_id_1h": 4,
            "approx_distinct_count_merchant_id_1h": 4,
            "last_event_ts_utc": format_micros(T0 - 5 * MIN),
        }
        # An empty 1 h window: zero for count and sum, null for every other kind.
        c3 = normalised(cell(snap, "card_id", "42", "kinds"), counts)
        assert c3 == {
            "count_1h": 0, "count_amount_1h": 0, "sum_amount_1h": "0",
            "min_amount_1h": None, "max_amount_1h": None, "mean_amount_1h": None,
            "variance_amount_1h": None, "stddev_amount_1h": None,
            "first_amount_1h": None, "last_amount_1h": None,
            "first_merchant_id_1h": None, "last_merchant_id_1h": None, "last_flag_1h": None,
            "seconds_since_last_1h": None, "seconds_since_last_merchant_id_1h": None,
            "count_7d": 1, "sum_amount_7d": "7.5", "mean_7d_s0": "8",  # 7.5 -> 8 (half-even)
            "var_7d": "0", "sd_7d": "0",
            "last_n_merchant_id_1h": [], "amounts": ["7.5"], "distinct_count_merchant_id_1h": 0,
            "approx_distinct_count_merchant_id_1h": 0,
            "last_event_ts_utc": format_micros(T0 - 2 * HOUR_US),
        }
        as_ofs = edges(KINDS_EVENTS, ["1h", "7d"]) | {T0, T0 + 3 * HOUR_US}
        problems = await oracle_problems(stub, events, group, ["c1", "c2", "42", "nope"], as_ofs)
    assert_no_problems(problems)


# ------------------------------------------------------------------ windows and edges

WINDOWS = ("1m", "10m", "1h", "25h", "7d")
WIN: dict[str, Any] = {
    "name": "win",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["txn"],
    "features": [
        *({"agg": "count", "window": w} for w in WINDOWS),
        *({"agg": "sum", "field": "amount", "window": w} for w in WINDOWS),
        {"agg": "mean", "field": "amount", "window": "10m", "scale": 3},
        {"agg": "max", "field": "amount", "window": "25h"},
        {"agg": "first", "field": "merchant.id", "window": "25h"},
        {"agg": "last", "field": "merchant.id", "window": "25h"},
        {"agg": "last_n", "field": "merchant.id", "window": "1m", "n": 2},
        {"agg": "seconds_since_last", "window": "7d"},
    ],
}
E1 = BASE_US + DAY  # on a day, hour and minute boundary
THIRTY = "0." + "0" * 29 + "1"  # 30 fractional digits
WIN_EVENTS = [
    txn("w1", E1, "w1", amount=1, merchant={"id": "a"}),
    txn("w2", E1 + 1, "w1", amount=THIRTY, merchant={"id": "b"}),
    txn("w3", E1 + MIN - 1, "w1", amount=-2),
    txn("w4", E1 + MIN, "w1", amount=0, merchant={"id": "d"}),
    txn("w5", E1 + 10 * MIN, "w1", amount=Decimal("3.5")),
    txn("w6", E1 + HOUR_US - 1, "w1", amount=4, merchant={"id": "f"}),
    txn("w7", E1 + 25 * HOUR_US, "w1", amount=5),
    txn("w8", E1 + 3 * DAY + 17, "w1", amount=6, merchant={"id": "h"}),
    txn("w9", E1 + 7 * DAY + HOUR_US, "w1", amount=7),
    txn("x1", E1, "w2", amount=1),
    txn("x2", E1 + 7 * DAY, "w2", amount=2),
]


async def test_windows_are_exact_to_the_microsecond_at_both_edges(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    policy, parsed = write_policy(tmp_path, WIN)
    group = parsed["feature_groups"][0]
    write_partitions(bus_root, [lines(WIN_EVENTS[::2]), lines(WIN_EVENTS[1::2])])
    await project_once(pool, bus_root, policy=policy)

    def at(snap: dict[str, Any], key: str = "w1") -> dict[str, Any]:
        got = cell(snap, "card_id", key, "win")
        assert got is not None
        return got

    async with running_server(pool, bus_root) as (_, stub):
        # 1m: (T - 60 s, T].
        got = at(await ask(stub, "card_id", ["w1"], [WIN], E1 + MIN - 1))
        assert (got["count_1m"], got["sum_amount_1m"]) == (3, "-0." + "9" * 30)
        got = at(await ask(stub, "card_id", ["w1"], [WIN], E1 + MIN))
        assert (got["count_1m"], got["sum_amount_1m"]) == (3, "-1." + "9" * 30)
        # 25h: T = w7 excludes w1 exactly; one microsecond earlier includes it.
        got = at(await ask(stub, "card_id", ["w1"], [WIN], E1 + 25 * HOUR_US))
        assert (got["count_25h"], got["first_merchant_id_25h"]) == (6, "b")
        got = at(await ask(stub, "card_id", ["w1"], [WIN], E1 + 25 * HOUR_US - 1))
        assert (got["count_25h"], got["first_merchant_id_25h"]) == (6, "a")
        got = at(await ask(stub, "card_id", ["w1"], [WIN], E1 + 25 * HOUR_US + 1))
        assert (got["count_25h"], got["first_merchant_id_25h"]) == (5, "d")
        # 7d: (T - 7 d, T] at T = x2's time excludes x1 exactly.
        snap = await ask(stub, "card_id", ["w2"], [WIN], E1 + 7 * DAY)
        assert (at(snap, "w2")["count_7d"], at(snap, "w2")["sum_amount_7d"]) == (1, "2")
        snap = await ask(stub, "card_id", ["w2"], [WIN], E1 + 7 * DAY - 1)
        assert (at(snap, "w2")["count_7d"], at(snap, "w2")["sum_amount_7d"]) == (1, "1")
        assert at(snap, "w2")["seconds_since_last_7d"] == "604799.999999"

        as_ofs = edges(WIN_EVENTS, WINDOWS)
        problems = await oracle_problems(stub, WIN_EVENTS, group, ["w1", "w2", "w404"], as_ofs)
    assert_no_problems(problems)


# ------------------------------------------------------------------ dense history

DENSE: dict[str, Any] = {
    "name": "dense",
    "version": "v1",
    "key_type": "card_id",
    # No event_types: every type but the decision loop's own (decision_response, ...).
    "features": [
        *({"agg": "count", "window": w} for w in WINDOWS),
        *({"agg": "sum", "field": "amount", "window": w} for w in WINDOWS),
        *({"agg": "min", "field": "amount", "window": w} for w in ("1m", "1h", "7d")),
        *({"agg": "max", "field": "amount", "window": w} for w in ("10m", "25h")),
        *({"agg": "mean", "field": "amount", "window": w} for w in ("1m", "25h")),
        {"agg": "variance", "field": "amount", "window": "1h", "scale": 9},
        {"agg": "stddev", "field": "amount", "window": "7d", "scale": 9},
        *({"agg": "first", "field": "amount", "window": w} for w in ("1m", "1h", "7d")),
        *({"agg": "last", "field": "amount", "window": w} for w in ("10m", "25h")),
        *({"agg": "seconds_since_last", "window": w} for w in ("1m", "10m", "7d")),
        {"agg": "last_n", "field": "amount", "window": "10m", "n": 3},
        {"agg": "last_n", "field": "amount", "window": "25h", "n": 100},
        {"agg": "distinct_count", "field": "amount", "window": "1h"},
        *({"agg": "distinct_count", "field": "m", "window": w} for w in WINDOWS),
        *({"agg": "approx_distinct_count", "field": "m", "window": w} for w in WINDOWS),
        {"agg": "approx_distinct_count", "field": "amount", "window": "10m"},
        {"agg": "first", "field": "m", "window": "25h"},
        {"agg": "last_n", "field": "m", "window": "1h", "n": 4},
    ],
}


def dense_events(seed: int, n: int) -> list[OEvent]:
    """One hot key (and a quiet one) over eight days: on and off minute and hour
    boundaries, ties, negative and zero amounts, decision events that do not count."""
    rng = random.Random(seed)
    start = BASE_US + DAY
    out = []
    for i in range(n):
        style = rng.randrange(4)
        if style == 0:
            ts = start + rng.randrange(0, 8 * DAY)
        elif style == 1:
            ts = start + rng.randrange(0, 8 * 24 * 60) * MIN + rng.choice([-1, 0, 0, 1])
        elif style == 2:
            ts = start + rng.randrange(0, 8 * 24) * HOUR_US + rng.choice([-1, 0, 1])
        else:
            ts = start + 2 * DAY + rng.randrange(0, 90) * MIN + rng.randrange(-3, 3) * SEC
        amount = rng.choice([
            rng.randrange(-10**6, 10**6), Decimal(rng.randrange(-10**9, 10**9)).scaleb(-4),
            "0", None, MISSING, Decimal(rng.randrange(1, 10**12)).scaleb(-30),
        ])
        payload: dict[str, Any] = {"card_id": "hot" if rng.random() < 0.9 else "quiet"}
        if amount is not MISSING:
            payload["amount"] = amount
        # A few distinct values, repeated across tiles and edges (5 and "5" are one).
        m = rng.choice(["m0", "m1", "m2", 5, "5", True, "true", None, MISSING])
        if m is not MISSING:
            payload["m"] = m
        etype = rng.choice(["txn", "txn", "auth", "decision_response"])
        out.append(OEvent(f"d{rng.randrange(10**6):06d}-{i}", etype, ts, payload))
    return out


async def test_a_dense_history_late_and_out_of_order_matches_the_oracle(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """Hundreds of events on one key, projected in two rounds (the second full of late,
    out-of-order events that land in tiles already written): every window of every
    kind at random as-of times and on minute and hour boundaries equals the oracle."""
    policy, parsed = write_policy(tmp_path, DENSE)
    group = parsed["feature_groups"][0]
    events = dense_events(5, 500)
    rng = random.Random(8)
    early = sorted(events[:250], key=lambda e: e.ts_us)
    late = events[250:]
    rng.shuffle(late)
    write_partitions(bus_root, [lines(early[::2]), lines(early[1::2])])
    await project_once(pool, bus_root, policy=policy, batch_size=50)
    write_partitions(bus_root, [lines(early[::2] + late[::2]), lines(early[1::2] + late[1::2])])
    totals = await project_once(pool, bus_root, policy=policy, batch_size=7)
    consumed = [e for e in events if e.event_type != "decision_response"]
    assert totals.by_outcome.get("APPLIED", 0) == len([e for e in consumed if e in late])
    times = sorted(e.ts_us for e in consumed)
    as_ofs = {times[0], times[-1] + 1}
    for _ in range(30):
        t = rng.choice(times)
        as_ofs.update({t, t + window_us(rng.choice(WINDOWS)) + rng.choice([-1, 0, 1])})
        as_ofs.add(rng.randrange(times[0], times[-1] + 2 * DAY))
        base = rng.randrange(times[0], times[-1])
        as_ofs.update({base - base % HOUR_US, base - base % MIN + rng.choice([-1, 0, 1])})
    async with running_server(pool, bus_root) as (_, stub):
        problems = await oracle_problems(stub, consumed, group, ["hot", "quiet"], as_ofs)
    assert_no_problems(problems)


# ------------------------------------------------------------------ first / last forms

FORMS: dict[str, Any] = {
    "name": "forms",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["txn"],
    "features": [
        {"agg": "first", "field": "v", "window": "1h"},
        {"agg": "last", "field": "v", "window": "1h"},
        {"agg": "last_n", "field": "v", "window": "1h", "n": 1},
        {"agg": "distinct_count", "field": "v", "window": "1h"},
        {"agg": "approx_distinct_count", "field": "v", "window": "1h"},
    ],
}
FORMS_CASES: list[tuple[Any, Any]] = [
    ("12.50", "12.50"),  # a string as given, even when it reads as a number
    ("abc", "abc"),
    ("", ""),
    (Decimal("12.50"), "12.5"),  # a number as its canonical decimal text
    (RawNumber("1E+2"), "100"),
    (RawNumber("-0.0"), "0"),
    (RawNumber("-7"), "-7"),
    (True, "true"),  # a boolean as "true" / "false": always a string
    (False, "false"),
]
# Values compared as first/last give them: 1, 1.0, 1E+0 and "1" are one value, as are
# true and "true"; null does not count.
MIX = [1, "1", Decimal("1.0"), RawNumber("1E+0"), True, "true", "x", None, RawNumber("-0"), "0"]


async def test_first_last_last_n_and_distinct_count_read_values_as_strings(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    policy, parsed = write_policy(tmp_path, FORMS)
    events = [txn(f"v{i}", T0 - MIN, f"f{i}", v=v) for i, (v, _) in enumerate(FORMS_CASES)]
    events += [txn(f"mix{i}", T0 - 2 * MIN + i, "mix", v=v) for i, v in enumerate(MIX)]
    write_partitions(bus_root, [lines(events)])
    await project_once(pool, bus_root, policy=policy)
    keys = [f"f{i}" for i in range(len(FORMS_CASES))]
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "card_id", keys, [FORMS], T0)
        got = {}
        for key in keys:
            c = cell(snap, "card_id", key, "forms") or {}
            got[key] = (c.get("first_v_1h"), c.get("last_v_1h"), c.get("last_n_v_1h"),
                        normalised(c, {"distinct_count_v_1h": 0}).get("distinct_count_v_1h"))
        assert got == {k: (w, w, [w], 1) for k, (_, w) in zip(keys, FORMS_CASES, strict=True)}
        snap = await ask(stub, "card_id", ["mix"], [FORMS], T0)
        mix = normalised(
            cell(snap, "card_id", "mix", "forms"),
            {"distinct_count_v_1h": 0, "approx_distinct_count_v_1h": 0},
        )
        assert mix == {
            "first_v_1h": "1", "last_v_1h": "0", "last_n_v_1h": ["0"],
            "distinct_count_v_1h": 4,  # "1", "true", "x", "0"
            "approx_distinct_count_v_1h": 4,
            "last_event_ts_utc": format_micros(T0 - 2 * MIN + len(MIX) - 1),
        }
        problems = await oracle_problems(
            stub, events, parsed["feature_groups"][0], [*keys, "mix"], [T0, T0 + HOUR_US]
        )
    assert_no_problems(problems)


# ------------------------------------------------------------------ approx_distinct_count

HLL: dict[str, Any] = {
    "name": "hll",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["txn"],
    "features": [
        {"agg": "approx_distinct_count", "field": "v", "window": "25h", "name": "approx"},
        {"agg": "distinct_count", "field": "v", "window": "25h", "name": "exact"},
    ],
}


async def test_approx_distinct_count_is_close_exact_when_small_and_order_free(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """approx_distinct_count: relative standard error 1.6 % (asserted within 5 %, about
    three standard errors), exact below a few hundred values (asserted for 100), and
    the same set of values always gives the same estimate, whatever the order,
    repetitions, tiles and partitions the values arrive in."""
    policy, _ = write_policy(tmp_path, HLL)
    n = 1500
    rng = random.Random(4)
    day = 24 * HOUR_US
    a = [txn(f"a{i}", T0 - day + i * (day // n), "a", v=f"value-{i}") for i in range(n)]
    b = [
        txn(f"b{i}-{copy}", T0 - rng.randrange(0, day), "b", v=f"value-{i}")
        for i in range(n) for copy in range(2)
    ]
    rng.shuffle(b)
    small = [txn(f"c{i}", T0 - i * MIN, "c", v=i) for i in range(100)]
    write_partitions(bus_root, [lines(a + b[: n]), lines(small + b[n:])])
    await project_once(pool, bus_root, policy=policy)
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "card_id", ["a", "b", "c"], [HLL], T0)
    got = {
        k: normalised(cell(snap, "card_id", k, "hll"), {"approx": 0, "exact": 0})
        for k in ("a", "b", "c")
    }
    assert got["a"]["exact"] == got["b"]["exact"] == n
    assert got["a"]["approx"] == got["b"]["approx"], "the same set gave two estimates"
    assert abs(got["a"]["approx"] - n) <= 0.05 * n, got["a"]
    assert (got["c"]["approx"], got["c"]["exact"]) == (100, 100)


# ------------------------------------------------------------------ ties

TIES: dict[str, Any] = {
    "name": "ties",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["txn"],
    "features": [
        {"agg": "first", "field": "v", "window": "1h"},
        {"agg": "last", "field": "v", "window": "1h"},
        {"agg": "first", "field": "amount", "window": "1h"},
        {"agg": "last", "field": "amount", "window": "1h"},
        {"agg": "count", "window": "1h"},
        {"agg": "seconds_since_last", "window": "1h"},
        {"agg": "last", "field": "w", "window": "1m", "name": "last_w_edge"},
        {"agg": "last_n", "field": "v", "window": "1h", "n": 100},
        {"agg": "last_n", "field": "w", "window": "1m", "n": 1, "name": "last_n_w_edge"},
    ],
}
# Code point order: "Z" (5A) < "a" (61) < "b" (62) < "é" (E9) < U+FFFD < U+1F600.
# (UTF-16 order would put U+1F600, a surrogate pair, before U+FFFD.)
TIE_SUFFIXES = ["\U0001f600", "a", "\ufffd", "Z", "\u00e9", "b"]


def tie_events(key: str) -> list[OEvent]:
    out = [
        txn(f"{key}-{s}", T0, key, v=s, amount=Decimal(i) / 4)
        for i, s in enumerate(TIE_SUFFIXES)
    ]
    # The latest tied event carries no v: `last v` is the latest event that does.
    out.append(txn(f"{key}-\U0010ffff", T0, key, amount=99))
    # Ties on the 1 m window's lower edge: both out at T0 + 60 s, both in 1 us before.
    out += [txn(f"{key}-edge-{s}", T0 - MIN + 1, key, w=s) for s in ("y", "x")]
    return out


async def test_ties_order_by_time_then_event_id_code_points(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    policy, parsed = write_policy(tmp_path, TIES)
    group = parsed["feature_groups"][0]
    forward, backward = tie_events("t1"), tie_events("t2")[::-1]
    # t1 in id order on one partition; t2 reversed and split over two.
    write_partitions(bus_root, [lines(forward + backward[:4]), lines(backward[4:])])
    await project_once(pool, bus_root, policy=policy, batch_size=3)
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "card_id", ["t1", "t2"], [TIES], T0)
        for key in ("t1", "t2"):
            got = cell(snap, "card_id", key, "ties")
            assert got is not None
            assert (got["first_v_1h"], got["last_v_1h"]) == ("Z", "\U0001f600"), key
            # amount: Z is index 3 -> 0.75; the U+10FFFF event (99) is the latest.
            assert (got["first_amount_1h"], got["last_amount_1h"]) == ("0.75", "99"), key
            assert got["last_w_edge"] == "y", key
            assert got["last_n_v_1h"] == ["\U0001f600", "\ufffd", "\u00e9", "b", "a", "Z"], key
            assert got["last_n_w_edge"] == ["y"], key
            assert got["seconds_since_last_1h"] == "0", key
        assert cell(snap, "card_id", "t1", "ties") == cell(snap, "card_id", "t2", "ties")
        as_ofs = edges(forward, ["1m", "1h"])
        problems = await oracle_problems(stub, forward + backward, group, ["t1", "t2"], as_ofs)
    assert_no_problems(problems)


# ------------------------------------------------------------------ decimals

DEC: dict[str, Any] = {
    "name": "dec",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["txn"],
    "features": [
        {"agg": "sum", "field": "amount", "window": "1h"},
        {"agg": "min", "field": "amount", "window": "1h"},
        {"agg": "max", "field": "amount", "window": "1h"},
        {"agg": "mean", "field": "amount", "window": "1h"},
        {"agg": "mean", "field": "amount", "window": "1h", "scale": 0, "name": "mean_s0"},
        {"agg": "mean", "field": "amount", "window": "1h", "scale": 18, "name": "mean_s18"},
        {"agg": "variance", "field": "amount", "window": "1h", "scale": 1, "name": "var_s1"},
        {"agg": "variance", "field": "amount", "window": "1h", "scale": 18, "name": "var_s18"},
        {"agg": "stddev", "field": "amount", "window": "1h", "scale": 0, "name": "sd_s0"},
        {"agg": "stddev", "field": "amount", "window": "1h", "scale": 1, "name": "sd_s1"},
        {"agg": "stddev", "field": "amount", "window": "1h", "scale": 18, "name": "sd_s18"},
    ],
}
BIG = RawNumber("9" * 100)
DEC_VALUES: dict[str, list[Any]] = {
    "half1": ["1", "2"],
    "half2": [2, 3],
    "neg": [RawNumber("-1"), "-2"],
    "zeros": [0, "-0", RawNumber("0.000"), RawNumber("-0.0")],
    "negzero": ["-0.0000001", 0],
    "places30": [
        RawNumber(THIRTY), "123456789012345678901234567890.123456789012345678901234567890"
    ],
    "big": [BIG, 1],
    "tiny": ["0." + "0" * 99 + "1"],
    "third": [1, 2, 4],
    "tenths": [RawNumber("0.1"), RawNumber("0.2"), RawNumber("0.3")],
    "exp": [RawNumber("1E+2"), "1e2", RawNumber("25e-1")],
}
# Worked out by hand: (key, feature) -> value.
DEC_BY_HAND: dict[tuple[str, str], Any] = {
    ("half1", "mean_s0"): "2",  # 1.5 -> 2
    ("half1", "var_s1"): "0.2",  # 0.25 -> 0.2 (half-even)
    ("half1", "sd_s0"): "0",  # 0.5 -> 0 (half-even)
    ("half1", "sd_s1"): "0.5",
    ("half2", "mean_s0"): "2",  # 2.5 -> 2
    ("half2", "mean_amount_1h"): "2.5",
    ("neg", "mean_s0"): "-2",  # -1.5 -> -2
    ("neg", "sum_amount_1h"): "-3",
    ("neg", "min_amount_1h"): "-2",
    ("neg", "max_amount_1h"): "-1",
    ("zeros", "sum_amount_1h"): "0",
    ("zeros", "min_amount_1h"): "0",
    ("zeros", "max_amount_1h"): "0",
    ("zeros", "mean_s18"): "0",
    ("zeros", "sd_s18"): "0",
    ("negzero", "sum_amount_1h"): "-0.0000001",
    ("negzero", "mean_amount_1h"): "0",  # -0.00000005 -> -0 -> "0"
    ("negzero", "min_amount_1h"): "-0.0000001",
    ("places30", "sum_amount_1h"): "123456789012345678901234567890.123456789012345678901234567891",
    ("places30", "min_amount_1h"): THIRTY,
    ("places30", "mean_s18"): "61728394506172839450617283945.061728394506172839",
    ("big", "sum_amount_1h"): "1" + "0" * 100,
    ("big", "max_amount_1h"): "9" * 100,
    ("tiny", "sum_amount_1h"): "0." + "0" * 99 + "1",
    ("tiny", "mean_s18"): "0",
    ("third", "mean_amount_1h"): "2.333333",
    ("third", "var_s1"): "1.6",  # 14/9 = 1.555...
    ("third", "var_s18"): "1.555555555555555556",
    ("tenths", "sum_amount_1h"): "0.6",
    ("tenths", "mean_s18"): "0.2",
    ("tenths", "var_s18"): "0.006666666666666667",
    ("exp", "sum_amount_1h"): "202.5",
    ("exp", "max_amount_1h"): "100",
}


async def test_decimals_are_exact_and_rounded_half_even(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    policy, parsed = write_policy(tmp_path, DEC)
    group = parsed["feature_groups"][0]
    events = [
        txn(f"{key}-{i}", T0 - (i + 1) * MIN, key, amount=v)
        for key, values in DEC_VALUES.items()
        for i, v in enumerate(values)
    ]
    write_partitions(bus_root, [lines(events)])
    totals = await project_once(pool, bus_root, policy=policy)
    assert totals.by_outcome == {"APPLIED": len(events)}
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "card_id", list(DEC_VALUES), [DEC], T0)
        answers = {k: cell(snap, "card_id", k, "dec") or {} for k in DEC_VALUES}
        wrong = {
            (key, name): (answers[key].get(name), want)
            for (key, name), want in DEC_BY_HAND.items()
            if answers[key].get(name) != want
        }
        assert not wrong, wrong
        problems = await oracle_problems(stub, events, group, list(DEC_VALUES), [T0, T0 - 90 * SEC])
    assert_no_problems(problems)


# ------------------------------------------------------------------ dot paths

PATHS: dict[str, Any] = {
    "name": "paths",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["pay"],
    "features": [
        {"agg": "sum", "field": "txn.amount.value", "window": "1h"},
        {"agg": "count", "field": "txn.amount.value", "window": "1h"},
        {"agg": "min", "field": "txn.amount.value", "window": "1h"},
        {"agg": "max", "field": "txn.amount.value", "window": "1h"},
        {"agg": "first", "field": "merchant.geo.country", "window": "1h"},
        {"agg": "last", "field": "merchant.geo.country", "window": "1h"},
        {"agg": "count", "field": "merchant.geo.country", "window": "1h"},
        {"agg": "last", "field": "merchant.id", "window": "1h"},
        {"agg": "count", "window": "1h", "name": "ios_1h",
         "where": {"field": "device.os.name", "eq": "ios"}},
        {"agg": "count", "window": "90m"},  # any whole number of minutes, named as written
    ],
}
PATH_EVENTS = [
    txn("p1", T0 - 5 * MIN, "p", "pay", txn={"amount": {"value": 10}},
        merchant={"id": "m1", "geo": {"country": "FR"}}, device={"os": {"name": "ios"}}),
    txn("p2", T0 - 4 * MIN, "p", "pay", txn={"amount": {"value": "2.5"}}, merchant={"id": "m2"}),
    txn("p3", T0 - 3 * MIN, "p", "pay", txn={"amount": {}},
        merchant={"id": "m3", "geo": {"country": None}}),
    txn("p4", T0 - 2 * MIN, "p", "pay", txn={"amount": {"value": Decimal("-0.25")}},
        merchant={"id": "m4", "geo": {"country": "DE"}}, device={"os": {"name": "android"}}),
    txn("p5", T0 - 1 * MIN, "p", "pay", txn={}, merchant={"geo": {"country": "ES"}},
        device={"os": {}}),
    # Flat keys that merely look like the path do not match it.
    txn("p6", T0 - 30 * SEC, "p", "pay", **{"txn.amount.value": 1000, "merchant.id": "flat"}),
]


async def test_dot_paths_reach_into_nested_payloads(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    policy, parsed = write_policy(tmp_path, PATHS)
    group = parsed["feature_groups"][0]
    write_partitions(bus_root, [lines(PATH_EVENTS)])
    await project_once(pool, bus_root, policy=policy)
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "card_id", ["p"], [PATHS], T0)
        want = {
            "sum_txn_amount_value_1h": "12.25",
            "count_txn_amount_value_1h": 3,
            "min_txn_amount_value_1h": "-0.25",
            "max_txn_amount_value_1h": "10",
            "first_merchant_geo_country_1h": "FR",
            "last_merchant_geo_country_1h": "ES",
            "count_merchant_geo_country_1h": 3,
            "last_merchant_id_1h": "m4",
            "ios_1h": 1,
            "count_90m": 6,
            "last_event_ts_utc": format_micros(T0 - 30 * SEC),
        }
        assert normalised(cell(snap, "card_id", "p", "paths"), want) == want
        as_ofs = edges(PATH_EVENTS, ["1h"])
        problems = await oracle_problems(stub, PATH_EVENTS, group, ["p"], as_ofs)
    assert_no_problems(problems)


# ------------------------------------------------------------------ filters

FILTER_FEATURES: list[tuple[str, dict[str, Any], int]] = [
    # (name, where, count for key a1 at T0: worked out by hand from FILTER_EVENTS)
    ("declined", {"field": "status", "eq": "declined"}, 3),
    ("not_declined", {"field": "status", "ne": "declined"}, 5),
    ("code_eq_1", {"field": "code", "eq": 1}, 3),  # 1, 1.0, 1.00; not "1"
    ("code_eq_1f", {"field": "code", "eq": 1.0}, 3),
    ("code_eq_str1", {"field": "code", "eq": "1"}, 1),
    ("flag_true", {"field": "flag", "eq": True}, 1),  # not the number 1
    ("flag_false", {"field": "flag", "eq": False}, 1),  # not the number 0
    ("mcc_in_str", {"field": "mcc", "in": ["5967", "7995"]}, 2),
    ("mcc_in_num", {"field": "mcc", "in": [5967, 7995]}, 1),
    ("score_gt_100", {"field": "score", "gt": 100}, 1),
    ("score_ge_100", {"field": "score", "ge": 100}, 3),
    ("score_lt_100", {"field": "score", "lt": 100}, 3),
    ("score_le_100", {"field": "score", "le": 100}, 5),
    ("score_ge_01", {"field": "score", "ge": 0.1}, 5),  # 0.1 exactly: no binary float
    ("score_lt_01", {"field": "score", "lt": 0.1}, 1),
    ("score_eq_01", {"field": "score", "eq": 0.1}, 1),
    ("score_le_9999", {"field": "score", "le": 99.99}, 3),
    ("device_present", {"field": "device.id", "present": True}, 3),
    ("device_absent", {"field": "device.id", "present": False}, 5),  # absent or null
    ("os_ios", {"field": "device.os.name", "eq": "ios"}, 1),
    ("chargebacks", {"field": "$event_type", "eq": "chargeback"}, 1),
    ("auth_or_refund", {"field": "$event_type", "in": ["auth", "refund"]}, 7),
    ("approved_big", {"all": [{"field": "status", "eq": "approved"},
                              {"field": "score", "ge": 500}]}, 1),
    ("web_or_app", {"any": [{"field": "channel", "eq": "web"},
                            {"field": "channel", "eq": "app"}]}, 5),
    ("nested", {"any": [
        {"all": [{"field": "$event_type", "eq": "auth"},
                 {"field": "status", "eq": "declined"},
                 {"any": [{"field": "channel", "eq": "app"}, {"field": "channel", "eq": "pos"}]}]},
        {"field": "flag", "eq": True},
    ]}, 3),
]
FILTERS: dict[str, Any] = {
    "name": "filters",
    "version": "v1",
    "key_type": "account_id",
    "event_types": ["auth", "chargeback", "refund"],
    "features": [
        *({"agg": "count", "window": "1h", "name": n, "where": w} for n, w, _ in FILTER_FEATURES),
        {"agg": "sum", "field": "amount", "window": "1h", "name": "sum_declined",
         "where": {"field": "status", "eq": "declined"}},
        {"agg": "last", "field": "channel", "window": "1h", "name": "last_declined_channel",
         "where": {"field": "status", "eq": "declined"}},
        {"agg": "max", "field": "amount", "window": "1h", "name": "max_approved",
         "where": {"field": "status", "eq": "approved"}},
        {"agg": "first", "field": "score", "window": "1h", "name": "first_web_score",
         "where": {"field": "channel", "eq": "web"}},
        {"agg": "seconds_since_last", "window": "1h", "name": "since_chargeback",
         "where": {"field": "$event_type", "eq": "chargeback"}},
        {"agg": "count", "field": "device.id", "window": "1h", "name": "approved_with_device",
         "where": {"field": "status", "eq": "approved"}},
    ],
}


def fev(i: int, event_type: str, key: str = "a1", **payload: Any) -> OEvent:
    return OEvent(f"f{i}", event_type, T0 - (10 - i) * MIN, {"account_id": key, **payload})


FILTER_EVENTS = [
    fev(1, "auth", status="approved", score=100, amount=10, code=1, mcc="5967",
        channel="web", device={"id": "d1"}),
    fev(2, "auth", status="declined", score=Decimal("100.0"), amount=20, code=RawNumber("1.0"),
        mcc="7995", channel="app"),
    fev(3, "auth", status="declined", score=Decimal("99.99"), amount=30, code="1", mcc=5967,
        channel="pos", device={"id": None}),
    fev(4, "chargeback", status="approved", score=500, amount=40, code=2, mcc="0000",
        channel="web", device={"id": "d4", "os": {"name": "ios"}}),
    fev(5, "refund", status="approved", score=-3, amount=-5, code=RawNumber("1.00"), flag=True,
        channel="app"),
    fev(6, "auth", status="declined", score="high", amount=60, flag=1, channel="web", device={}),
    fev(7, "auth", status="approved", score=True, amount=70, flag=False, mcc=None),
    fev(8, "auth", status="approved", score=RawNumber("0.1"), amount=80, flag=0,
        device={"id": "d8", "os": {"name": "android"}}),
    fev(9, "auth", "a2", status="declined", score=1000, amount=1000, channel="app"),
]
NOT_CONSUMED = fev(10, "txn", status="declined", score=1000, amount=1000)


async def test_every_filter_operator(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    policy, parsed = write_policy(tmp_path, FILTERS)
    group = parsed["feature_groups"][0]
    write_partitions(bus_root, [lines([*FILTER_EVENTS, NOT_CONSUMED])])
    totals = await project_once(pool, bus_root, policy=policy)
    assert totals.by_outcome == {"APPLIED": 9, "IGNORED": 1}
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "account_id", ["a1"], [FILTERS], T0)
        got = cell(snap, "account_id", "a1", "filters")
        assert got is not None
        want: dict[str, Any] = {n: count for n, _, count in FILTER_FEATURES}
        want.update({
            "sum_declined": "110",
            "last_declined_channel": "web",
            "max_approved": "80",
            "first_web_score": "100",
            "since_chargeback": "360",
            "approved_with_device": 3,  # f1, f4, f8
            "last_event_ts_utc": format_micros(T0 - 2 * MIN),
        })
        got = normalised(got, want)
        assert got == want, differences(got, want)
        as_ofs = edges(FILTER_EVENTS, ["1h"])
        problems = await oracle_problems(stub, FILTER_EVENTS, group, ["a1", "a2"], as_ofs)
    assert_no_problems(problems)


# ------------------------------------------------------------------ value_invalid


async def _quarantine(pool: asyncpg.Pool) -> dict[int, str]:
    rows = await pool.fetch("SELECT record_offset, reason FROM quarantine WHERE partition = 0")
    return {int(r["record_offset"]): r["reason"] for r in rows}


VALUE_GROUP: dict[str, Any] = {
    "name": "vals",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["txn"],
    "features": [
        {"agg": "sum", "field": "amount", "window": "1h"},
        {"agg": "count", "window": "1h"},
        {"agg": "last", "field": "note", "window": "1h"},
        {"agg": "count", "field": "note", "window": "1h"},
    ],
}


async def test_a_present_non_number_quarantines_the_record_value_invalid(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """A numeric kind's field present but not a number (or more than 100 integer or
    fractional digits), or an object or array where `last` reads: the whole record is
    QUARANTINED value_invalid. A missing or null field contributes nothing."""
    policy, parsed = write_policy(tmp_path, VALUE_GROUP)
    group = parsed["feature_groups"][0]
    good = [
        txn("g1", T0 - 9 * MIN, "v1", amount=5, note="first"),
        txn("g2", T0 - 8 * MIN, "v1"),  # missing: counts, adds nothing
        txn("g3", T0 - 7 * MIN, "v1", amount=None, note="n"),
        txn("g4", T0 - 6 * MIN, "v1", amount="0." + "0" * 99 + "1"),  # 100 places: fine
        txn("g5", T0 - 5 * MIN, "v1", amount=RawNumber("9" * 100)),  # 100 digits: fine
        txn("g6", T0 - 4 * MIN, "v1", amount="1e2", note="last"),
    ]
    bad_values: list[Any] = [
        "abc", True, False, {"v": 1}, [1], "",
        "0." + "0" * 100 + "1", RawNumber("0." + "0" * 100 + "1"),  # 101 places
        "1" * 101, RawNumber("1" * 101),  # 101 integer digits
    ]
    bad = [txn(f"b{i}", T0 - 3 * MIN, "v1", amount=v) for i, v in enumerate(bad_values)]
    # `last note`: an object or an array is not a value first/last can give.
    bad += [txn(f"bn{i}", T0 - 3 * MIN, "v1", note=v) for i, v in enumerate([{"a": 1}, [1], []])]
    only_bad = txn("b-only", T0 - 3 * MIN, "v9", amount="abc")
    assert not any(record_value_invalid([group], e) for e in good)
    assert all(record_value_invalid([group], e) for e in [*bad, only_bad])
    write_partitions(bus_root, [lines([*good, *bad, only_bad])])
    totals = await project_once(pool, bus_root, policy=policy)
    assert totals.by_outcome == {"APPLIED": len(good), "QUARANTINED": len(bad) + 1}
    assert await _quarantine(pool) == {
        len(good) + i: "value_invalid" for i in range(len(bad) + 1)
    }
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "card_id", ["v1", "v9"], [VALUE_GROUP], T0)
        assert snap["freshness"]["missing_feature_keys"] == ["card_id:v9"]
        problems = await oracle_problems(stub, good, group, ["v1", "v9"], [T0])
    assert_no_problems(problems)


async def test_numeric_strings_follow_the_json_number_grammar(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """docs/features.md: numeric kinds read "a JSON number, or a string in JSON number
    grammar"; any other string is value_invalid. RFC 8259 numbers have no sign "+",
    no leading zeros, no bare "." on either side and no surrounding blanks."""
    policy, parsed = write_policy(tmp_path, VALUE_GROUP)
    group = parsed["feature_groups"][0]
    accepted = ["-0", "0", "-12.50", "1e2", "1E+2", "1E-2", "0.5", "-0.0e0"]
    refused = ["+5", ".5", "5.", "01", "-01.5", " 5", "5 ", "0x10", "1e", "1_000", "NaN",
               "Infinity", "-", "1,5"]
    events = [txn(f"ok{i}", T0 - MIN + i, "n1", amount=v) for i, v in enumerate(accepted)]
    events += [txn(f"no{i}", T0 - MIN + i, "n2", amount=v) for i, v in enumerate(refused)]
    write_partitions(bus_root, [lines(events)])
    await project_once(pool, bus_root, policy=policy)
    quarantined = await _quarantine(pool)
    got = {
        events[offset].payload["amount"]: reason for offset, reason in quarantined.items()
    }
    assert got == dict.fromkeys(refused, "value_invalid")
    async with running_server(pool, bus_root) as (_, stub):
        valid = [e for e in events if not record_value_invalid([group], e)]
        problems = await oracle_problems(stub, valid, group, ["n1", "n2"], [T0])
    assert_no_problems(problems)


# ------------------------------------------------------------------ presence


PRESENCE: dict[str, Any] = {
    "name": "presence",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["txn"],
    "features": [
        {"agg": "count", "window": "1h", "name": "declined_1h",
         "where": {"field": "status", "eq": "declined"}},
        {"agg": "sum", "field": "amount", "window": "10m"},
    ],
}
OTHER: dict[str, Any] = {
    "name": "other",
    "version": "v1",
    "key_type": "account_id",
    "event_types": ["login"],
    "features": [{"agg": "count", "window": "1h"}],
}


async def test_keys_present_missing_and_missing_groups(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """A key is present when the group consumed an event of it within the group's
    longest window, whether or not any filter let the event into a feature."""
    policy, parsed = write_policy(tmp_path, PRESENCE, OTHER)
    events = [
        txn("s1", T0 - 30 * MIN, "here", status="declined", amount=3),
        txn("s2", T0 - 20 * MIN, "filtered", status="approved"),  # rejected by every feature
        txn("s3", T0 - 2 * HOUR_US, "old", status="declined", amount=1),  # beyond 1 h
        txn("s4", T0 - 5 * MIN, "wrongtype", event_type="refund", amount=1),  # not consumed
        txn("s5", T0 - 5 * MIN, 17, status="declined"),  # integer key id
        OEvent("s6", "login", T0 - MIN, {"account_id": "acc"}),
    ]
    write_partitions(bus_root, [lines(events)])
    await project_once(pool, bus_root, policy=policy)
    keys = ["here", "filtered", "old", "wrongtype", "17", "never"]
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "card_id", keys, [PRESENCE], T0)
        assert sorted(snap["features"]) == ["card_id:17", "card_id:filtered", "card_id:here"]
        assert snap["freshness"]["missing_feature_keys"] == [
            "card_id:never", "card_id:old", "card_id:wrongtype"
        ]
        assert snap["freshness"]["missing_groups"] == []
        assert "MISSING_FEATURE_STATE" in snap["freshness"]["flags"]
        filtered = normalised(cell(snap, "card_id", "filtered", "presence"), {"declined_1h": 0})
        assert filtered == {
            "declined_1h": 0, "sum_amount_10m": "0",
            "last_event_ts_utc": format_micros(T0 - 20 * MIN),
        }
        # No requested key present: the group is a missing group.
        snap = await ask(stub, "card_id", ["old", "never"], [PRESENCE], T0)
        assert snap["features"] == {}
        assert snap["freshness"]["missing_groups"] == ["presence"]
        # Two groups, keys of both types: each key answers for the group of its type.
        doc = request("card_id", ["here"], [PRESENCE, OTHER], T0)
        doc["feature_keys"].append({"key_type": "account_id", "key_id": "acc"})
        doc["feature_keys"].append({"key_type": "account_id", "key_id": "nobody"})
        answer = await get_features(stub, doc)
        assert verify_response(answer)[0]
        snap = answer["snapshot"]
        assert sorted(snap["features"]) == ["account_id:acc", "card_id:here"]
        assert list(snap["features"]["account_id:acc"]) == ["other"]
        assert snap["freshness"]["missing_feature_keys"] == ["account_id:nobody"]
        assert snap["freshness"]["missing_groups"] == []
        presence, other = (
            next(g for g in parsed["feature_groups"] if g["name"] == name)
            for name in ("presence", "other")
        )
        problems = await oracle_problems(stub, events, presence, keys, [T0, T0 - 25 * MIN])
        problems += await oracle_problems(stub, events, other, ["acc", "nobody"], [T0])
    assert_no_problems(problems)


async def test_ttl_flags_stale_keys(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """STALE_BY_TTL when the key's latest event is older than a feature's ttl
    (Interpretation: "older than" is strict, as for v0 windows: an age equal to
    the ttl is not stale)."""
    group_doc = {
        "name": "ttlg", "version": "v1", "key_type": "card_id", "event_types": ["txn"],
        "features": [
            {"agg": "count", "window": "1h", "ttl": "3h"},
            {"agg": "count", "window": "7d"},
        ],
    }
    policy, parsed = write_policy(tmp_path, group_doc)
    events = [txn("r1", T0, "r", amount=1)]
    write_partitions(bus_root, [lines(events)])
    await project_once(pool, bus_root, policy=policy)
    async with running_server(pool, bus_root) as (_, stub):
        for as_of in (T0, T0 + 3 * HOUR_US, T0 + 3 * HOUR_US + 1, T0 + 2 * DAY):
            snap = await ask(stub, "card_id", ["r"], [group_doc], as_of)
            stale = stale_by_ttl(events, parsed["feature_groups"][0], "r", as_of)
            assert ("STALE_BY_TTL" in snap["freshness"]["flags"]) == stale, format_micros(as_of)
            assert ("ttlg" in snap["freshness"]["stale_groups"]) == (
                stale or "STALE_INPUT_BASIS" in snap["freshness"]["flags"]
            )
    assert not stale_by_ttl(events, parsed["feature_groups"][0], "r", T0 + 3 * HOUR_US)
    assert stale_by_ttl(events, parsed["feature_groups"][0], "r", T0 + 3 * HOUR_US + 1)


async def test_one_record_feeds_every_group_that_consumes_it_or_none(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """Two groups keyed by different payload fields consume the same event type: a
    record carrying both keys feeds both; a value_invalid found by one group
    quarantines the record, so the other group does not see it either."""
    cards = {"name": "cards", "version": "v1", "key_type": "card_id", "event_types": ["txn"],
             "features": [{"agg": "sum", "field": "amount", "window": "1h"}]}
    accounts = {"name": "accounts", "version": "v1", "key_type": "account_id",
                "event_types": ["txn"],
                "features": [{"agg": "count", "window": "1h"},
                             {"agg": "max", "field": "fee", "window": "1h"}]}
    policy, parsed = write_policy(tmp_path, cards, accounts)
    both = OEvent("m1", "txn", T0 - 3, {"card_id": "c", "account_id": "a", "amount": 5, "fee": 1})
    card_only = OEvent("m2", "txn", T0 - 2, {"card_id": "c", "amount": 7, "fee": 9})
    bad_fee = OEvent("m3", "txn", T0 - 1,
                     {"card_id": "c", "account_id": "a", "amount": 100, "fee": "x"})
    write_partitions(bus_root, [lines([both, card_only, bad_fee])])
    totals = await project_once(pool, bus_root, policy=policy)
    assert totals.by_outcome == {"APPLIED": 2, "QUARANTINED": 1}
    assert await _quarantine(pool) == {2: "value_invalid"}
    async with running_server(pool, bus_root) as (_, stub):
        doc = request("card_id", ["c"], [cards, accounts], T0)
        doc["feature_keys"].append({"key_type": "account_id", "key_id": "a"})
        answer = await get_features(stub, doc)
    assert verify_response(answer)[0]
    features = answer["snapshot"]["features"]
    assert features["card_id:c"] == {
        "cards": {"sum_amount_1h": "12", "last_event_ts_utc": format_micros(T0 - 2)}
    }
    got = normalised(features["account_id:a"]["accounts"], {"count_1h": 0})
    assert got == {"count_1h": 1, "max_fee_1h": "1", "last_event_ts_utc": format_micros(T0 - 3)}
    groups = {g["name"]: g for g in parsed["feature_groups"]}
    assert oracle([both, card_only], groups["cards"], "c", T0) == features["card_id:c"]["cards"]
    assert oracle([both, card_only], groups["accounts"], "a", T0) == got


PAIRS: dict[str, Any] = {
    "name": "pairs",
    "version": "v1",
    "key_type": "card_id+merchant.id",
    "event_types": ["txn"],
    "features": [
        {"agg": "count", "window": "1h"},
        {"agg": "sum", "field": "amount", "window": "1h"},
    ],
}
NESTED_KEY: dict[str, Any] = {
    "name": "nested_key",
    "version": "v1",
    "key_type": "card.id",
    "event_types": ["txn"],
    "features": [{"agg": "count", "window": "1h"}],
}


def pev(i: int, card_id: Any, merchant_id: Any = MISSING, **payload: Any) -> OEvent:
    if merchant_id is not MISSING:
        payload["merchant"] = {"id": merchant_id}
    return OEvent(f"pair{i}", "txn", T0 - 10 * MIN + i, {"card_id": card_id, **payload})


async def test_tuple_and_dot_path_keys(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """docs/features.md, Keys: a dot path, or up to four joined by `+`; the key id is
    each part's text joined by `|`, with `\\` and `|` inside a part escaped by `\\`;
    an event lacking a part is not seen; a part that is not an integer or a
    1..256-character string, or a joined key over 256 characters, is key_invalid."""
    policy, parsed = write_policy(tmp_path, PAIRS, NESTED_KEY)
    pairs, nested = (
        next(g for g in parsed["feature_groups"] if g["name"] == n) for n in ("pairs", "nested_key")
    )
    valid = [
        pev(1, 4111, "m-77", amount=1),
        pev(2, "4111", "m-77", amount=2),  # the same key: 42 and "42" are one
        pev(3, "4111", "m-78", amount=4),
        pev(4, "a|b", "c\\d", amount=8),  # key a\|b|c\\d
        pev(5, "a", "b|c\\d", amount=16),  # key a|b\|c\\d: not the same
        pev(6, 7, 8, amount=32, card={"id": 5}),  # pairs 7|8, nested_key 5
        pev(7, "x" * 200, "y" * 55, amount=64),  # 256 characters joined: fine
        pev(14, "z", "z", card={"id": "p|q"}),  # a single part is as is: p|q
    ]
    unseen = [pev(8, "4111", amount=128), pev(9, "4111", None, amount=256)]
    invalid = [
        pev(10, True, "m"),
        pev(11, "c", {"x": 1}),
        pev(12, "", "m"),
        pev(13, "x" * 200, "y" * 56),  # 257 characters joined
    ]
    assert all(record_key_invalid([pairs, nested], e) for e in invalid)
    assert not any(record_key_invalid([pairs, nested], e) for e in valid + unseen)
    write_partitions(bus_root, [lines(valid + unseen + invalid)])
    totals = await project_once(pool, bus_root, policy=policy)
    assert totals.by_outcome == {
        "APPLIED": len(valid), "IGNORED": len(unseen), "QUARANTINED": len(invalid)
    }
    first_bad = len(valid) + len(unseen)
    assert await _quarantine(pool) == {first_bad + i: "key_invalid" for i in range(len(invalid))}
    keys = ["4111|m-77", "4111|m-78", "a\\|b|c\\\\d", "a|b\\|c\\\\d", "7|8",
            "x" * 200 + "|" + "y" * 55, "z|z", "4111", "4111|", "a|b|c\\d"]
    want_counts = {"z|z": 1, "4111|m-77": 2, "4111|m-78": 1, "a\\|b|c\\\\d": 1,
                   "a|b\\|c\\\\d": 1, "7|8": 1, "x" * 200 + "|" + "y" * 55: 1}
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, "card_id+merchant.id", keys, [PAIRS], T0)
        got = {
            label.split(":", 1)[1]: normalised(v["pairs"], {"count_1h": 0})["count_1h"]
            for label, v in snap["features"].items()
        }
        assert got == want_counts
        assert snap["freshness"]["missing_feature_keys"] == sorted(
            f"card_id+merchant.id:{k}" for k in keys if k not in want_counts
        )
        problems = await oracle_problems(stub, valid, pairs, keys, [T0])
        problems += await oracle_problems(stub, valid, nested, ["5", "7", "p\\|q", "p|q"], [T0])
    assert_no_problems(problems)


# ------------------------------------------------------------------ v0 beside v1


async def test_v0_group_answers_are_unchanged_beside_a_v1_group(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    v0 = yaml.safe_load((Path(__file__).parents[2] / "config" / "features_v0.yaml").read_text())
    policy, parsed = write_policy(tmp_path, *v0["feature_groups"], WIN)
    win = next(g for g in parsed["feature_groups"] if g["name"] == "win")
    stream = generate(11, n_events=200, n_keys=4, n_partitions=2)
    stream.write(bus_root)
    extra = WIN_EVENTS
    with (bus_root / TOPIC / "partition=0.jsonl").open("a", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines(extra)))
    totals = await project_once(pool, bus_root, policy=policy)
    expected = {k: v for k, v in stream.expected_outcomes.items() if v}
    expected["APPLIED"] += len(extra)
    assert totals.by_outcome == expected
    rng = random.Random(3)
    truth_a = [e for e in stream.truth if e.run == "A"]
    as_ofs = sorted({e.ts_us for e in rng.sample(truth_a, 8)} | {T0})
    async with running_server(pool, bus_root) as (_, stub):
        for as_of in as_ofs:
            doc = await get_features(stub, keys_request("A", [*stream.keys, "404"], as_of))
            assert verify_response(doc)[0]
            snap = doc["snapshot"]
            for key in [*stream.keys, "404"]:
                want = brute_force(stream.truth, "A", key, as_of)
                got = snap["features"].get(f"flow_id:{key}", {}).get("core_features")
                if got is not None:
                    got = {k: int(v) if isinstance(v, float) else v for k, v in got.items()}
                assert got == want, (key, format_micros(as_of))
        problems = await oracle_problems(stub, extra, win, ["w1", "w2"], [*as_ofs, E1 + DAY])
    assert_no_problems(problems)


# ------------------------------------------------------------------ policy refusals


def _policy_with(tmp_path: Path, *features: dict[str, Any]) -> None:
    write_policy(tmp_path, {**KINDS, "features": list(features)})


@pytest.mark.parametrize(("features", "mention"), [
    ([{"agg": "count", "window": "30s"}], "30s"),  # seconds are refused
    ([{"agg": "count", "window": "0m"}], "0m"),
    ([{"agg": "count", "window": "1.5h"}], "1.5h"),
    ([{"agg": "count", "window": "1h", "ttl": "30m"}], "ttl"),  # ttl below the window
    ([{"agg": "distinct_count", "window": "1h"}], "field"),  # distinct_count needs a field
    ([{"agg": "median", "field": "m", "window": "1h"}], "median"),  # not a kind
    ([{"agg": "last_n", "field": "m", "window": "1h"}], "n"),  # n is required
    ([{"agg": "last_n", "field": "m", "window": "1h", "n": 0}], "n"),
    ([{"agg": "last_n", "field": "m", "window": "1h", "n": 101}], "n"),
    ([{"agg": "last_n", "window": "1h", "n": 2}], "field"),
    ([{"agg": "count", "window": "1h", "n": 2}], "n"),  # n is for last_n only
    ([{"agg": "sum", "window": "1h"}], "field"),  # sum needs a field
    ([{"agg": "mean", "field": "a", "window": "1h", "scale": 19}], "scale"),
    ([{"agg": "sum", "field": "a", "window": "1h", "scale": 2}], "scale"),  # not for sum
    ([{"agg": "count", "window": "1h", "name": "Bad-Name"}], "Bad-Name"),
    ([{"agg": "count", "window": "1h", "name": "9lives"}], "9lives"),
    ([{"agg": "count", "window": "1h", "name": "a" * 65}], "a" * 65),
    ([{"agg": "count", "window": "1h", "name": "last_event_ts_utc"}], "last_event_ts_utc"),
    ([{"agg": "count", "window": "1h"}, {"agg": "count", "window": "60m", "name": "count_1h"}],
     "count_1h"),  # names are unique in the group
])
def test_a_policy_outside_the_language_is_refused(
    tmp_path: Path, features: list[dict[str, Any]], mention: str
) -> None:
    with pytest.raises(ValueError, match=mention):
        _policy_with(tmp_path, *features)


async def test_a_window_beyond_the_retention_stops_the_projector(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """Windows reach "up to the retention": a 30-day window with the default 30-day
    retention (which must also hold the allowed lateness) is refused at start-up."""
    policy, _ = write_policy(tmp_path, {**KINDS, "features": [
        {"agg": "count", "window": "1h"}, {"agg": "sum", "field": "amount", "window": "30d"},
    ]})
    write_partitions(bus_root, [lines(KINDS_EVENTS[:1])])
    with pytest.raises(ValueError, match="retention_days 30"):
        await project_once(pool, bus_root, policy=policy)
    await project_once(pool, bus_root, policy=policy, retention_days=31)


# ------------------------------------------------------------------ interpretations


async def _one_group_answer(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path, group_doc: dict[str, Any],
    events: list[OEvent], key: str,
) -> tuple[dict[str, Any] | None, dict[str, int]]:
    policy, parsed = write_policy(tmp_path, group_doc)
    write_partitions(bus_root, [lines(events)])
    totals = await project_once(pool, bus_root, policy=policy)
    async with running_server(pool, bus_root) as (_, stub):
        snap = await ask(stub, group_doc["key_type"], [key], [group_doc], T0)
    want = oracle(
        [e for e in events if not record_value_invalid(parsed["feature_groups"], e)],
        parsed["feature_groups"][0], key, T0,
    )
    got = normalised(cell(snap, group_doc["key_type"], key, group_doc["name"]), want)
    assert got == want, differences(got, want)
    return got, totals.by_outcome


async def test_interpretation_ne_is_true_for_an_absent_or_null_field(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """Interpretation: `ne` is the negation of `eq`; an absent or null field does not
    equal "declined", so `ne: declined` lets it through."""
    g = {"name": "ne", "version": "v1", "key_type": "card_id", "event_types": ["txn"],
         "features": [{"agg": "count", "window": "1h", "name": "n",
                       "where": {"field": "status", "ne": "declined"}}]}
    events = [txn("a", T0 - 3, "k"), txn("b", T0 - 2, "k", status=None),
              txn("c", T0 - 1, "k", status="declined"), txn("d", T0, "k", status="ok")]
    got, _ = await _one_group_answer(pool, bus_root, tmp_path, g, events, "k")
    assert got is not None and got["n"] == 3


async def test_interpretation_comparisons_do_not_read_numeric_strings(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """Interpretation: `lt`/`le`/`gt`/`ge` "compare numbers only"; the string "150" is
    a JSON string (it does not `eq` 150 either), so `gt: 100` is false for it."""
    g = {"name": "cmp", "version": "v1", "key_type": "card_id", "event_types": ["txn"],
         "features": [{"agg": "count", "window": "1h", "name": "n",
                       "where": {"field": "score", "gt": 100}}]}
    events = [txn("a", T0 - 1, "k", score="150"), txn("b", T0, "k", score=150)]
    got, _ = await _one_group_answer(pool, bus_root, tmp_path, g, events, "k")
    assert got is not None and got["n"] == 1


async def test_interpretation_a_path_through_a_non_object_is_missing(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """Interpretation: `amount.value` where `amount` is a number (or a string) is a
    missing field: no contribution, not value_invalid."""
    g = {"name": "pth", "version": "v1", "key_type": "card_id", "event_types": ["txn"],
         "features": [{"agg": "sum", "field": "amount.value", "window": "1h"},
                      {"agg": "count", "field": "amount.value", "window": "1h"}]}
    events = [txn("a", T0 - 2, "k", amount=5), txn("b", T0 - 1, "k", amount="x"),
              txn("c", T0, "k", amount={"value": 2})]
    got, outcomes = await _one_group_answer(pool, bus_root, tmp_path, g, events, "k")
    assert outcomes == {"APPLIED": 3}
    assert got is not None and got["sum_amount_value_1h"] == "2"


async def test_interpretation_value_invalid_whatever_the_filter_says(
    pool: asyncpg.Pool, bus_root: Path, tmp_path: Path
) -> None:
    """Interpretation: a present non-number in a numeric kind's field quarantines the
    record even when that feature's `where` rejects the event (validity is a property
    of the record, decided before any filter)."""
    g = {"name": "vf", "version": "v1", "key_type": "card_id", "event_types": ["txn"],
         "features": [{"agg": "count", "window": "1h"},
                      {"agg": "sum", "field": "amount", "window": "1h",
                       "where": {"field": "status", "eq": "approved"}}]}
    events = [txn("a", T0 - 1, "k", status="approved", amount=1),
              txn("b", T0, "k", status="declined", amount="abc")]
    got, outcomes = await _one_group_answer(pool, bus_root, tmp_path, g, events, "k")
    assert outcomes == {"APPLIED": 1, "QUARANTINED": 1}
    assert got is not None and got["count_1h"] == 1


# ------------------------------------------------------------------ the property

PROP: dict[str, Any] = {
    "name": "prop",
    "version": "v1",
    "key_type": "card_id",
    "event_types": ["txn", "auth"],
    "features": [
        {"agg": "count", "window": "1m"},
        {"agg": "count", "window": "10m"},
        {"agg": "count", "window": "25h"},
        {"agg": "count", "field": "amount", "window": "1h"},
        {"agg": "sum", "field": "amount", "window": "10m"},
        {"agg": "sum", "field": "amount", "window": "25h"},
        {"agg": "min", "field": "amount", "window": "1h"},
        {"agg": "max", "field": "amount", "window": "1m"},
        {"agg": "mean", "field": "amount", "window": "1h", "scale": 3},
        {"agg": "variance", "field": "amount", "window": "10m"},
        {"agg": "stddev", "field": "amount", "window": "1h", "scale": 5},
        {"agg": "first", "field": "amount", "window": "1h"},
        {"agg": "last", "field": "amount", "window": "1m"},
        {"agg": "first", "field": "merchant.id", "window": "10m"},
        {"agg": "last", "field": "merchant.id", "window": "1h"},
        {"agg": "seconds_since_last", "window": "10m"},
        {"agg": "seconds_since_last", "field": "merchant.id", "window": "1h"},
        {"agg": "last_n", "field": "merchant.id", "window": "10m", "n": 2},
        {"agg": "last_n", "field": "amount", "window": "25h", "n": 100},
        {"agg": "distinct_count", "field": "merchant.id", "window": "1h"},
        {"agg": "distinct_count", "field": "amount", "window": "25h"},
        {"agg": "approx_distinct_count", "field": "amount", "window": "25h"},
        {"agg": "approx_distinct_count", "field": "merchant.id", "window": "10m"},
        {"agg": "count", "window": "1h", "name": "declined_1h",
         "where": {"field": "status", "eq": "declined"}},
        {"agg": "sum", "field": "amount", "window": "1h", "name": "auth_sum_1h",
         "where": {"all": [{"field": "$event_type", "eq": "auth"},
                           {"any": [{"field": "status", "eq": "approved"},
                                    {"field": "merchant.id", "present": True}]}]}},
    ],
}
P0 = BASE_US + 5 * HOUR_US
ANCHORS = (P0, P0 + MIN, P0 + 10 * MIN, P0 + HOUR_US, P0 + HOUR_US + 10 * MIN + 1, P0 + DAY)
PROP_KEYS = ("k1", "k2", "7")


@dataclass(frozen=True)
class Gen:
    key: Any
    anchor: int
    delta: int
    event_type: str
    amount: Any
    status: str | None
    merchant: str | None
    prefix: str
    copies: int
    partition: int


amounts = st.one_of(
    st.just(MISSING),
    st.none(),
    st.integers(-1000, 1000),
    st.integers(0, 30).flatmap(
        lambda p: st.decimals(min_value=-1000, max_value=1000, places=p)
    ),
    st.decimals(min_value=-10**6, max_value=10**6, places=4).map(str),
)
gens = st.builds(
    Gen,
    key=st.sampled_from(["k1", "k1", "k2", 7]),
    anchor=st.sampled_from(ANCHORS),
    delta=st.one_of(st.just(0), st.integers(-2, 2), st.integers(-2 * MIN, 2 * MIN)),
    event_type=st.sampled_from(["txn", "txn", "auth"]),
    amount=amounts,
    status=st.sampled_from([None, "approved", "declined"]),
    merchant=st.sampled_from([None, "m1", "m2", "é"]),
    prefix=st.sampled_from(["a", "B", "\u00e9", "z", "\U0001f600"]),
    copies=st.sampled_from([1, 1, 1, 2]),
    partition=st.integers(0, 1),
)


def _render(i: int, g: Gen, broken: bool) -> OEvent:
    payload: dict[str, Any] = {"card_id": g.key}
    if g.amount is not MISSING:
        payload["amount"] = g.amount
    if broken:
        payload["amount"] = "not-a-number"
    if g.status is not None:
        payload["status"] = g.status
    if g.merchant is not None:
        payload["merchant"] = {"id": g.merchant}
    return OEvent(f"{g.prefix}{i:03d}", g.event_type, g.anchor + g.delta, payload)


async def _observe(
    pool: asyncpg.Pool, root: Path, policy: Policy, requests: list[tuple[int, list[str]]],
    batch_size: int | None,
) -> list[dict[str, Any]]:
    extra = {} if batch_size is None else {"batch_size": batch_size}
    await project_once(pool, root, policy=policy, **extra)
    out = []
    async with running_server(pool, root) as (_, stub):
        for as_of, keys in requests:
            snap = await ask(stub, "card_id", keys, [PROP], as_of)
            snap.pop("created_at_utc", None)
            out.append(snap)
    return out


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
    database=None,
    # Each example is three fresh databases: shrinking a failure would take many
    # minutes, so a failure is reported as found (the message names the as-of,
    # the key and every differing feature).
    phases=[Phase.explicit, Phase.reuse, Phase.generate],
)
@given(
    stream=st.lists(gens, min_size=1, max_size=30),
    broken_at=st.sets(st.integers(0, 29), max_size=3),
    two_partitions=st.booleans(),
    rng=st.randoms(use_true_random=False),
)
async def test_any_delivery_order_and_batch_size_gives_the_oracles_answer_and_one_hash(
    pool_factory: PoolFactory, tmp_path: Path, stream: list[Gen], broken_at: set[int],
    two_partitions: bool, rng: random.Random,
) -> None:
    """Generated streams (ties, window edges, nulls, many decimal places, value_invalid
    records, duplicates), replayed in three orders with batch sizes 1, 3 and the
    default: identical snapshots (values, basis, freshness, snapshot_hash), and values
    equal to the oracle's."""
    policy, parsed = write_policy(tmp_path, PROP)
    group = parsed["feature_groups"][0]
    events = [_render(i, g, i in broken_at) for i, g in enumerate(stream)]
    valid = [e for e in events if not record_value_invalid([group], e)]
    parts: list[list[str]] = [[], []] if two_partitions else [[]]
    for e, g in zip(events, stream, strict=True):
        for _ in range(g.copies):
            parts[g.partition if two_partitions else 0].append(e.line("A"))
    times = sorted({e.ts_us for e in events})
    as_ofs = {times[0] - 1, times[-1], times[-1] + HOUR_US}
    for t in rng.sample(times, min(3, len(times))):
        d = window_us(rng.choice(["1m", "10m", "1h", "25h"]))
        as_ofs.update({t, t - 1, t + d - 1, t + d})
    requests = [(t, [*PROP_KEYS, "absent"]) for t in sorted(as_ofs)]
    seen: list[list[dict[str, Any]]] = []
    for batch_size in (1, 3, None):
        root = Path(tempfile.mkdtemp(dir=tmp_path))
        write_partitions(root, parts)
        pool = await pool_factory()
        try:
            seen.append(await _observe(pool, root, policy, requests, batch_size))
        finally:
            await pool.close()
        for p in parts:
            rng.shuffle(p)
    for i, (as_of, keys) in enumerate(requests):
        first = seen[0][i]
        for other in seen[1:]:
            assert other[i] == first, f"answers differ at {format_micros(as_of)}"
        for key in keys:
            want = oracle(valid, group, key, as_of)
            got = normalised(cell(first, "card_id", key, "prop"), want)
            assert got == want, f"{key} at {format_micros(as_of)}: {differences(got, want)}"
