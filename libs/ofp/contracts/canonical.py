"""Canonical JSON, decimal text and digests (SPEC 4.4, 3.1).

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


def canonical_json(obj: Any) -> bytes:
    """Serialise `obj` canonically; refuses floats (decimals travel as strings)."""
    _reject_floats(obj)
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    ).encode("ascii")


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
