"""Generated event streams with a known truth, and a brute-force oracle.

The oracle never touches OFP's code paths: it recomputes every feature from
the list of valid events the generator itself decided on, by scanning them.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

from ofp.contracts.canonical import decimal_text
from ofp.contracts.timefmt import format_micros, parse_micros

HOUR_US = 3_600_000_000
WINDOWS_US = {"1h": HOUR_US, "24h": 24 * HOUR_US, "7d": 7 * 24 * HOUR_US}
TTL_US = dict(WINDOWS_US)
BASE_US = parse_micros("2026-02-06T00:00:00.000000Z")
TOPIC = "fp.bus.traffic.fraud.v1"


def pins(run: str = "A") -> dict[str, Any]:
    """Six ContextPins; `run` picks one of several distinct run scopes."""
    digit = {"A": "1", "B": "2", "C": "3"}[run]
    return {
        "platform_run_id": f"platform_2026020{digit}T000000Z",
        "scenario_run_id": digit * 32,
        "scenario_id": f"scenario_{run}",
        "manifest_fingerprint": "f" * 64,
        "parameter_hash": "e" * 64,
        "seed": 0 if run == "A" else 7,
    }


@dataclass(frozen=True)
class TruthEvent:
    run: str
    key: str
    ts_us: int
    amount: Decimal


@dataclass
class Stream:
    partitions: list[list[str]]  # lines per partition, without newline
    truth: list[TruthEvent]
    expected_outcomes: dict[str, int] = field(default_factory=dict)

    def write(self, root: Path, topic: str = TOPIC) -> Path:
        d = root / topic
        d.mkdir(parents=True, exist_ok=True)
        for p, lines in enumerate(self.partitions):
            (d / f"partition={p}.jsonl").write_text(
                "".join(line + "\n" for line in lines), encoding="utf-8"
            )
        return d

    @property
    def keys(self) -> list[str]:
        return sorted({e.key for e in self.truth}, key=lambda k: (len(k), k))


def envelope(
    event_id: str, ts_us: int, run: str, payload: dict[str, Any], event_type: str = "txn"
) -> dict[str, Any]:
    return {
        "event_id": event_id,
        "event_type": event_type,
        "ts_utc": format_micros(ts_us),
        **pins(run),
        "schema_version": "1.0",
        "payload": payload,
    }


def _amount_text(rng: random.Random) -> tuple[Any, Decimal]:
    """A JSON amount in one of its accepted spellings, and its exact value."""
    cents = rng.randrange(-500, 500_000)
    value = Decimal(cents) / 100
    style = rng.randrange(6)
    if style == 0:
        return f"{value}", value  # numeric string
    if style == 1:
        return int(value) if value == int(value) else f"{value}", value
    if style == 2:
        micro = Decimal(rng.randrange(1, 10**6)) / 10**6
        return f"{micro}", micro
    if style == 3:
        return None, Decimal(0)  # missing amount counts 0
    if style == 4:
        # Exponent spellings, as a JSON number and as a numeric string; whole
        # hundreds normalise to a positive exponent ("1.5E+3"), the form
        # str(Decimal) keeps and the database must read back exactly.
        hundreds = Decimal(cents).scaleb(2).normalize()
        return (_RawNumber(f"{cents}E-2") if cents % 2 else f"{hundreds}"), (
            value if cents % 2 else hundreds
        )
    return _RawNumber(str(value)), value  # JSON number with a fraction


class _RawNumber(str):
    """A JSON number written as its exact decimal text (no float on the way)."""


def _dumps(doc: dict[str, Any]) -> str:
    placeholders: dict[str, str] = {}

    def encode(v: Any) -> Any:
        if isinstance(v, _RawNumber):
            token = f"@@num{len(placeholders)}@@"
            placeholders[f'"{token}"'] = str(v)
            return token
        if isinstance(v, dict):
            return {k: encode(x) for k, x in v.items() if x is not None or k != "amount"}
        return v

    text = json.dumps(encode(doc), separators=(",", ":"))
    for token, number in placeholders.items():
        text = text.replace(token, number)
    return text


def generate(
    seed: int,
    *,
    n_events: int = 300,
    n_keys: int = 6,
    n_partitions: int = 3,
    span_us: int = 9 * 24 * HOUR_US,
    runs: tuple[str, ...] = ("A", "B"),
    noise: bool = True,
) -> Stream:
    """Valid events over several keys, runs and partitions, out of order, plus noise.

    Noise: duplicates at new offsets (same payload), decision-loop event types,
    events without a key field, and malformed lines of every quarantine kind.
    Nothing here depends on arrival order, so any permutation converges.
    """
    rng = random.Random(seed)
    parts: list[list[str]] = [[] for _ in range(n_partitions)]
    truth: list[TruthEvent] = []
    outcomes = {"APPLIED": 0, "DUPLICATE": 0, "IGNORED": 0, "QUARANTINED": 0}
    valid_lines: list[str] = []
    for i in range(n_events):
        run = rng.choice(runs)
        key_n = rng.randrange(1, n_keys + 1)
        # Integer and string spellings of one id are the same key.
        key_json: Any = key_n if rng.random() < 0.5 else str(key_n)
        ts = BASE_US + rng.randrange(0, span_us)
        if rng.random() < 0.1:
            ts = ts - ts % HOUR_US  # exactly on a tile edge
        amount_json, amount = _amount_text(rng)
        payload = {"flow_id": key_json, "event_seq": i, "fraud_flag": rng.random() < 0.1}
        if amount_json is not None:
            payload["amount"] = amount_json
        line = _dumps(envelope(f"{seed:04x}{i:028x}", ts, run, payload))
        valid_lines.append(line)
        truth.append(TruthEvent(run, str(key_n), ts, amount))
        parts[rng.randrange(n_partitions)].append(line)
        outcomes["APPLIED"] += 1
    if noise:
        for line in rng.sample(valid_lines, k=max(1, n_events // 10)):
            parts[rng.randrange(n_partitions)].append(line)
            outcomes["DUPLICATE"] += 1
        for j in range(max(1, n_events // 20)):
            ts = BASE_US + rng.randrange(0, span_us)
            for etype in ("decision_response", "action_intent", "action_outcome"):
                env = envelope(f"ffff{j:026x}{len(etype):02x}", ts, "A", {"flow_id": 1}, etype)
                parts[rng.randrange(n_partitions)].append(_dumps(env))
                outcomes["IGNORED"] += 1
            env = envelope(f"eeee{j:028x}", ts, "A", {"merchant": 3, "amount": 5})
            parts[rng.randrange(n_partitions)].append(_dumps(env))
            outcomes["IGNORED"] += 1
        for bad in malformed_lines():
            parts[rng.randrange(n_partitions)].append(bad)
            outcomes["QUARANTINED"] += 1
    for p in parts:
        rng.shuffle(p)
    return Stream(parts, truth, outcomes)


def malformed_lines() -> list[str]:
    """One line per quarantine reason that can be decided from the line alone."""
    ok = envelope("b" * 32, BASE_US + 5, "A", {"flow_id": 1, "amount": "1"})
    lines = ['{"event_id": "x", "ts_utc": ', "not json at all"]  # unparseable
    lines.append(json.dumps({**ok, "event_id": "c1" * 16, "ts_utc": "2026-02-06 00:00:00"}))
    lines.append(json.dumps({**ok, "event_id": "c2" * 16, "surprise": 1}))  # unknown field
    lines.append(json.dumps({**ok, "event_id": "c3" * 16, "seed": -1}))  # envelope: bad pin
    no_pin = {k: v for k, v in ok.items() if k != "parameter_hash"}
    lines.append(json.dumps({**no_pin, "event_id": "c4" * 16}))  # pins missing
    lines.append(json.dumps({**ok, "event_id": "c5" * 16, "schema_version": "9.0"}))
    for j, amount in enumerate(["abc", True, "NaN", "Infinity", {"v": 1}]):
        bad = {**ok, "event_id": f"d{j}" * 16, "payload": {"flow_id": 1, "amount": amount}}
        lines.append(json.dumps(bad))
    lines.append(json.dumps({**ok, "event_id": "c6" * 16, "payload": {"flow_id": True}}))
    return lines


def brute_force(
    truth: list[TruthEvent], run: str, key: str, as_of_us: int
) -> dict[str, Any] | None:
    """Features of (run, key) at as_of by scanning every event; None when missing."""
    events = [e for e in truth if e.run == run and e.key == key and e.ts_us <= as_of_us]
    largest = max(WINDOWS_US.values())
    if not any(e.ts_us > as_of_us - largest for e in events):
        return None
    out: dict[str, Any] = {}
    with localcontext() as ctx:
        ctx.prec = 200
        for name, d in WINDOWS_US.items():
            inside = [e for e in events if as_of_us - d < e.ts_us]
            out[f"event_count_{name}"] = len(inside)
            out[f"amount_sum_{name}"] = decimal_text(sum((e.amount for e in inside), Decimal(0)))
    last = max(e.ts_us for e in events if e.ts_us > as_of_us - largest)
    out["last_event_ts_utc"] = format_micros(last)
    return out


def interesting_as_of(truth: list[TruthEvent], rng: random.Random, n: int = 12) -> list[int]:
    """Before, inside and after the data, and on window edges to the microsecond."""
    ts = sorted(e.ts_us for e in truth)
    picks = [ts[0] - 1, ts[0], ts[-1], ts[-1] + 1, ts[-1] + 8 * 24 * HOUR_US]
    for _ in range(n):
        t = rng.choice(ts)
        d = rng.choice(list(WINDOWS_US.values()))
        picks += [t, t - 1, t + d, t + d - 1, t + rng.randrange(0, HOUR_US)]
    return sorted(set(picks))


def keys_request(run: str, keys: list[str], as_of_us: int) -> dict[str, Any]:
    """A GetFeatures request (JSON form) for `keys` of `run` in the default group."""
    return {
        "pins": pins(run),
        "as_of_time_utc": format_micros(as_of_us),
        "feature_keys": [{"key_type": "flow_id", "key_id": k} for k in keys],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
    }


def one_key_request(request_id: str, /, **changes: Any) -> dict[str, Any]:
    """A valid GetFeatures request (JSON form) for key 1 of run A, four days into the data."""
    doc: dict[str, Any] = {
        "pins": pins("A"),
        "as_of_time_utc": format_micros(BASE_US + 4 * 24 * HOUR_US),
        "feature_keys": [{"key_type": "flow_id", "key_id": "1"}],
        "feature_groups": [{"name": "core_features", "version": "v1"}],
        "request_id": request_id,
    }
    doc.update(changes)
    return doc
