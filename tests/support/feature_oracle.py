"""A brute-force oracle for the v1 feature language (docs/features.md).

Written from the specification alone: it never imports OFP's policy, event,
snapshot or store code. Given the events a test generator decided are valid
(and therefore applied), a v1 feature group definition (the parsed YAML dict),
a key and an as-of T, it computes every feature by scanning every event.

- A window of duration d covers (T - d, T], to the microsecond at both edges.
- Numbers are exact: `Decimal` for sums (a context wide enough that nothing
  rounds, trapping on any inexact operation) and `Fraction` for the divisions
  of mean and variance, rounded half-even to `scale` places exactly; stddev is
  the exactly rounded square root (integer square root, ties detected exactly).
- Ties are ordered by (ts_us, event_id), event ids in code point order
  (Python's `str` order is code point order); `last_n` lists the n latest
  events that carry the field, newest first.
- A group answers `last_event_ts_utc` and the key is present only when the
  group consumed an event of the key within the group's longest window.

Interpretations where docs/features.md is silent (tests that depend on them say
so; `docs/features.md` leaves them open):

- `ne` is the negation of `eq`, so an absent or null field is "not equal";
- the comparisons `lt`, `le`, `gt`, `ge` are true only for a JSON number (a
  numeric *string* is not a number for a filter, as for `eq`);
- a dot path through something that is not an object is a missing field;
- a record is `value_invalid` when any feature of a group that consumes it
  (event type matches and the key field is present) finds its field present,
  not null and unusable for its kind (a numeric kind: not a number; first,
  last, last_n, distinct_count, approx_distinct_count: an object or an
  array), whatever that feature's `where` says.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Context, Decimal, Inexact, localcontext
from fractions import Fraction
from typing import Any

from ofp.contracts.canonical import decimal_text
from ofp.contracts.timefmt import format_micros
from tests.support.streams import envelope

MINUTE_US = 60_000_000
_UNIT_US = {"m": MINUTE_US, "h": 60 * MINUTE_US, "d": 24 * 60 * MINUTE_US}
_WINDOW = re.compile(r"^([1-9][0-9]*)(m|h|d)$")
# The JSON number production (RFC 8259 section 6), nothing around it.
_JSON_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
MAX_DIGITS = 100
DEFAULT_SCALE = 6
NUMERIC_KINDS = frozenset({"sum", "min", "max", "mean", "variance", "stddev"})
FIELDLESS_KINDS = frozenset({"count", "seconds_since_last"})
# Kinds that answer a field's value "as first/last give it": a string, a number as
# canonical text, a boolean as "true" / "false"; an object or array is value_invalid.
VALUE_KINDS = frozenset({"first", "last", "last_n", "distinct_count", "approx_distinct_count"})
ALL_KINDS = frozenset({*NUMERIC_KINDS, *FIELDLESS_KINDS, *VALUE_KINDS})
DEFAULT_EXCLUDED = frozenset({"action_intent", "action_outcome", "decision_response"})
EVENT_TYPE_FIELD = "$event_type"


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


class RawNumber(str):
    """A JSON number written exactly as this text (e.g. "1.0", "1e2", "-0")."""


@dataclass(frozen=True)
class OEvent:
    """One valid event as the generator decided it: what the oracle scans."""

    event_id: str
    event_type: str
    ts_us: int
    payload: dict[str, Any]

    def line(self, run: str = "A") -> str:
        """The event as one file-bus line (numbers written exactly, never as floats)."""
        return dumps_json(envelope(self.event_id, self.ts_us, run, self.payload, self.event_type))


class ValueInvalid(ValueError):
    """A present value that a numeric kind cannot read as an exact decimal."""


# ------------------------------------------------------------------ JSON text


def dumps_json(doc: Any) -> str:
    """Compact JSON where `Decimal` and `RawNumber` become number tokens exactly."""
    if isinstance(doc, RawNumber):
        return str(doc)
    if isinstance(doc, bool) or doc is None:
        return json.dumps(doc)
    if isinstance(doc, Decimal):
        if not doc.is_finite():
            raise ValueError("JSON has no NaN or Infinity")
        return str(doc)
    if isinstance(doc, int):
        return str(doc)
    if isinstance(doc, float):
        raise TypeError("no floats in test events: use Decimal or RawNumber")
    if isinstance(doc, str):
        return json.dumps(doc)
    if isinstance(doc, Mapping):
        items = (f"{json.dumps(str(k))}:{dumps_json(v)}" for k, v in doc.items())
        return "{" + ",".join(items) + "}"
    if isinstance(doc, list | tuple):
        return "[" + ",".join(dumps_json(v) for v in doc) + "]"
    raise TypeError(f"not JSON: {type(doc).__name__}")


def _as_json_value(value: Any) -> Any:
    """A payload value as the JSON it is written as: RawNumber -> Decimal."""
    if isinstance(value, RawNumber):
        return Decimal(str(value))
    return value


# ------------------------------------------------------------------ the policy


def window_us(text: Any) -> int:
    m = _WINDOW.match(text) if isinstance(text, str) else None
    if m is None:
        raise ValueError(f"window {text!r} is not <int>(m|h|d)")
    return int(m.group(1)) * _UNIT_US[m.group(2)]


def feature_name(spec: Mapping[str, Any]) -> str:
    if "name" in spec:
        return str(spec["name"])
    agg = spec["agg"]
    field = spec.get("field")
    if field is None:
        return f"{agg}_{spec['window']}"
    return f"{agg}_{str(field).replace('.', '_')}_{spec['window']}"


def features_of(group: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    out = [(feature_name(f), f) for f in group["features"]]
    for _, spec in out:
        if spec["agg"] not in ALL_KINDS:
            raise ValueError(f"kind {spec['agg']!r} is not in the v1 language")
    return out


def longest_window_us(group: Mapping[str, Any]) -> int:
    return max(window_us(f["window"]) for f in group["features"])


def consumes(group: Mapping[str, Any], event_type: str) -> bool:
    types = group.get("event_types")
    if types is not None:
        return event_type in types
    excluded = group.get("exclude_event_types", DEFAULT_EXCLUDED)
    return event_type not in excluded


MAX_KEY_CHARS = 256


class KeyInvalid(ValueError):
    """A key part that is not an integer or a 1..256-character string (key_invalid)."""


def _key_part(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and 0 < len(value) <= MAX_KEY_CHARS:
        return value
    raise KeyInvalid(f"key part {value!r} is not an integer or a 1..256-character string")


def _escape(part: str) -> str:
    return part.replace("\\", "\\\\").replace("|", "\\|")


def key_of(group: Mapping[str, Any], payload: Mapping[str, Any]) -> str | None:
    """The key id an event carries for the group, None when it lacks a part.

    `key_type` is a dot path, or up to four joined by `+` (a tuple key): the key id
    is each part's text (an integer 42 is "42") joined by `|`, `\\` and `|` inside
    a part escaped by a `\\`; a single-part key is its text as is.
    KeyInvalid for a record that is key_invalid.
    """
    paths = str(group["key_type"]).split("+")
    parts = []
    for path in paths:
        value = resolve(payload, path, "")
        if value is MISSING or value is None:
            return None
        parts.append(value)
    texts = [_key_part(v) for v in parts]
    joined = texts[0] if len(texts) == 1 else "|".join(_escape(t) for t in texts)
    if len(joined) > MAX_KEY_CHARS:
        raise KeyInvalid(f"joined key is longer than {MAX_KEY_CHARS} characters")
    return joined


# ------------------------------------------------------------------ values


def resolve(payload: Mapping[str, Any], path: str, event_type: str) -> Any:
    """The value at a dot path, or MISSING; `$event_type` is the envelope's type."""
    if path == EVENT_TYPE_FIELD:
        return event_type
    node: Any = payload
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return MISSING
        node = node[part]
    return _as_json_value(node)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | Decimal | float) and not isinstance(value, bool)


