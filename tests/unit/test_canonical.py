"""The orjson fast path of canonical JSON gives the standard library's bytes or steps aside."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from ofp.contracts.canonical import canonical_json, decimal_text, orjson_canonical


def reference(obj: Any) -> bytes:
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
        default=_decimal,
    ).encode("ascii")


def _decimal(value: Any) -> Any:
    if isinstance(value, Decimal):
        return decimal_text(value)
    raise TypeError(type(value).__name__)


# Every code point class that matters: controls, DEL, Latin-1, BMP, astral, surrogates.
_text = st.text(st.characters(codec=None, min_codepoint=0, max_codepoint=0x10FFFF), max_size=8)
_scalars = (
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | _text
    | st.decimals(allow_nan=False, allow_infinity=False)
)
documents = st.recursive(
    _scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_text, inner, max_size=4),
    max_leaves=20,
)


@given(documents)
def test_fast_path_is_byte_identical_or_steps_aside(doc: Any) -> None:
    fast = orjson_canonical(doc, default=_decimal)
    if fast is not None:
        assert fast == reference(doc)


@given(documents.filter(lambda d: "Decimal" not in repr(d)))
def test_canonical_json_equals_the_standard_library_encoding(doc: Any) -> None:
    assert canonical_json(doc) == reference(doc)


def test_fast_path_steps_aside_for_text_it_would_write_differently() -> None:
    for text in ("\x7f", "é", "\ud800", "😀"):
        assert orjson_canonical({"k": text}) is None
    assert orjson_canonical(2**64) is None
    expected = b'{"b":[18446744073709551616],"k":"\\u007f"}'
    assert canonical_json({"k": "\x7f", "b": [2**64]}) == expected
