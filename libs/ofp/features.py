"""The v1 feature language: feature definitions, filters and field paths (docs/features.md).

Pure: parsing and validating a group's `features:` list, its normalized
(digested) form, evaluating a filter against an event, reading a field by dot
path, and turning a window's intermediates into the canonical value of each
kind. The store keeps the intermediates; this module says what they mean.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation, localcontext
from typing import Any

from ofp.contracts.canonical import decimal_text
from ofp.contracts.request import storable_text

NUMERIC_KINDS = frozenset({"sum", "min", "max", "mean", "variance", "stddev"})
VALUE_KINDS = frozenset(
    {"first", "last", "last_n", "distinct_count", "approx_distinct_count"})
KINDS = NUMERIC_KINDS | VALUE_KINDS | {"count", "seconds_since_last"}
SCALED_KINDS = frozenset({"mean", "variance", "stddev"})
# The kinds whose answer reads the window aggregate (`Intermediate` n, s, s2, mn,
# mx); the store computes it for these only (docs/features.md, "Cost").
AGGREGATE_KINDS = NUMERIC_KINDS | {"count"}
# Specified, not built yet: refused with a message that says so.
PLANNED_KINDS: frozenset[str] = frozenset()
# What the store keeps of a value besides its text: a distinct set, or a sketch.
TILE_SET = {"distinct_count": 1, "approx_distinct_count": 2}
MAX_LAST_N = 100
DEFAULT_SCALE = 6
MAX_SCALE = 18
MAX_FEATURES = 64
MAX_FILTER_DEPTH = 8
MAX_DIGITS = 100  # integer or fractional digits of a numeric field value (as amounts)
RESERVED_NAMES = frozenset({"last_event_ts_utc"})
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_PATH = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_WINDOW = re.compile(r"^([0-9]+)(m|h|d)$")
_UNIT_S = {"m": 60, "h": 3600, "d": 86400}
_NUMBER_TEXT = re.compile(r"^-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?$")
_COMPARE = ("lt", "le", "gt", "ge")
_LEAF_OPS = ("eq", "ne", "in", *_COMPARE, "present")
EVENT_TYPE_FIELD = "$event_type"
_ABSENT = object()


class FeatureError(ValueError):
    """A feature definition cannot be used; the message names the feature and the field."""


@dataclass(frozen=True, slots=True)
class Filter:
    """A `where` filter: a leaf test on one field, or `all` / `any` of filters."""

    op: str  # eq ne in lt le gt ge present all any
    field: str | None = None
    values: tuple[tuple[Any, ...], ...] = ()  # typed values (`_typed`); one for all but `in`
    present: bool = True
    of: tuple[Filter, ...] = ()

    def normalized(self) -> dict[str, Any]:
        if self.op in ("all", "any"):
            return {"op": self.op, "of": [f.normalized() for f in self.of]}
        if self.op == "present":
            return {"op": "present", "field": self.field, "present": self.present}
        return {"op": self.op, "field": self.field, "values": [list(v) for v in self.values]}

    def matches(self, payload: dict[str, Any], event_type: str) -> bool:
        if self.op == "all":
            return all(f.matches(payload, event_type) for f in self.of)
        if self.op == "any":
            return any(f.matches(payload, event_type) for f in self.of)
        assert self.field is not None
        raw = event_type if self.field == EVENT_TYPE_FIELD else field_value(payload, self.field)
        if self.op == "present":
            return (raw is not _ABSENT and raw is not None) == self.present
        if raw is _ABSENT:
            return self.op == "ne"
        got = _typed(raw)
        if self.op == "eq":
            return got == self.values[0]
        if self.op == "ne":
            return got != self.values[0]
        if self.op == "in":
            return got in self.values
        if got is None or got[0] != "num":
            return False
        a, b = Decimal(got[1]), Decimal(self.values[0][1])
        return {"lt": a < b, "le": a <= b, "gt": a > b, "ge": a >= b}[self.op]


@dataclass(frozen=True, slots=True)
class Feature:
    name: str
    agg: str
    field: str | None
    window_s: int
    ttl_s: int
    where: Filter | None
    scale: int | None  # mean / variance / stddev only
    n: int | None = None  # last_n only: how many values, newest first

    @property
    def window_us(self) -> int:
        return self.window_s * 1_000_000

    @property
    def ttl_us(self) -> int:
        return self.ttl_s * 1_000_000

    @property
    def numeric(self) -> bool:
        return self.agg in NUMERIC_KINDS

    @property
    def keeps_value(self) -> bool:
        """Whether the store keeps the field's text (first / last)."""
        return self.agg in VALUE_KINDS

    def normalized(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "name": self.name,
            "agg": self.agg,
            "field": self.field,
            "window_s": self.window_s,
            "ttl_s": self.ttl_s,
            "where": None if self.where is None else self.where.normalized(),
        }
        if self.scale is not None:
            doc["scale"] = self.scale
        if self.n is not None:
            doc["n"] = self.n
        return doc


