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


# The v1 feature language keeps tiles of two sizes (docs/features.md, "Cost").
MINUTE_US = 60_000_000
HOUR_US = 3_600_000_000
FEATURE_TILE_SIZES_US = (MINUTE_US, HOUR_US)
# approx_distinct_count's sketches also have day tiles (migration 0008): uniting
# a sketch costs the same whatever it holds, so a 7-day window unites at most 6
# day, 46 hour and 118 minute sketches instead of 168 hour and 118 minute ones.
DAY_US = 86_400_000_000
SKETCH_TILE_SIZES_US = (MINUTE_US, HOUR_US, DAY_US)


@dataclass(frozen=True, slots=True)
class FeatureWindowProbe:
    """(lo_us, hi_us] as hour tiles in the middle, minute tiles around them, and at
    most a minute of events at each edge.

    Events `lo_us < ts < m0_us` and `m1_us <= ts <= hi_us`; minute tiles starting
    in `[m0_us, h0_us)` and `[h1_us, m1_us)`; hour tiles starting in `[h0_us, h1_us)`.
    Sketches (`SKETCH_TILE_SIZES_US`) split the hours further: day tiles starting
    in `[d0_us, d1_us)`, hour tiles in `[h0_us, d0_us)` and `[d1_us, h1_us)`.
    """

    lo_us: int
    hi_us: int
    m0_us: int
    h0_us: int
    h1_us: int
    m1_us: int
    d0_us: int
    d1_us: int


def feature_window_probe(as_of_us: int, duration_us: int) -> FeatureWindowProbe:
    lo = as_of_us - duration_us
    hi = as_of_us
    m0 = -((-(lo + 1)) // MINUTE_US) * MINUTE_US  # first minute tile wholly after lo
    m1 = ((hi + 1) // MINUTE_US) * MINUTE_US  # minute tiles ending at or before hi
    if m0 >= m1:
        # No whole minute inside: every event of the window is an edge event.
        end = hi + 1
        return FeatureWindowProbe(lo, hi, end, end, end, end, end, end)
    h0 = -((-m0) // HOUR_US) * HOUR_US
    h1 = (m1 // HOUR_US) * HOUR_US
    if h0 >= h1:
        h0 = h1 = m1  # no whole hour: minute tiles [m0, m1) only
    d0 = -((-h0) // DAY_US) * DAY_US
    d1 = (h1 // DAY_US) * DAY_US
    if d0 >= d1:
        d0 = d1 = h1  # no whole day: hour tiles [h0, h1) only
    return FeatureWindowProbe(lo, hi, m0, h0, h1, m1, d0, d1)
