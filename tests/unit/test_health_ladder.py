"""The health ladder (contract 4.6) as a pure function: every threshold edge, table-driven."""

from __future__ import annotations

from typing import Any

import pytest

from ofp.health import (
    PartitionFacts,
    PolicyFacts,
    State,
    StatusFacts,
    Thresholds,
    assess,
    checkpoint_age_us,
    status_report,
)

S = 1_000_000
NOW = 1_800_000_000 * S  # an arbitrary wall clock, injected
DEFAULT = Thresholds()


def part(p: int = 0, *, applied_ago_s: float = 1, event_ago_s: float | None = 1,
         **extra: Any) -> PartitionFacts:
    applied = NOW - int(applied_ago_s * S)
    return PartitionFacts(
        partition=p,
        offset_kind="file_line",
        next_offset="10",
        updated_us=applied,
        last_applied_us=applied,
        max_event_us=None if event_ago_s is None else NOW - int(event_ago_s * S),
        **extra,
    )


def ladder(partitions: list[PartitionFacts], *, quarantine: int = 0, policy: bool = True,
           thresholds: Thresholds = DEFAULT) -> tuple[str, list[tuple[str, str, int | None]]]:
    h = assess(policy_active=policy, partitions=partitions, quarantine_open=quarantine,
               now_us=NOW, thresholds=thresholds)
    return h.state.name, [(r.code, r.state.name, r.partition) for r in h.reasons]


@pytest.mark.parametrize(
    ("applied_ago_s", "state"),
    [(0, "GREEN"), (119.999, "GREEN"), (120, "AMBER"), (299.999, "AMBER"), (300, "RED"),
     (86400, "RED")],
)
def test_checkpoint_age_moves_the_state_at_each_threshold(
    applied_ago_s: float, state: str
) -> None:
    got, reasons = ladder([part(applied_ago_s=applied_ago_s)])
    assert got == state
    if state != "GREEN":
        assert reasons == [("CHECKPOINT_STALE", state, 0)]


@pytest.mark.parametrize(
    ("event_ago_s", "state"),
    [(0, "GREEN"), (119.999, "GREEN"), (120, "AMBER"), (299.999, "AMBER"), (300, "RED")],
)
def test_watermark_age_moves_the_state_at_each_threshold(event_ago_s: float, state: str) -> None:
    got, reasons = ladder([part(event_ago_s=event_ago_s)])
    assert got == state
    if state != "GREEN":
        assert reasons == [("WATERMARK_STALE", state, None)]


def test_watermark_is_the_minimum_high_mark_over_partitions_that_have_one() -> None:
    # Partition 1 has no valid consumed record: it does not hold the watermark down.
    got, reasons = ladder([part(0, event_ago_s=10), part(1, event_ago_s=200),
                           part(2, event_ago_s=None)])
    assert got == "AMBER" and reasons == [("WATERMARK_STALE", "AMBER", None)]


@pytest.mark.parametrize(("quarantine", "limit", "state"),
                         [(0, 1, "GREEN"), (1, 1, "AMBER"), (4, 5, "GREEN"), (5, 5, "AMBER"),
                          (1000, 0, "GREEN")])
def test_open_quarantine_is_amber_from_the_configured_count(
    quarantine: int, limit: int, state: str
) -> None:
    got, reasons = ladder([part()], quarantine=quarantine,
                          thresholds=Thresholds(quarantine_amber=limit))
    assert got == state
    assert (("QUARANTINE_OPEN", "AMBER", None) in reasons) == (state == "AMBER")


def test_nothing_consumed_yet_is_red_with_every_reason() -> None:
    assert ladder([], policy=False) == (
        "RED", [("NO_ACTIVE_POLICY", "RED", None), ("NO_PARTITIONS", "RED", None)]
    )
    assert ladder([part(event_ago_s=None)]) == ("RED", [("NO_WATERMARK", "RED", None)])


def test_idle_partition_observed_caught_up_is_not_stale() -> None:
    idle = part(applied_ago_s=3600, lag_records=0, lag_observed_us=NOW - 2 * S)
    assert checkpoint_age_us(idle, NOW) == 2 * S
    assert ladder([idle])[0] == "GREEN"
    # An observation that it is behind does not count as "current".
    behind = part(applied_ago_s=3600, lag_records=5, lag_observed_us=NOW - 2 * S)
    assert ladder([behind]) == ("RED", [("CHECKPOINT_STALE", "RED", 0)])


@pytest.mark.parametrize(("lag_ms", "state"),
                         [(119_999, "GREEN"), (120_000, "AMBER"), (300_000, "RED")])