def _number(value: Any) -> Decimal:
    """A JSON number (event value or YAML literal) as an exact decimal."""
    if isinstance(value, float):  # a YAML literal such as 0.1: its written text
        return Decimal(repr(value))
    return Decimal(value)


def exact_number(value: Any) -> Decimal:
    """The exact decimal a numeric kind reads, or ValueInvalid."""
    if _is_number(value):
        d = _number(value)
    elif isinstance(value, str):
        if not _JSON_NUMBER.fullmatch(value):
            raise ValueInvalid(f"string {value!r} is not in JSON number grammar")
        d = Decimal(value)
    else:
        raise ValueInvalid(f"{type(value).__name__} is not a number")
    if d.is_zero():
        return Decimal(0)
    _, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    if len(digits) + exp > MAX_DIGITS or -exp > MAX_DIGITS:
        raise ValueInvalid(f"more than {MAX_DIGITS} integer or fractional digits")
    return d


def json_equal(value: Any, literal: Any) -> bool:
    """`eq`: JSON values compared exactly, numbers as decimals; MISSING equals nothing."""
    if value is MISSING:
        return False
    value = _as_json_value(value)
    if _is_number(value) or _is_number(literal):
        return _is_number(value) and _is_number(literal) and _number(value) == _number(literal)
    if isinstance(value, bool) or isinstance(literal, bool):
        return isinstance(value, bool) and isinstance(literal, bool) and value is literal
    if value is None or literal is None:
        return value is None and literal is None
    if isinstance(value, str) or isinstance(literal, str):
        return isinstance(value, str) and isinstance(literal, str) and value == literal
    if isinstance(value, Mapping) and isinstance(literal, Mapping):
        return set(value) == set(literal) and all(
            json_equal(value[k], literal[k]) for k in value
        )
    if isinstance(value, list | tuple) and isinstance(literal, list | tuple):
        return len(value) == len(literal) and all(
            json_equal(a, b) for a, b in zip(value, literal, strict=True)
        )
    return False


