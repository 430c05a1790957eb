"""The domain's own types, shared by the pure code and the store.

The pure request -> plan -> snapshot code (`ofp.snapshot`) and the store's
statements (`ofp.store`) both speak these; neither side owns them, so the
domain never imports the store.

    Pins         the six ContextPins of a run scope, in one tuple spelling
    ReadProbes   what one snapshot read sums (the read statement's layout)
    FeatureProbe one v1 feature window of one key
    SnapshotRow  what the read statement returns for one request
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ofp.features import Intermediate
from ofp.windows import FeatureWindowProbe, WindowProbe

# (platform_run_id, scenario_run_id, scenario_id, manifest_fingerprint,
#  parameter_hash, seed): a run scope's identity, the key of `run_scopes`.
Pins = tuple[str, str, str, str, str, int]


def pins_of(pins: dict[str, Any]) -> Pins:
    """A request's pins (validated JSON form) as the statement's pin tuple."""
    return (
        pins["platform_run_id"],
        pins["scenario_run_id"],
        pins["scenario_id"],
        pins["manifest_fingerprint"],
        pins["parameter_hash"],
        int(pins["seed"]),
    )


@dataclass(frozen=True, slots=True)
class ReadProbes:
    """What one snapshot read sums, in the statement's parameter layout.

    `windows` are the request's distinct windows; `cells` the (group id, key id)
    pairs asked for; `group_windows` which windows (indexes into `windows`) each
    group has; `last_from` the exclusive lower bound of each group's
    last-event search, whose upper bound is `as_of_us`.
    """

    windows: list[WindowProbe]
    cells: list[tuple[int, str]]
    group_windows: list[tuple[int, int]]
    last_from: list[tuple[int, int]]
    as_of_us: int
    # v1 feature groups (docs/features.md): one probe per (cell, feature, window).
    feature_probes: list[FeatureProbe] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class FeatureProbe:
    """One v1 feature's window for one key: what the store folds into an Intermediate."""

    group_id: int
    key_id: str
    feature: int  # 0: the group's presence; 1..n: its features in policy order
    window: FeatureWindowProbe
    need_first: bool
    need_last: bool
    last_n: int = 0  # last_n: how many of the newest values to read
    distinct: bool = False  # distinct_count: count the window's distinct values
    sketch: bool = False  # approx_distinct_count: unite the window's sketches
    # count and the numeric kinds: read the window aggregate (n, s, s2, mn, mx) over
    # its tiles. Other kinds leave it out: their read then costs what they use.
    aggregate: bool = True


@dataclass(frozen=True, slots=True)
class SnapshotRow:
    policy_id: str
    revision: str
    content_digest: str
    run_config_digest: str
    scope_id: int | None
    retained_from_us: int | None
    offset_kinds: list[str]
    offsets: list[tuple[int, str]]  # (partition, exclusive-next offset) by partition
    watermark_us: int | None
    # (cell, window) -> (count, canonical decimal text of the sum)
    values: dict[tuple[int, int], tuple[int, str]]
    lasts: dict[int, int | None]  # cell -> last ts_us within its group's longest window
    # v1 features: index into ReadProbes.feature_probes -> the window's intermediates
    feature_values: dict[int, Intermediate] = field(default_factory=dict)
    # The rollout epoch when read (ofp.store.rollout): the server reloads its
    # revisions when it moves.
    epoch: int | None = None
