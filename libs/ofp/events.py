"""Envelope -> record outcome, as a pure function (docs/contract.md 2.1, 2.2).

`classify` decides everything that can be decided from the record alone. What
needs the store (a duplicate `event_id`, a payload conflict) is settled by the
apply transaction from the `Candidate` this returns.
"""

from __future__ import annotations

import enum
import hashlib
import json
import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple, cast

import msgspec

from ofp.contracts.canonical import decimal_text, orjson_canonical
from ofp.contracts.request import PIN_NAMES, storable_text, unstorable_text
from ofp.contracts.schemas import ENVELOPE, envelope_errors, validator
from ofp.contracts.timefmt import parse_micros
from ofp.features import TILE_SET, Feature, field_value, is_absent, numeric_value, value_text
from ofp.model import Pins
from ofp.policy import FeatureGroup, Policy

KNOWN_SCHEMA_MAJORS = frozenset({"1"})
# Fields a producer may change on a retry of the same event; they are not part
# of what "the same payload" means.
# The pins are not hashed either: dedupe compares hashes within one run
# scope, where the pins are equal by definition.
_HASH_EXCLUDED = (
    "event_id", "emitted_at_utc", "trace_id", "span_id", "parent_event_id", "producer",
    "platform_run_id", "scenario_run_id", "scenario_id", "manifest_fingerprint",
    "parameter_hash", "seed", "run_id",
)
_NUMERIC_TEXT = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_SCHEMA_MAJOR = re.compile(r"^v?([0-9]+)(?:\.|$)")
# Amounts beyond this many integer or fractional digits are refused rather
# than stored: no real amount needs them, and they bound the cost of a sum.
MAX_AMOUNT_DIGITS = 100
MAX_KEY_CHARS = 256
# Deeper records are refused (envelope_invalid): no real envelope nests this far,
# and the validators and encoders that walk a record recurse.
MAX_NESTING = 64
# An integer of more bits than this has more than MAX_KEY_CHARS digits.
_MAX_INT_KEY_BITS = 4 * MAX_KEY_CHARS


class Outcome(enum.StrEnum):
    APPLIED = "APPLIED"
    DUPLICATE = "DUPLICATE"
    IGNORED = "IGNORED"
    QUARANTINED = "QUARANTINED"


class QuarantineReason(enum.StrEnum):
    UNPARSEABLE = "unparseable"
    ENVELOPE_INVALID = "envelope_invalid"
    PINS_INVALID = "pins_invalid"
    UNKNOWN_SCHEMA_MAJOR = "unknown_schema_major"
    AMOUNT_INVALID = "amount_invalid"
    KEY_INVALID = "key_invalid"
    # A v1 feature's field holds a value its kind cannot use (docs/features.md).
    VALUE_INVALID = "value_invalid"
    PAYLOAD_CONFLICT = "payload_conflict"
    # Decided by the apply transaction, against the database clock.
    TS_IN_FUTURE = "ts_in_future"
    # The database refused the record's data itself (a value out of range, an
    # index entry too large, ...): SQLSTATE class 22 or 54, in the detail.
    STORE_REFUSED = "store_refused"


class IgnoreReason(enum.StrEnum):
    FOREIGN_RUN = "foreign_run"
    EVENT_TYPE_NOT_CONSUMED = "event_type_not_consumed"
    NO_KEY_FIELD = "no_key_field"
    # At or below the stream's retention floor: its window state (and its
    # dedupe row) may be gone, so applying it would add rows no read can see.
    BELOW_RETENTION_FLOOR = "below_retention_floor"


# Candidate and Contribution are built once per record: immutable tuples cost
# a fraction of a frozen dataclass's per-field object.__setattr__.
class Contribution(NamedTuple):
    group_index: int  # index into Policy.groups
    key_id: str
    amount: Decimal  # v0 groups
    # v1 groups (docs/features.md): (feature, exact number text, value text,
    # tile set: 0 none, 1 distinct values, 2 sketch) per feature the event
    # contributes to; feature 0 is the group's presence.
    values: tuple[tuple[int, str | None, str | None, int], ...] | None = None