def test_lag_behind_the_bus_tip_uses_the_checkpoint_thresholds(lag_ms: int, state: str) -> None:
    got, reasons = ladder([part(3, lag_ms=lag_ms, lag_observed_us=NOW)])
    assert got == state
    assert (state == "GREEN") == (reasons == [])
    if reasons:
        assert reasons == [("BEHIND_BUS", state, 3)]


def test_closed_shard_is_never_stale() -> None:
    assert ladder([part(applied_ago_s=10_000, closed=True), part(1)])[0] == "GREEN"


def test_state_is_the_worst_reason_and_reasons_are_sorted_worst_first() -> None:
    got, reasons = ladder(
        [part(0, applied_ago_s=130), part(1, applied_ago_s=400, event_ago_s=150)],
        quarantine=2,
    )
    assert got == "RED"
    assert reasons == [
        ("CHECKPOINT_STALE", "RED", 1),
        ("CHECKPOINT_STALE", "AMBER", 0),
        ("QUARANTINE_OPEN", "AMBER", None),
        ("WATERMARK_STALE", "AMBER", None),
    ]


def test_thresholds_are_configurable() -> None:
    strict = Thresholds(checkpoint_amber_s=5, checkpoint_red_s=10,
                        watermark_amber_s=1000, watermark_red_s=2000)
    assert ladder([part(applied_ago_s=6)], thresholds=strict)[0] == "AMBER"
    assert ladder([part(applied_ago_s=10)], thresholds=strict)[0] == "RED"
    assert ladder([part(event_ago_s=1500)], thresholds=strict)[0] == "AMBER"


def test_report_counts_per_partition_and_totals_and_reads_like_the_contract() -> None:
    from ofp.contracts.schemas import first_error

    report = status_report(
        StatusFacts(
            stream="t",
            now_us=NOW,
            policy=PolicyFacts("ofp.features.v0", "r1", "a" * 64, NOW - 60 * S),
            partitions=(part(0), part(1, event_ago_s=130, lag_records=7, lag_observed_us=NOW)),
            counters=((0, "APPLIED", "", 5), (0, "QUARANTINED", "unparseable", 2),
                      (1, "IGNORED", "foreign_run", 3), (1, "QUARANTINED", "unparseable", 1),
                      (9, "APPLIED", "", 4)),  # a partition without a checkpoint row: totals only
            quarantine_open=3,
        ),
        DEFAULT,
        request_id="r-1",
    )
    assert first_error("get_status_response.schema.yaml", report) is None
    assert report["health"]["state"] == "AMBER"
    assert [r["code"] for r in report["health"]["reasons"]] == [
        "QUARANTINE_OPEN", "WATERMARK_STALE"
    ]
    assert report["watermark_age_ms"] == 130_000
    p0, p1 = report["partitions"]
    assert (p0["outcomes"]["applied"], p0["outcomes"]["quarantined"]) == (5, 2)
    assert p1["lag_records"] == 7 and "lag_ms" not in p1
    assert report["totals"] == {
        "applied": 9, "duplicate": 0, "ignored": 3, "quarantined": 3,
        "by_reason": [
            {"outcome": "IGNORED", "reason": "foreign_run", "count": 3},
            {"outcome": "QUARANTINED", "reason": "unparseable", "count": 3},
        ],
    }


def test_state_enum_orders_by_severity() -> None:
    assert State.GREEN < State.AMBER < State.RED


@pytest.mark.parametrize(("parts", "expected_ago_s"), [
    # Open partitions only: the least high mark.
    ([part(0, event_ago_s=5), part(1, event_ago_s=50)], 50),
    # A closed parent with an old high mark leaves the minimum (after a reshard).
    ([part(0, event_ago_s=900, closed=True), part(1, event_ago_s=5),
      part(2, event_ago_s=8)], 8),
    # Open children without a record yet: the largest closed high mark stands.
    ([part(0, event_ago_s=900, closed=True), part(1, event_ago_s=30, closed=True),
      part(2, event_ago_s=None)], 30),
    # Every partition closed: the largest closed high mark.
    ([part(0, event_ago_s=900, closed=True), part(1, event_ago_s=40, closed=True)], 40),
    # Nothing valid anywhere: no watermark.
    ([part(0, event_ago_s=None), part(1, event_ago_s=None, closed=True)], None),
])
def test_the_watermark_is_the_least_open_high_mark(
    parts: list[PartitionFacts], expected_ago_s: int | None
) -> None:
    from ofp.health import watermark_us

    got = watermark_us(parts)
    assert got == (None if expected_ago_s is None else NOW - expected_ago_s * S)


def test_a_closed_parent_does_not_make_the_ladder_red_after_a_reshard() -> None:
    parent = part(0, applied_ago_s=3600, event_ago_s=3600, closed=True)
    state, reasons = ladder([parent, part(1, event_ago_s=2), part(2, event_ago_s=3)])
    assert (state, reasons) == ("GREEN", [])