_COMPARISONS = ("lt", "le", "gt", "ge")


def matches(where: Mapping[str, Any] | None, event: OEvent) -> bool:
    if where is None:
        return True
    if "all" in where:
        return all(matches(w, event) for w in where["all"])
    if "any" in where:
        return any(matches(w, event) for w in where["any"])
    value = resolve(event.payload, where["field"], event.event_type)
    ops = [op for op in where if op != "field"]
    if len(ops) != 1:
        raise ValueError(f"a filter has exactly one operator: {where!r}")
    op = ops[0]
    lit = where[op]
    if op == "eq":
        return json_equal(value, lit)
    if op == "ne":
        return not json_equal(value, lit)
    if op == "in":
        return any(json_equal(value, x) for x in lit)
    if op == "present":
        present = value is not MISSING and value is not None
        return present if lit else not present
    if op in _COMPARISONS:
        if not _is_number(value) or not _is_number(lit):
            return False
        a, b = _number(value), _number(lit)
        return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[op]
    raise ValueError(f"unknown filter operator {op!r}")


def record_key_invalid(groups: Iterable[Mapping[str, Any]], event: OEvent) -> bool:
    """True when a group that consumes the record finds its key invalid (key_invalid)."""
    for g in groups:
        if consumes(g, event.event_type):
            try:
                key_of(g, event.payload)
            except KeyInvalid:
                return True
    return False


def record_value_invalid(groups: Iterable[Mapping[str, Any]], event: OEvent) -> bool:
    """True when the record must be QUARANTINED value_invalid (see module docstring)."""
    for g in groups:
        if not consumes(g, event.event_type) or key_of(g, event.payload) is None:
            continue
        for _, spec in features_of(g):
            agg = spec["agg"]
            if agg not in NUMERIC_KINDS and agg not in VALUE_KINDS:
                continue
            v = resolve(event.payload, spec["field"], event.event_type)
            if v is MISSING or v is None:
                continue
            try:
                exact_number(v) if agg in NUMERIC_KINDS else value_text(v)
            except ValueInvalid:
                return True
    return False


# ------------------------------------------------------------------ rounding


def round_half_even(value: Fraction, scale: int) -> Decimal:
    """`value` rounded half-even to `scale` fractional places, exactly."""
    scaled = value * 10**scale
    floor = scaled.numerator // scaled.denominator
    rest = scaled - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        floor += 1
    return _scaled(floor, scale)