MAX_KEY_PARTS = 4
MAX_KEY_TYPE_CHARS = 64  # what a request's key_type may hold


def check_key_type(key_type: str, *, where: str) -> None:
    """A v1 key: one payload field (dot path) or up to four joined by `+`."""
    parts = key_type.split("+")
    if (len(key_type) > MAX_KEY_TYPE_CHARS or len(parts) > MAX_KEY_PARTS
            or not all(_PATH.match(x) for x in parts) or len(set(parts)) != len(parts)):
        raise FeatureError(
            f"{where}: key_type {key_type!r} must be a dot path, or up to {MAX_KEY_PARTS}"
            f" different ones joined by + (card_id+merchant.id), at most"
            f" {MAX_KEY_TYPE_CHARS} characters"
        )


def window_text(seconds: int) -> str:
    """The canonical name of a window: `1h`, not `60m`."""
    for unit, size in (("d", 86400), ("h", 3600)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds // 60}m"


def parse_features(raw: Any, *, where: str) -> tuple[Feature, ...]:
    if not isinstance(raw, list) or not raw:
        raise FeatureError(f"{where}: features must be a non-empty list")
    if len(raw) > MAX_FEATURES:
        raise FeatureError(f"{where}: at most {MAX_FEATURES} features per group")
    out = [_feature(f, where=f"{where}: features[{i}]") for i, f in enumerate(raw)]
    names = [f.name for f in out]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise FeatureError(
            f"{where}: feature names repeat: {dup}; give one of each an explicit name:"
        )
    return tuple(out)


def _feature(raw: Any, *, where: str) -> Feature:
    allowed = {"agg", "field", "window", "ttl", "where", "scale", "name", "n"}
    if not isinstance(raw, dict):
        raise FeatureError(f"{where}: must be a mapping of {sorted(allowed)}")
    unknown = set(raw) - allowed
    if unknown:
        raise FeatureError(f"{where}: unknown keys {sorted(unknown)}")
    agg = raw.get("agg")
    if agg in PLANNED_KINDS:
        raise FeatureError(f"{where}: agg {agg!r} is specified but not available yet")
    if agg not in KINDS:
        raise FeatureError(f"{where}: agg {agg!r} is not one of {sorted(KINDS)}")
    field = raw.get("field")
    if field is not None and (not isinstance(field, str) or not _PATH.match(field)):
        raise FeatureError(f"{where}: field {field!r} is not a dot path (merchant.id)")
    if field is None and agg in NUMERIC_KINDS | VALUE_KINDS:
        raise FeatureError(f"{where}: agg {agg} needs a field")
    window_s = _window(raw.get("window"), where=f"{where}: window")
    ttl_s = window_s if raw.get("ttl") is None else _window(raw["ttl"], where=f"{where}: ttl")
    if ttl_s < window_s:
        raise FeatureError(f"{where}: ttl {raw['ttl']!r} is shorter than the window")
    scale = None
    if agg in SCALED_KINDS:
        scale = raw.get("scale", DEFAULT_SCALE)
        if isinstance(scale, bool) or not isinstance(scale, int) or not 0 <= scale <= MAX_SCALE:
            raise FeatureError(f"{where}: scale must be an integer 0..{MAX_SCALE}")
    elif "scale" in raw:
        raise FeatureError(f"{where}: scale applies to mean, variance and stddev only")
    n = None
    if agg == "last_n":
        n = raw.get("n")
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_LAST_N:
            raise FeatureError(f"{where}: last_n needs n, an integer 1..{MAX_LAST_N}")
    elif "n" in raw:
        raise FeatureError(f"{where}: n applies to last_n only")
    flt = None if raw.get("where") is None else _filter(raw["where"], where=f"{where}: where")
    name = raw.get("name")
    if name is None:
        # The window as the policy writes it (24h stays 24h): stable, and what readers expect.
        parts = [agg] + ([field.replace(".", "_")] if field else []) + [str(raw["window"])]
        name = "_".join(parts).lower()
    if not isinstance(name, str) or not _NAME.match(name):
        raise FeatureError(f"{where}: name {name!r} must match [a-z][a-z0-9_]{{0,63}}")
    if name in RESERVED_NAMES:
        raise FeatureError(f"{where}: name {name!r} is reserved")
    return Feature(name, agg, field, window_s, ttl_s, flt, scale, n)


def _window(raw: Any, *, where: str) -> int:
    m = _WINDOW.match(raw) if isinstance(raw, str) else None
    if m is None or int(m.group(1)) <= 0:
        raise FeatureError(
            f"{where}: {raw!r} is not a whole number of minutes, hours or days (10m, 1h, 7d)"
        )
    return int(m.group(1)) * _UNIT_S[m.group(2)]


def _filter(raw: Any, *, where: str, depth: int = 0) -> Filter:
    if depth > MAX_FILTER_DEPTH:
        raise FeatureError(f"{where}: filters nest at most {MAX_FILTER_DEPTH} deep")
    if not isinstance(raw, dict):
        raise FeatureError(f"{where}: must be a mapping")
    for combinator in ("all", "any"):
        if combinator in raw:
            if set(raw) != {combinator} or not isinstance(raw[combinator], list) or not raw[
                combinator
            ]:
                raise FeatureError(f"{where}: {combinator} takes a non-empty list, alone")
            return Filter(combinator, of=tuple(
                _filter(f, where=f"{where}.{combinator}[{i}]", depth=depth + 1)
                for i, f in enumerate(raw[combinator])
            ))
    field = raw.get("field")
    if not isinstance(field, str) or not (field == EVENT_TYPE_FIELD or _PATH.match(field)):
        raise FeatureError(f"{where}: field {field!r} is not a dot path or $event_type")
    ops = [k for k in raw if k != "field"]
    if len(ops) != 1 or ops[0] not in _LEAF_OPS:
        raise FeatureError(f"{where}: give exactly one of {list(_LEAF_OPS)}")
    op = ops[0]
    arg = raw[op]
    if op == "present":
        if not isinstance(arg, bool):
            raise FeatureError(f"{where}: present takes true or false")
        return Filter("present", field, present=arg)
    if op == "in":
        if not isinstance(arg, list) or not arg:
            raise FeatureError(f"{where}: in takes a non-empty list")
        return Filter("in", field, tuple(_literal(v, where=where) for v in arg))
    value = _literal(arg, where=where)
    if op in _COMPARE and value[0] != "num":
        raise FeatureError(f"{where}: {op} compares numbers; {arg!r} is not one")
    return Filter(op, field, (value,))


def _literal(value: Any, *, where: str) -> tuple[Any, ...]:
    typed = _typed(value, from_policy=True)
    if typed is None:
        raise FeatureError(f"{where}: {value!r} is not a string, number, boolean or null")
    return typed


def _typed(value: Any, *, from_policy: bool = False) -> tuple[Any, ...] | None:
    """A JSON scalar as a comparable, digestible tuple: numbers as canonical decimal text.

    None for objects and arrays (they equal nothing).
    """
    if value is None:
        return ("null",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int | Decimal) or (from_policy and isinstance(value, float)):
        # A YAML float is read back from its shortest text, never its binary value.
        d = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
        if not d.is_finite():
            return None
        return ("num", decimal_text(d))
    if isinstance(value, str):
        return ("str", value)
    return None


def field_value(payload: dict[str, Any], path: str) -> Any:
    """The payload's value at a dot path, or `_ABSENT`."""
    node: Any = payload
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def is_absent(value: Any) -> bool:
    return value is _ABSENT or value is None


def numeric_value(value: Any) -> Decimal:
    """A field value as an exact decimal; ValueError names why it is not one."""
    if isinstance(value, bool):
        raise ValueError("is a boolean, not a number")
    if isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, Decimal):
        d = value
    elif isinstance(value, str):
        text = value  # JSON number grammar exactly: no blanks, no sign +, no bare point
        if not _NUMBER_TEXT.match(text):
            raise ValueError("is a string that is not a decimal number")
        try:
            d = Decimal(text)
        except InvalidOperation:
            raise ValueError("is a string that is not a decimal number") from None
    else:
        raise ValueError(f"is a {type(value).__name__}, not a number")
    if not d.is_finite():
        raise ValueError("is not finite")
    if d.is_zero():
        return Decimal(0)
    _, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    if len(digits) + exp > MAX_DIGITS or -exp > MAX_DIGITS:
        raise ValueError(f"has more than {MAX_DIGITS} integer or fractional digits")
    return d


