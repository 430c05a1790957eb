"""Tile and window arithmetic shared by the write path and the read path.

A window at as-of T with duration d covers event time (T - d, T]. Its middle
is a run of whole tiles read from `feature_tiles`; its two edges are read
event by event from `feature_events`, so edges are exact to the microsecond
and a read touches at most about one tile's worth of events per window,
however hot the key is.
"""

from __future__ import annotations

from dataclasses import dataclass

# Changing the tile size changes how state is stored: it needs a rebuild.
TILE_US = 3_600_000_000


def tile_start(ts_us: int, tile_us: int = TILE_US) -> int:
    """Start of the tile holding `ts_us` (floor division: correct before 1970 too)."""
    return (ts_us // tile_us) * tile_us


@dataclass(frozen=True, slots=True)
class WindowProbe:
    """Which tiles and which event ranges make up (lo_us, hi_us]."""

    lo_us: int  # exclusive
    hi_us: int  # inclusive
    edge_lo_end_us: int  # events with lo_us < ts < edge_lo_end_us
    tile_from_us: int  # whole tiles with tile_from_us <= tile_start < tile_to_us
    tile_to_us: int
    edge_hi_start_us: int  # events with edge_hi_start_us <= ts <= hi_us


def window_probe(as_of_us: int, duration_us: int, tile_us: int = TILE_US) -> WindowProbe:
    lo = as_of_us - duration_us
    hi = as_of_us
    # The tile holding lo is partial (lo itself is excluded), so whole tiles
    # start at the next boundary; the tile holding hi is partial too.
    tile_from = tile_start(lo, tile_us) + tile_us
    tile_to = tile_start(hi, tile_us)
    if tile_from > tile_to:
        # The whole window sits inside one tile: read it all from events.
        return WindowProbe(lo, hi, hi + 1, 0, 0, hi + 1)
    return WindowProbe(lo, hi, tile_from, tile_from, tile_to, tile_to)