def sqrt_half_even(value: Fraction, scale: int) -> Decimal:
    """sqrt(value) rounded half-even to `scale` places, exactly (value >= 0)."""
    if value < 0:
        raise ValueError("negative variance")
    x = value * 10 ** (2 * scale)
    k = math.isqrt(x.numerator // x.denominator)  # floor(sqrt(x))
    half = (Fraction(k) + Fraction(1, 2)) ** 2
    if x > half or (x == half and k % 2 == 1):
        k += 1
    return _scaled(k, scale)


def _scaled(units: int, scale: int) -> Decimal:
    """units x 10^-scale, exactly (a context's precision never enters)."""
    return Decimal(f"{units}E-{scale}")


def _canonical(d: Decimal) -> str:
    return decimal_text(d)


def value_text(value: Any) -> str:
    """As `first` / `last` give a value: always a string; objects and arrays are invalid."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if _is_number(value):
        return _canonical(_number(value))
    raise ValueInvalid(f"a {type(value).__name__} is not a string, number or boolean")


# ------------------------------------------------------------------ the oracle


def _exact() -> Context:
    return Context(prec=5000, traps=[Inexact])


def feature_value(
    spec: Mapping[str, Any], events: list[OEvent], as_of_us: int
) -> Any:
    """One feature over `events` (the group's events of one key, any order)."""
    d = window_us(spec["window"])
    agg = spec["agg"]
    field = spec.get("field")
    inside = sorted(
        (e for e in events if as_of_us - d < e.ts_us <= as_of_us and matches(spec.get("where"), e)),
        key=lambda e: (e.ts_us, e.event_id),
    )
    carrying: list[tuple[OEvent, Any]] = []
    if field is not None:
        for e in inside:
            v = resolve(e.payload, field, e.event_type)
            if v is not MISSING and v is not None:
                carrying.append((e, v))
    else:
        if agg not in FIELDLESS_KINDS:
            raise ValueError(f"{agg} needs a field")
        carrying = [(e, None) for e in inside]
    if agg == "count":
        return len(carrying)
    if agg == "seconds_since_last":
        if not carrying:
            return None
        return _canonical(_scaled(as_of_us - carrying[-1][0].ts_us, 6))
    if agg in ("first", "last"):
        if not carrying:
            return None
        return value_text(carrying[0 if agg == "first" else -1][1])
    if agg == "last_n":
        # The n latest events that carry the field, newest first; [] when none.
        return [value_text(v) for _, v in carrying[::-1][: int(spec["n"])]]
    if agg in ("distinct_count", "approx_distinct_count"):
        # Distinct as first/last give the values: 1, 1.0 and "1" are one value. The
        # approximate kind is "exact below a few hundred" values: the oracle answers
        # exactly, so tests compare it only on small sets.
        return len({value_text(v) for _, v in carrying})
    numbers = [exact_number(v) for _, v in carrying]
    with localcontext(_exact()):
        if agg == "sum":
            return _canonical(sum(numbers, Decimal(0)))
        if not numbers:
            return None
        if agg == "min":
            return _canonical(min(numbers))
        if agg == "max":
            return _canonical(max(numbers))
        scale = int(spec.get("scale", DEFAULT_SCALE))
        n = len(numbers)
        total = Fraction(sum(numbers, Decimal(0)))
        squares = Fraction(sum((x * x for x in numbers), Decimal(0)))
    mean = total / n
    if agg == "mean":
        return _canonical(round_half_even(mean, scale))
    variance = squares / n - mean * mean
    if agg == "variance":
        return _canonical(round_half_even(variance, scale))
    if agg == "stddev":
        return _canonical(sqrt_half_even(variance, scale))
    raise ValueError(f"unknown kind {agg!r}")


def group_events(
    events: Iterable[OEvent], group: Mapping[str, Any], key: str
) -> list[OEvent]:
    return [
        e for e in events
        if consumes(group, e.event_type) and key_of(group, e.payload) == key
    ]


def oracle(
    events: Iterable[OEvent], group: Mapping[str, Any], key: str, as_of_us: int
) -> dict[str, Any] | None:
    """Every feature of `group` for `key` at `as_of_us`; None when the key is missing."""
    mine = [e for e in group_events(events, group, key) if e.ts_us <= as_of_us]
    longest = longest_window_us(group)
    recent = [e.ts_us for e in mine if e.ts_us > as_of_us - longest]
    if not recent:
        return None
    out = {name: feature_value(spec, mine, as_of_us) for name, spec in features_of(group)}
    out["last_event_ts_utc"] = format_micros(max(recent))
    return out


def stale_by_ttl(
    events: Iterable[OEvent], group: Mapping[str, Any], key: str, as_of_us: int
) -> bool:
    """A present key whose latest event is older than some feature's ttl at as-of."""
    mine = [e for e in group_events(events, group, key) if e.ts_us <= as_of_us]
    recent = [e.ts_us for e in mine if e.ts_us > as_of_us - longest_window_us(group)]
    if not recent:
        return False
    age = as_of_us - max(recent)
    return any(age > window_us(f.get("ttl", f["window"])) for f in group["features"])
