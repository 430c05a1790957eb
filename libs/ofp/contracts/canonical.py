"""Canonical JSON, decimal text and digests (docs/contract.md 4.4, 3.1).

Canonical JSON: UTF-8, keys sorted, separators `,` and `:`, ASCII only, no
floats, explicit null. Everything OFP hashes goes through `canonical_json` so
the projector, the server and `ofp verify` can never disagree on a byte.
"""

from __future__ import annotations

import functools
import hashlib
import json
from decimal import Context, Decimal
from typing import Any

import orjson


def canonical_json(obj: Any, *, floats_checked: bool = False) -> bytes:
    """Serialise `obj` canonically; refuses floats (decimals travel as strings).

    `floats_checked=True` skips the walk that refuses floats, for documents the
    caller built from integers and strings only (the server's snapshots).
    """
    if not floats_checked:
        _reject_floats(obj)
    fast = orjson_canonical(obj)
    if fast is not None:
        return fast
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


def orjson_canonical(obj: Any, default: Any = None) -> bytes | None:
    """`obj` in canonical form by orjson, or None when orjson's bytes could differ.

    orjson sorts keys by code point and escapes like the standard library for
    printable ASCII; it differs on everything else (non-ASCII is written as
    UTF-8, DEL raw, integers beyond 64 bits refused). So its output counts
    only when it is printable ASCII without DEL; otherwise the caller uses the
    standard library encoder, which defines the canonical form.
    tests/unit/test_canonical.py checks the two agree on arbitrary documents.
    """
    try:
        out = orjson.dumps(obj, default=default, option=orjson.OPT_SORT_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        return None
    if out.isascii() and b"\x7f" not in out:
        return out
    return None


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def digest(obj: Any) -> str:
    """SHA-256 hex of the canonical JSON of `obj`."""
    return sha256_hex(canonical_json(obj))


def decimal_text(value: Decimal) -> str:
    """Canonical decimal text: plain notation, no exponent, no trailing fractional zeros.

    `Decimal("12.50") -> "12.5"`, `Decimal("1E+2") -> "100"`, zero (of any sign) -> "0".
    """
    if value.is_zero():
        return "0"
    # normalize() rounds to the context precision: give it every digit we have
    # (contexts are cached by precision; this runs for every sum served).
    return format(value.normalize(_exact_context(len(value.as_tuple().digits))), "f")


@functools.cache
def _exact_context(digits: int) -> Context:
    return Context(prec=max(digits, 1))


def _reject_floats(obj: Any) -> None:
    if isinstance(obj, float):
        raise TypeError("canonical JSON holds no floats; pass decimals as strings")
    if isinstance(obj, dict):
        for v in obj.values():
            _reject_floats(v)
    elif isinstance(obj, list | tuple):
        for v in obj:
            _reject_floats(v)
