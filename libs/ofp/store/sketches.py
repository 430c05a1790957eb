"""HyperLogLog tiles for approx_distinct_count (Apache DataSketches).

Each tile keeps one HLL sketch (lg_k 12, HLL_8) of the values of its events;
a window's estimate is the union of its tiles' sketches and its edge events'
values. Sketches merge by register maximum, so a tile's registers do not
depend on how its events were batched, and every estimate is taken from a
union (never from a sketch updated directly, whose estimator differs), so the
answer depends only on the set of values.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

# numpy before datasketches: datasketches' extension imports numpy through the
# numpy C API, which prints and swallows a KeyboardInterrupt raised meanwhile; a
# Ctrl-C during that import was lost and the workload started regardless
# (docs/decisions.md, "Signals from the first instruction"). Imported first, numpy
# raises it like any import.
import numpy as np

# isort: split
import datasketches as ds

LG_K = 12
_TYPE = ds.tgt_hll_type.HLL_8
# Relative standard error of lg_k 12 (1.04 / sqrt(4096)): docs/features.md.
RSE = 0.01625


def merged(existing: bytes | None, values: Iterable[str], also: Iterable[bytes] = ()) -> bytes:
    """A tile's sketch with `values` (and the sketches `also`) added (by union, so
    merging order never matters)."""
    union = ds.hll_union(LG_K)
    for b in (*(() if existing is None else (existing,)), *also):
        union.update(ds.hll_sketch.deserialize(b))
    fresh = ds.hll_sketch(LG_K, _TYPE)
    for v in values:
        fresh.update(_item(v))
    union.update(fresh)
    return bytes(union.get_result(_TYPE).serialize_compact())


# An empty sketch: what a day sketch holds between its creation and its first
# update (ofp.store.writes._new_day_sketches).
EMPTY = merged(None, ())


def estimate(sketches: Sequence[bytes], values: Iterable[str]) -> int:
    """The distinct-count estimate of the tiles' sketches and the edge values.

    A sketch in HLL mode is 4,096 registers, and a union that holds one is in
    HLL mode too: its registers are the register-wise maximum of the sketches'
    registers and of the list / set sketches' coupons (slot, value). DataSketches'
    union takes ~10 µs per HLL sketch from Python, numpy ~1. So when one sketch
    is in HLL mode, DataSketches unites it with the edge values (and any sketch
    of a form not read here), and numpy the other sketches' registers and
    coupons: the same registers, so the same estimate (tests/unit/test_sketches.py
    checks it against DataSketches' union of all). Without one, DataSketches
    unites them all (small sketches: cheap).
    """
    full, coupons, other = _forms(sketches)
    union = ds.hll_union(LG_K)
    for b in (*coupons, *other) if not full else other:
        union.update(ds.hll_sketch.deserialize(b))
    edge = ds.hll_sketch(LG_K, _TYPE)
    for v in values:
        edge.update(_item(v))
    union.update(edge)
    if full:
        union.update(ds.hll_sketch.deserialize(full[0]))
    result = union.get_result(_TYPE)
    image = bytes(result.serialize_updatable())
    if image[0] == _HLL_PREAMBLE_INTS and image[7] & 3 == _HLL_MODE:
        registers = image[_HLL_PREAMBLE_INTS * 4:][:1 << LG_K]
        if full:
            registers = _united(registers, full[1:], coupons)
        return _hll_estimate(registers)
    # Coupon (list / set) modes: a function of the set of coupons alone.
    value: float = result.get_estimate()
    return round(value)


def _united(registers: bytes, full: Sequence[bytes], coupon_sketches: Sequence[bytes]) -> bytes:
    """`registers` raised to the HLL-mode sketches' registers and the list / set
    sketches' coupons: the register-wise maximum, as DataSketches' union."""
    k = 1 << LG_K
    top = np.frombuffer(registers, dtype=np.uint8).copy()
    # 15 sketches (60 kB) at a time: a larger buffer is mmapped and page-faulted
    # afresh on every call, which costs more than the maximum itself.
    for i in range(0, len(full), 15):
        part = full[i:i + 15]
        block = np.frombuffer(b"".join(b[_HLL_PREAMBLE_INTS * 4:] for b in part),
                              dtype=np.uint8).reshape(len(part), k)
        np.maximum(top, block.max(axis=0), out=top)
    if coupon_sketches:
        # A coupon is (value << 26) | the hash's low 26 bits, its register the low
        # lg_k bits (DataSketches' HllUtil); an empty slot (0) raises nothing.
        c = np.frombuffer(b"".join(b[b[0] * 4:] for b in coupon_sketches), dtype="<u4")
        np.maximum.at(top, (c & (k - 1)).astype(np.intp), (c >> 26).astype(np.uint8))
    return top.tobytes()


def _forms(sketches: Sequence[bytes]) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """The serialized lg_k 12 HLL_8 sketches in HLL mode (a 10-int preamble, then
    4,096 one-byte registers), those in list or set mode (a 2- or 3-int preamble,
    then 4-byte coupons), and any other form (DataSketches' HLL serialization)."""
    full: list[bytes] = []
    coupons: list[bytes] = []
    other: list[bytes] = []
    registers = _HLL_PREAMBLE_INTS * 4 + (1 << LG_K)
    for b in sketches:
        n = len(b)
        if n < 8 or b[3] != LG_K:
            other.append(b)
        elif b[0] == _HLL_PREAMBLE_INTS and n == registers and b[7] == _HLL_8_IN_HLL_MODE:
            full.append(b)
        elif b[0] in (2, 3) and n >= b[0] * 4 and n % 4 == 0 and b[7] == 2 << 2 | (b[0] - 2):
            coupons.append(b)
        else:
            other.append(b)
    return full, coupons, other


def _item(value: str) -> str:
    # DataSketches ignores the empty string; a value is counted with a prefix, so
    # "" is a value like any other.
    return "v" + value


# In HLL mode DataSketches' estimator reads running sums kept as the registers
# changed, in floating point, so two unions of the same registers can differ in
# the last unit. The registers themselves are a maximum, independent of order:
# the estimate is computed from them here (the classic HyperLogLog estimator
# with linear counting for small ranges), always summed in register order.
_HLL_PREAMBLE_INTS = 10
_HLL_MODE = 2
# The preamble's mode byte: the current mode (bits 0-1) and the target type (bits
# 2-3, HLL_8 = 2).
_HLL_8_IN_HLL_MODE = 2 << 2 | _HLL_MODE


def _hll_estimate(registers: bytes) -> int:
    m = len(registers)
    alpha = 0.7213 / (1 + 1.079 / m)
    # sum(2^-r) over the registers from their histogram: c * 2^-r is exact in
    # binary floating point and fsum rounds the exact sum once, so this is the
    # sum over the 4,096 registers to the bit, from one C-speed count per value
    # (values are small: the counts reach m after a few dozen) instead of 4,096
    # Python steps (~0.7 ms, once the largest part of a hot key's estimate).
    terms: list[float] = []
    seen = 0
    for r in range(256):
        c = registers.count(r)
        if c:
            terms.append(c * 2.0 ** -r)
            seen += c
            if seen == m:
                break
    raw = alpha * m * m / math.fsum(terms)
    zeros = registers.count(0)
    if raw <= 2.5 * m and zeros:
        return round(m * math.log(m / zeros))
    return round(raw)
