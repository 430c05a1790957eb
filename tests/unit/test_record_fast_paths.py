"""The projector's fast decode, hash and timestamp paths agree with the reference ones.

`parse_record` decodes with msgspec and `payload_hash` encodes with orjson; both
must give exactly what the standard library gives (or step aside to it; the
orjson encoder itself is checked in test_canonical.py), and
`parse_micros` must refuse exactly what its full parse refuses, whatever its
minute cache holds.
"""

from __future__ import annotations

import hashlib
import json
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ofp.contracts import timefmt
from ofp.events import (
    _HASH_EXCLUDED,
    _NotFinite,
    _reject_constant,
    canonical_body,
    envelope_of,
    parse_record,
    payload_hash,
)

_REFERENCE = json.JSONDecoder(parse_float=Decimal, parse_constant=_reject_constant)


def _reference_parse(raw: bytes) -> Any:
    """What parse_record did with the standard library alone."""
    return envelope_of(_REFERENCE.decode(raw.decode("utf-8")))


def _shape(value: Any) -> Any:
    """`value` with every type and key order spelled out (Decimal("1.0") != 1 here)."""
    if isinstance(value, dict):
        return ("dict", [(k, _shape(v)) for k, v in value.items()])
    if isinstance(value, list):
        return ("list", [_shape(v) for v in value])
    if isinstance(value, Decimal):
        return ("Decimal", str(value))
    return (type(value).__name__, value)


def _outcome(parse: Any, raw: bytes) -> Any:
    try:
        return ("ok", _shape(parse(raw)))
    except (ValueError, RecursionError) as exc:
        return ("error", type(exc).__name__, str(exc))
    except _NotFinite as exc:
        return ("not finite", str(exc))


def _same_as_reference(raw: bytes) -> None:
    assert _outcome(parse_record, raw) == _outcome(_reference_parse, raw)


_text = st.text(st.characters(codec=None, exclude_categories=()), max_size=12)
_json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | _text
)
_json_values = st.recursive(
    _json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=12,
)


def _json_text(value: Any, ensure_ascii: bool) -> bytes:
    """JSON text of `value` with Decimals written as JSON numbers in their own spelling."""
    if isinstance(value, dict):
        parts = [
            _json_text(k, ensure_ascii) + b":" + _json_text(v, ensure_ascii)
            for k, v in value.items()
        ]
        return b"{" + b",".join(parts) + b"}"
    if isinstance(value, list):
        return b"[" + b",".join(_json_text(v, ensure_ascii) for v in value) + b"]"
    if isinstance(value, Decimal):
        return str(value).encode()
    return json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")


