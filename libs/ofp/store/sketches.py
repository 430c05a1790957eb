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

import datasketches as ds

LG_K = 12
_TYPE = ds.tgt_hll_type.HLL_8
# Relative standard error of lg_k 12 (1.04 / sqrt(4096)): docs/features.md.
RSE = 0.01625


def merged(existing: bytes | None, values: Iterable[str]) -> bytes:
    """A tile's sketch with `values` added (by union, so merging order never matters)."""
    union = ds.hll_union(LG_K)
    if existing is not None:
        union.update(ds.hll_sketch.deserialize(existing))
    fresh = ds.hll_sketch(LG_K, _TYPE)
    for v in values:
        fresh.update(_item(v))
    union.update(fresh)
    return bytes(union.get_result(_TYPE).serialize_compact())


def estimate(sketches: Sequence[bytes], values: Iterable[str]) -> int:
    """The distinct-count estimate of the tiles' sketches and the edge values."""
    union = ds.hll_union(LG_K)
    for b in sketches:
        union.update(ds.hll_sketch.deserialize(b))
    edge = ds.hll_sketch(LG_K, _TYPE)
    for v in values:
        edge.update(_item(v))
    union.update(edge)
    result = union.get_result(_TYPE)
    image = bytes(result.serialize_updatable())
    if image[0] == _HLL_PREAMBLE_INTS and image[7] & 3 == _HLL_MODE:
        return _hll_estimate(image[_HLL_PREAMBLE_INTS * 4:][:1 << LG_K])
    # Coupon (list / set) modes: a function of the set of coupons alone.
    value: float = result.get_estimate()
    return round(value)


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


def _hll_estimate(registers: bytes) -> int:
    m = len(registers)
    alpha = 0.7213 / (1 + 1.079 / m)
    raw = alpha * m * m / math.fsum(2.0 ** -r for r in registers)
    zeros = registers.count(0)
    if raw <= 2.5 * m and zeros:
        return round(m * math.log(m / zeros))
    return round(raw)