class Candidate(NamedTuple):
    """A valid, relevant event; APPLIED unless the store already holds its event_id."""

    pins: Pins
    event_id: str
    payload_hash: bytes
    ts_us: int
    contributions: tuple[Contribution, ...]


@dataclass(frozen=True, slots=True)
class Ignored:
    reason: IgnoreReason


@dataclass(frozen=True, slots=True)
class Quarantined:
    reason: QuarantineReason
    detail: str
    event_id: str | None = None


Classified = Candidate | Ignored | Quarantined


class _NotFinite(Exception):
    pass


def _reject_constant(name: str) -> Any:
    # NaN / Infinity are not JSON; a record that uses them is not parseable.
    raise _NotFinite(name)


# One decoder for every record: json.loads with keyword arguments would build
# a new JSONDecoder per call.
_DECODER = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)
# msgspec decodes a record two to three times faster. It gives the stdlib's
# result on every document both accept, and refuses everything the stdlib
# refuses plus a few documents the stdlib takes (lone surrogate escapes, which
# classify then quarantines with its own detail): whatever it refuses is
# decoded again by the stdlib, so results and error texts stay the stdlib's.
_FAST_DECODER = msgspec.json.Decoder(float_hook=Decimal)
# Its nesting limit sits a few levels above the stdlib's (both count against
# the interpreter's recursion limit), so it only gets records that cannot nest
# anywhere near either: shorter than this, or with fewer brackets than half
# of it. The rest go to the stdlib alone, which then decides.
_FAST_MAX_NESTING_TEXT = 1024
_UNDECODED = object()


def parse_record(raw: bytes) -> dict[str, Any]:
    """JSON text -> envelope dict; numbers with a fraction become Decimal, never float."""
    doc: Any = _UNDECODED
    if (
        len(raw) < _FAST_MAX_NESTING_TEXT
        or raw.count(b"[") + raw.count(b"{") < _FAST_MAX_NESTING_TEXT // 2
    ):
        try:
            doc = _FAST_DECODER.decode(raw)
        except (ValueError, RecursionError):
            doc = _UNDECODED
    if doc is _UNDECODED:
        doc = _DECODER.decode(raw.decode("utf-8"))
    return envelope_of(doc)


def envelope_of(doc: Any) -> dict[str, Any]:
    """The envelope of a decoded record: the object itself, or the one it wraps."""
    if not isinstance(doc, dict):
        raise ValueError("record is not a JSON object")
    if "envelope" in doc:
        if len(doc) != 1 or not isinstance(doc["envelope"], dict):
            raise ValueError("a wrapped record must be exactly {\"envelope\": {...}}")
        doc = doc["envelope"]
    return cast(dict[str, Any], doc)


