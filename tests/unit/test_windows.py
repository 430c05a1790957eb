"""Tiles + edges cover exactly (T - d, T] for every T and d (property test)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ofp.windows import window_probe

TILE = 1000


def covered(ts: int, as_of: int, d: int) -> int:
    """How many times the read path counts an event at `ts`."""
    p = window_probe(as_of, d, TILE)
    tile = (ts // TILE) * TILE
    n = 0
    if p.tile_from_us <= tile < p.tile_to_us:
        n += 1
    if p.lo_us < ts < p.edge_lo_end_us:
        n += 1
    if p.edge_hi_start_us <= ts <= p.hi_us:
        n += 1
    return n


@given(
    as_of=st.integers(-10**6, 10**6),
    d=st.integers(1, 20 * TILE),
    offset=st.integers(-25 * TILE, 2 * TILE),
)
def test_every_instant_is_counted_once_inside_the_window_and_never_outside(
    as_of: int, d: int, offset: int
) -> None:
    ts = as_of + offset
    expected = 1 if as_of - d < ts <= as_of else 0
    assert covered(ts, as_of, d) == expected


def test_edges_are_exact_at_the_boundaries() -> None:
    for as_of in (5 * TILE, 5 * TILE + 1, 5 * TILE - 1):
        d = 3 * TILE
        assert covered(as_of, as_of, d) == 1
        assert covered(as_of + 1, as_of, d) == 0
        assert covered(as_of - d, as_of, d) == 0
        assert covered(as_of - d + 1, as_of, d) == 1