EDGE_LINES = [
    b'{"a": NaN}',
    b'{"a": Infinity}',
    b'{"a": -Infinity}',
    b'{"a": 1, "b": 2, "a": 3}',
    b'{"a": 123456789012345678901234567890, "b": -18446744073709551617}',
    b'{"a": ' + b"9" * 4300 + b"}",
    b'{"a": ' + b"9" * 4301 + b"}",
    b'{"a": 1.0, "b": 1e5, "c": -0.0, "d": 1E-7, "e": 1e400, "f": -0}',
    b'{"a": "\\ud800"}',
    b'{"a": "\\udc00x"}',
    b'{"a": "\\ud800\\u0041"}',
    b'{"a": "\\ud83d\\ude00"}',
    b'{"a": "\\u0000"}',
    b'{"a": "\xff"}',
    b'{"a": "\xed\xa0\x80"}',
    b'{"a": "\xc0\x80"}',
    b'\xef\xbb\xbf{"a": 1}',
    b'{"a": "x\x01y"}',
    b'{"a": "\x7f"}',
    b'{"a": 01}',
    b'{"a": 1.}',
    b'{"a": .5}',
    b'{"a": +1}',
    b'{"a": [1,]}',
    b'{"a": 1,}',
    b'{"a": 1} x',
    b' \t{"a": 1}\r\n',
    b"[1]",
    b'"text"',
    b"",
    b'{"envelope": {"a": 1}}',
    b'{"envelope": {"a": 1}, "b": 2}',
    b'{"envelope": [1]}',
    b'{"a": "\\x"}',
    b'{"a": "\\u00g9"}',
    b'{"a": ' + b"[" * 900 + b"]" * 900 + b"}",
    b'{"a": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    b'{"a": ' + b"[" * 5000 + b"}",
]


@pytest.mark.parametrize("raw", EDGE_LINES, ids=lambda raw: repr(raw[:40]))
def test_parse_record_matches_the_standard_library_on_edge_lines(raw: bytes) -> None:
    _same_as_reference(raw)


def test_nesting_near_the_recursion_limit_is_decided_by_the_standard_library() -> None:
    # Where the limit falls depends on the stack depth of the caller: try them all.
    # Only success or failure is compared: the documents nest too deep to compare.
    for depth in range(1, 1100):
        raw = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
        assert _succeeds(parse_record, raw) == _succeeds(_reference_parse, raw), depth


def _succeeds(parse: Any, raw: bytes) -> bool:
    try:
        parse(raw)
    except RecursionError:
        return False
    return True


@settings(max_examples=300)
@given(st.dictionaries(_text, _json_values, max_size=5), st.booleans())
def test_parse_record_matches_the_standard_library_on_documents(
    doc: dict[str, Any], ensure_ascii: bool
) -> None:
    _same_as_reference(_json_text(doc, ensure_ascii))


@settings(max_examples=300)
@given(st.dictionaries(_text, _json_values, max_size=4), st.data())
def test_parse_record_matches_the_standard_library_on_damaged_lines(
    doc: dict[str, Any], data: st.DataObject
) -> None:
    raw = bytearray(_json_text(doc, ensure_ascii=False))
    for _ in range(data.draw(st.integers(min_value=1, max_value=3))):
        at = data.draw(st.integers(min_value=0, max_value=len(raw)))
        raw[at:at] = data.draw(st.binary(min_size=1, max_size=3))
    _same_as_reference(bytes(raw))


@settings(max_examples=200)
@given(st.dictionaries(_text, _json_values, max_size=5), st.sampled_from(_HASH_EXCLUDED))
def test_payload_hash_is_the_digest_of_the_reference_encoding(
    env: dict[str, Any], excluded: str
) -> None:
    env = {**env, excluded: "retry-variant"}
    body = {k: v for k, v in env.items() if k not in _HASH_EXCLUDED}
    assert payload_hash(env) == hashlib.sha256(canonical_body(body)).digest()


@pytest.mark.parametrize(
    "value",
    [
        "\x7f",
        "é",
        "\ud800",
        "😀",
        2**64,
        -(2**63) - 1,
        "\x00\x01\x08\x09\x0a\x0b\x0c\x0d\x1f\"\\/",
        [Decimal("1.50"), Decimal("1E+2"), Decimal("-0"), None, True],
        {"é": 1, "e": 2, "\x7f": 3},
    ],
    ids=repr,
)
def test_payload_hash_where_orjson_would_write_differently(value: Any) -> None:
    env = {"event_id": "e", "payload": {"k": value}}
    body = {"payload": {"k": value}}
    assert payload_hash(env) == hashlib.sha256(canonical_body(body)).digest()


_STAMPS = st.integers(min_value=-62_135_596_800_000_000, max_value=253_402_300_799_999_999)


def _reference_micros(text: Any) -> Any:
    try:
        return timefmt._parse_micros(text)
    except ValueError as exc:
        return str(exc)


def _micros(text: Any) -> Any:
    try:
        return timefmt.parse_micros(text)
    except ValueError as exc:
        return str(exc)


@settings(max_examples=500)
@given(_STAMPS, st.integers(min_value=0, max_value=26), st.text(max_size=2), st.booleans())
def test_parse_micros_with_a_warm_minute_cache_refuses_what_the_full_parse_refuses(
    us: int, at: int, replacement: str, drop: bool
) -> None:
    good = timefmt.format_micros(us)
    timefmt.parse_micros(good)  # the minute is cached from here on
    text = good[:at] + ("" if drop else replacement) + good[at + 1 :]
    assert _micros(text) == _reference_micros(text)
    assert _micros(good) == us