def value_text(value: Any) -> str:
    """A scalar field value as `first` / `last` answer it; ValueError for objects and arrays."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | Decimal):
        return decimal_text(Decimal(value))
    if isinstance(value, str):
        if not storable_text(value):
            raise ValueError("contains a NUL character or an unpaired surrogate")
        return value
    raise ValueError(f"is a {type(value).__name__}, not a string, number or boolean")


@dataclass(frozen=True, slots=True)
class Intermediate:
    """What the store returns for one feature over one window.

    n, s, s2, mn and mx are read for `AGGREGATE_KINDS` only (0 and None for the
    others); first_val, last_ts and last_val only when the kind asks for them,
    and then they are None exactly when the window has no event of the feature.
    """

    n: int
    s: Decimal | None
    s2: Decimal | None
    mn: Decimal | None
    mx: Decimal | None
    first_val: str | None
    last_ts: int | None
    last_val: str | None
    last_values: tuple[str, ...] = ()  # last_n: newest first
    distinct: int = 0  # distinct_count, approx_distinct_count


def finalize(feature: Feature, w: Intermediate, as_of_us: int) -> Any:
    """The canonical answer value of `feature` (docs/features.md, "Features")."""
    agg = feature.agg
    if agg == "count":
        return w.n
    if agg == "sum":
        return decimal_text(w.s) if w.n and w.s is not None else "0"
    if agg == "seconds_since_last":
        if w.last_ts is None:
            return None
        return decimal_text(Decimal(as_of_us - w.last_ts).scaleb(-6))
    # The earliest / latest event's value: None when the window has none (the
    # store keeps a value for every event of these kinds, so it is never None else).
    if agg == "first":
        return w.first_val
    if agg == "last":
        return w.last_val
    if agg == "last_n":
        return list(w.last_values)
    if agg in ("distinct_count", "approx_distinct_count"):
        return w.distinct
    if not w.n:
        return None
    if agg == "min":
        return None if w.mn is None else decimal_text(w.mn)
    if agg == "max":
        return None if w.mx is None else decimal_text(w.mx)
    assert w.s is not None and w.s2 is not None and feature.scale is not None
    quantum = Decimal(1).scaleb(-feature.scale)
    with localcontext() as ctx:
        ctx.prec = 600
        n = Decimal(w.n)
        if agg == "mean":
            exact = w.s / n
        else:
            # Population variance (n*s2 - s^2) / n^2: one division of exact terms.
            exact = (n * w.s2 - w.s * w.s) / (n * n)
            if agg == "stddev":
                exact = exact.sqrt()
        return decimal_text(exact.quantize(quantum, rounding="ROUND_HALF_EVEN"))


def features_from_normalized(docs: list[dict[str, Any]]) -> tuple[Feature, ...]:
    """Features as recorded in the database (`Feature.normalized`), rebuilt."""
    return tuple(
        Feature(
            name=d["name"],
            agg=d["agg"],
            field=d["field"],
            window_s=int(d["window_s"]),
            ttl_s=int(d["ttl_s"]),
            where=None if d["where"] is None else _filter_from_normalized(d["where"]),
            scale=d.get("scale"),
            n=d.get("n"),
        )
        for d in docs
    )


def _filter_from_normalized(d: dict[str, Any]) -> Filter:
    if d["op"] in ("all", "any"):
        return Filter(d["op"], of=tuple(_filter_from_normalized(x) for x in d["of"]))
    if d["op"] == "present":
        return Filter("present", d["field"], present=bool(d["present"]))
    return Filter(d["op"], d["field"], tuple(tuple(v) for v in d["values"]))