def payload_hash(env: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of the envelope minus the retry-variant fields.

    Same canonical form as `canonical_json` (sorted keys, compact separators,
    ASCII); fractional numbers (parsed as Decimal, never float) enter as their
    canonical decimal text.
    """
    body = env.copy()
    for k in _HASH_EXCLUDED:
        body.pop(k, None)
    # orjson where its bytes are the reference encoder's: several times faster.
    data = orjson_canonical(body, default=_decimal_default)
    if data is None:
        data = canonical_body(body)
    return hashlib.sha256(data).digest()


def canonical_body(body: Any) -> bytes:
    """The canonical JSON of a decoded record body, by the reference (stdlib) encoder."""
    return _HASH_ENCODER.encode(body).encode("ascii")


def _decimal_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_text(value)
    raise TypeError(f"{type(value).__name__} is not JSON")


_HASH_ENCODER = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
    default=_decimal_default,
)


def parse_amount(value: Any) -> Decimal:
    """JSON number or numeric string -> exact Decimal; raises ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError("amount is a boolean, not a number")
    if isinstance(value, int):
        d = Decimal(value)
    elif isinstance(value, Decimal):
        d = value
    elif isinstance(value, str):
        text = value.strip()
        if not _NUMERIC_TEXT.match(text):
            raise ValueError("amount is a string that is not a decimal number")
        try:
            d = Decimal(text)
        except InvalidOperation:
            raise ValueError("amount is a string that is not a decimal number") from None
        if len(text) <= MAX_AMOUNT_DIGITS and "e" not in text and "E" not in text:
            # Plain notation: neither digit count can exceed the text's length.
            return Decimal(0) if d.is_zero() else d
    else:
        raise ValueError(f"amount is a {type(value).__name__}, not a number")
    if not d.is_finite():
        raise ValueError("amount is not finite")
    if d.is_zero():
        return Decimal(0)
    _, digits, exp = d.as_tuple()
    assert isinstance(exp, int)
    int_digits = len(digits) + exp
    frac_digits = -exp
    if int_digits > MAX_AMOUNT_DIGITS or frac_digits > MAX_AMOUNT_DIGITS:
        raise ValueError(f"amount has more than {MAX_AMOUNT_DIGITS} integer or fractional digits")
    return d


def key_text(value: Any) -> str:
    """Canonical key id: an integer id 42 becomes "42"; every key is 1..256 characters.

    The bound holds whatever the JSON type: an integer with thousands of digits
    is as unstorable in a key index as a string of that length.
    """
    if isinstance(value, bool):
        raise ValueError("key is a boolean")
    if isinstance(value, int):
        # Digits, not str(value): converting a huge int to text is quadratic
        # (and refused by Python past 4300 digits).
        if value.bit_length() > _MAX_INT_KEY_BITS:
            raise ValueError(f"integer key has more than {MAX_KEY_CHARS} digits")
        text = str(value)
        if len(text) > MAX_KEY_CHARS:
            raise ValueError(f"integer key has more than {MAX_KEY_CHARS} digits")
        return text
    if isinstance(value, str) and unstorable_text(value) is not None:
        raise ValueError("key contains a NUL character or an unpaired surrogate")
    if isinstance(value, str) and 0 < len(value) <= MAX_KEY_CHARS:
        return value
    if isinstance(value, str):
        raise ValueError(f"key must be 1..{MAX_KEY_CHARS} characters")
    raise ValueError(f"key is a {type(value).__name__}, not an integer or string")


_ENVELOPE_VALID = validator(ENVELOPE).is_valid
_PINS = frozenset(PIN_NAMES)
# schema_version strings seen with a known major: a stream carries a handful.
_KNOWN_VERSIONS: set[str] = set()
_KNOWN_VERSIONS_KEPT = 256


def classify(raw: bytes, policy: Policy, required_platform_run_id: str | None) -> Classified:
    try:
        env = parse_record(raw)
    except (ValueError, _NotFinite, RecursionError) as exc:
        return Quarantined(QuarantineReason.UNPARSEABLE, _short(exc))
    raw_id = env.get("event_id")
    event_id = storable(raw_id[:256]) if isinstance(raw_id, str) else None

    head = env.copy()
    head.pop("payload", None)
    # JSON text can only carry a NUL or a lone surrogate as a \u escape, so a
    # line without one needs no walk over its strings (a backslash is rare,
    # and one byte is found faster than two).
    escaped = b"\\" in raw and b"\\u" in raw
    # Deep nesting and unpaired surrogates (in a value or a field name) are
    # refused before anything walks the record: the schema validator and the
    # hash encoders cannot take them. Only records that could hold one are walked.
    if escaped or raw.count(b"[") + raw.count(b"{") > MAX_NESTING:
        shape = _shape_problem(env)
        if shape is not None:
            return Quarantined(QuarantineReason.ENVELOPE_INVALID, shape, event_id)
    # Asking the compiled validator first skips the error search for the
    # valid records that make up nearly all of a stream.
    problem = None if _ENVELOPE_VALID(head) else envelope_errors(head)
    if problem is None and escaped:
        bad_text = unstorable_text(head)
        if bad_text is not None:
            problem = f"{bad_text}: contains a NUL character or an unpaired surrogate"
    if problem is None and "payload" in env and not isinstance(env["payload"], dict):
        problem = "payload: must be an object"
    if problem is not None:
        return Quarantined(QuarantineReason.ENVELOPE_INVALID, problem, event_id)
    try:
        ts_us = parse_micros(env["ts_utc"])
    except ValueError as exc:
        return Quarantined(QuarantineReason.ENVELOPE_INVALID, f"ts_utc: {exc}", event_id)

    if not env.keys() >= _PINS:
        missing = [p for p in PIN_NAMES if p not in env]
        return Quarantined(
            QuarantineReason.PINS_INVALID, f"missing pins: {', '.join(missing)}", event_id
        )
    if "run_id" in env and env["run_id"] != env["scenario_run_id"]:
        return Quarantined(
            QuarantineReason.PINS_INVALID, "run_id differs from scenario_run_id", event_id
        )

    version = env.get("schema_version")
    if version is not None and version not in _KNOWN_VERSIONS:
        m = _SCHEMA_MAJOR.match(version)
        if m is not None and m.group(1) in KNOWN_SCHEMA_MAJORS:
            if len(_KNOWN_VERSIONS) < _KNOWN_VERSIONS_KEPT:
                _KNOWN_VERSIONS.add(version)
        else:
            return Quarantined(
                QuarantineReason.UNKNOWN_SCHEMA_MAJOR,
                f"schema_version {version[:64]!r} has no known major version",
                event_id,
            )

    if required_platform_run_id is not None and env["platform_run_id"] != required_platform_run_id:
        return Ignored(IgnoreReason.FOREIGN_RUN)

    event_type = env["event_type"]
    payload = env.get("payload") or {}
    consuming = _consuming(policy, event_type)
    if not consuming:
        return Ignored(IgnoreReason.EVENT_TYPE_NOT_CONSUMED)
    contributions: list[Contribution] = []
    for i, group in consuming:
        if group.features is not None:
            # v1: dot paths, and tuple keys (docs/features.md, "Keys").
            found = feature_key(group.key_type, payload)
            if found is None:
                continue
            if isinstance(found, Quarantined):
                return Quarantined(found.reason, found.detail, event_id)
            key_id = found
            values = feature_values(group.features, payload, event_type)
            if isinstance(values, Quarantined):
                return Quarantined(values.reason, values.detail, event_id)
            contributions.append(Contribution(i, key_id, Decimal(0), values))
            continue
        raw_key = payload.get(group.key_type)
        if raw_key is None:
            continue
        try:
            key_id = key_text(raw_key)
        except ValueError as exc:
            return Quarantined(
                QuarantineReason.KEY_INVALID, f"payload.{group.key_type}: {exc}", event_id
            )
        raw_amount = payload.get(group.amount_field)
        try:
            amount = Decimal(0) if raw_amount is None else parse_amount(raw_amount)
        except ValueError as exc:
            return Quarantined(
                QuarantineReason.AMOUNT_INVALID, f"payload.{group.amount_field}: {exc}", event_id
            )
        contributions.append(Contribution(i, key_id, amount))
    if not contributions:
        return Ignored(IgnoreReason.NO_KEY_FIELD)

    pins = (
        env["platform_run_id"],
        env["scenario_run_id"],
        env["scenario_id"],
        env["manifest_fingerprint"],
        env["parameter_hash"],
        int(env["seed"]),
    )
    return Candidate(pins, env["event_id"], payload_hash(env), ts_us, tuple(contributions))


def feature_key(key_type: str, payload: dict[str, Any]) -> str | Quarantined | None:
    """A v1 group's key id: one field (a dot path), or several joined by `+` in the key
    type, whose texts are joined by `|` (`\\` and `|` in a part escaped with `\\`).
    None when a part is absent: the group does not see the event."""
    parts = []
    for path in key_type.split("+"):
        raw = field_value(payload, path)
        if is_absent(raw):
            return None
        try:
            text = key_text(raw)
        except ValueError as exc:
            return Quarantined(QuarantineReason.KEY_INVALID, f"payload.{path}: {exc}")
        parts.append(text)
    if len(parts) == 1:
        key_id = parts[0]  # as a v0 group answers the same field
    else:
        key_id = "|".join(p.replace("\\", "\\\\").replace("|", "\\|") for p in parts)
    if len(key_id) > MAX_KEY_CHARS:
        return Quarantined(QuarantineReason.KEY_INVALID,
                           f"key {key_type}: more than {MAX_KEY_CHARS} characters")
    return key_id


def feature_values(
    features: tuple[Feature, ...], payload: dict[str, Any], event_type: str
) -> tuple[tuple[int, str | None, str | None, int], ...] | Quarantined:
    """What an event contributes to each feature of a v1 group (feature 0: presence)."""
    out: list[tuple[int, str | None, str | None, int]] = [(0, None, None, 0)]
    for j, f in enumerate(features, 1):
        # A present value is judged before the filter: a record is valid or not
        # whatever a feature's filter says of it (docs/features.md).
        contribution: tuple[int, str | None, str | None, int] = (j, None, None, 0)
        if f.field is not None:
            raw = field_value(payload, f.field)
            if is_absent(raw):
                continue
            try:
                if f.numeric:
                    contribution = (j, str(numeric_value(raw)), None, 0)
                elif f.keeps_value:
                    contribution = (j, None, value_text(raw), TILE_SET.get(f.agg, 0))
            except ValueError as exc:
                return Quarantined(
                    QuarantineReason.VALUE_INVALID, f"payload.{f.field} ({f.name}): {exc}"
                )
        if f.where is not None and not f.where.matches(payload, event_type):
            continue
        out.append(contribution)
    return tuple(out)


def _shape_problem(doc: Any) -> str | None:
    """Why a record cannot be walked safely: nesting deeper than MAX_NESTING, or an
    unpaired surrogate in a field name anywhere or in a string of the envelope's
    head (the payload's strings are judged where they are used: keys, values).
    Iterative: no recursion."""
    stack: list[tuple[Any, int, str, bool]] = [(doc, 0, "", False)]
    while stack:
        node, depth, path, in_payload = stack.pop()
        if depth > MAX_NESTING:
            return f"{path or 'record'}: nested deeper than {MAX_NESTING} levels"
        if isinstance(node, dict):
            for k, v in node.items():
                if not _encodable(k):
                    return f"{path or 'record'}: a field name has an unpaired surrogate"
                stack.append((v, depth + 1, f"{path}.{k}" if path else k,
                              in_payload or (depth == 0 and k == "payload")))
        elif isinstance(node, list):
            stack.extend((v, depth + 1, f"{path}[{i}]", in_payload)
                         for i, v in enumerate(node))
        elif isinstance(node, str) and not in_payload and not _encodable(node):
            return f"{path}: contains an unpaired surrogate"
    return None


def _encodable(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _consuming(policy: Policy, event_type: str) -> tuple[tuple[int, FeatureGroup], ...]:
    """(index, group) of the groups of `policy` that consume `event_type`, memoised."""
    cached = _CONSUMING.get(id(policy))
    # The entry keeps its policy alive, so the id cannot name another one meanwhile.
    if cached is None or cached[0] is not policy:
        if len(_CONSUMING) >= _CONSUMING_KEPT:
            _CONSUMING.clear()
        cached = _CONSUMING[id(policy)] = (policy, {})
    by_type = cached[1]
    found = by_type.get(event_type)
    if found is None:
        found = tuple((i, g) for i, g in enumerate(policy.groups) if g.consumes(event_type))
        if len(by_type) < _CONSUMING_KEPT:
            by_type[event_type] = found
    return found


_CONSUMING: dict[int, tuple[Policy, dict[str, tuple[tuple[int, FeatureGroup], ...]]]] = {}
_CONSUMING_KEPT = 256


def _short(exc: BaseException) -> str:
    return storable(f"{type(exc).__name__}: {exc}"[:300])


def storable(text: str) -> str:
    """`text` made safe for a PostgreSQL text column (NUL and lone surrogates replaced)."""
    if storable_text(text):
        return text  # the common case
    text = text.replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace").decode("utf-8")
