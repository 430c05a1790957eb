"""Envelope -> record outcome, as a pure function (SPEC 2.1, 2.2).

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
from typing import Any

from ofp.contracts.canonical import decimal_text
from ofp.contracts.request import PIN_NAMES, unstorable_text
from ofp.contracts.schemas import envelope_errors
from ofp.contracts.timefmt import parse_micros
from ofp.policy import Policy

KNOWN_SCHEMA_MAJORS = frozenset({"1"})
# Fields a producer may change on a retry of the same event; they are not part
# of what "the same payload" means.
# The pins are not hashed either: dedupe compares hashes within one run
# scope, where the pins are equal by definition.
_HASH_EXCLUDED = frozenset(
    {
        "event_id", "emitted_at_utc", "trace_id", "span_id", "parent_event_id", "producer",
        "platform_run_id", "scenario_run_id", "scenario_id", "manifest_fingerprint",
        "parameter_hash", "seed", "run_id",
    }
)
_NUMERIC_TEXT = re.compile(r"^[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$")
_SCHEMA_MAJOR = re.compile(r"^v?([0-9]+)(?:\.|$)")
# Amounts beyond this many integer or fractional digits are refused rather
# than stored: no real amount needs them, and they bound the cost of a sum.
MAX_AMOUNT_DIGITS = 100
MAX_KEY_CHARS = 256


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
    PAYLOAD_CONFLICT = "payload_conflict"


class IgnoreReason(enum.StrEnum):
    FOREIGN_RUN = "foreign_run"
    EVENT_TYPE_NOT_CONSUMED = "event_type_not_consumed"
    NO_KEY_FIELD = "no_key_field"


@dataclass(frozen=True, slots=True)
class Contribution:
    group_index: int  # index into Policy.groups
    key_id: str
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Candidate:
    """A valid, relevant event; APPLIED unless the store already holds its event_id."""

    pins: tuple[str, str, str, str, str, int]
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


def parse_record(raw: bytes) -> dict[str, Any]:
    """JSON text -> envelope dict; numbers with a fraction become Decimal, never float."""
    doc = _DECODER.decode(raw.decode("utf-8"))
    if not isinstance(doc, dict):
        raise ValueError("record is not a JSON object")
    if "envelope" in doc:
        if len(doc) != 1 or not isinstance(doc["envelope"], dict):
            raise ValueError("a wrapped record must be exactly {\"envelope\": {...}}")
        doc = doc["envelope"]
    return doc


def payload_hash(env: dict[str, Any]) -> bytes:
    """SHA-256 of the canonical JSON of the envelope minus the retry-variant fields.

    Same canonical form as `canonical_json` (sorted keys, compact separators,
    ASCII); fractional numbers (parsed as Decimal, never float) enter as their
    canonical decimal text. Done in one C-encoder pass: this runs per record.
    """
    body = {k: v for k, v in env.items() if k not in _HASH_EXCLUDED}
    text = _HASH_ENCODER.encode(body)
    return hashlib.sha256(text.encode("ascii")).digest()


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
        if not _NUMERIC_TEXT.match(value.strip()):
            raise ValueError("amount is a string that is not a decimal number")
        try:
            d = Decimal(value.strip())
        except InvalidOperation:
            raise ValueError("amount is a string that is not a decimal number") from None
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
    """Canonical key id: an integer id 42 becomes "42"."""
    if isinstance(value, bool):
        raise ValueError("key is a boolean")
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str) and unstorable_text(value) is not None:
        raise ValueError("key contains a NUL character or an unpaired surrogate")
    if isinstance(value, str) and 0 < len(value) <= MAX_KEY_CHARS:
        return value
    if isinstance(value, str):
        raise ValueError(f"key must be 1..{MAX_KEY_CHARS} characters")
    raise ValueError(f"key is a {type(value).__name__}, not an integer or string")


def classify(raw: bytes, policy: Policy, required_platform_run_id: str | None) -> Classified:
    try:
        env = parse_record(raw)
    except (ValueError, _NotFinite, RecursionError) as exc:
        return Quarantined(QuarantineReason.UNPARSEABLE, _short(exc))
    raw_id = env.get("event_id")
    event_id = storable(raw_id[:256]) if isinstance(raw_id, str) else None

    head = {k: v for k, v in env.items() if k != "payload"}
    problem = envelope_errors(head)
    # JSON text can only carry a NUL or a lone surrogate as a \u escape, so a
    # line without one needs no walk over its strings.
    escaped = b"\\u" in raw
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

    missing = [p for p in PIN_NAMES if p not in env]
    if missing:
        return Quarantined(
            QuarantineReason.PINS_INVALID, f"missing pins: {', '.join(missing)}", event_id
        )
    if "run_id" in env and env["run_id"] != env["scenario_run_id"]:
        return Quarantined(
            QuarantineReason.PINS_INVALID, "run_id differs from scenario_run_id", event_id
        )

    version = env.get("schema_version")
    if version is not None:
        m = _SCHEMA_MAJOR.match(version)
        if m is None or m.group(1) not in KNOWN_SCHEMA_MAJORS:
            return Quarantined(
                QuarantineReason.UNKNOWN_SCHEMA_MAJOR,
                f"schema_version {version[:64]!r} has no known major version",
                event_id,
            )

    if required_platform_run_id is not None and env["platform_run_id"] != required_platform_run_id:
        return Ignored(IgnoreReason.FOREIGN_RUN)

    event_type = env["event_type"]
    payload = env.get("payload") or {}
    consuming = [(i, g) for i, g in enumerate(policy.groups) if g.consumes(event_type)]
    if not consuming:
        return Ignored(IgnoreReason.EVENT_TYPE_NOT_CONSUMED)
    contributions = []
    for i, group in consuming:
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


def _short(exc: BaseException) -> str:
    return storable(f"{type(exc).__name__}: {exc}"[:300])


def storable(text: str) -> str:
    """`text` made safe for a PostgreSQL text column (NUL and lone surrogates replaced)."""
    text = text.replace("\x00", "\ufffd")
    return text.encode("utf-8", "replace").decode("utf-8")
