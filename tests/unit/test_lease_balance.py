"""Fair share and rebalancing of partition leases (pure)."""

from __future__ import annotations

import pytest

from ofp.store.leases import Membership, fair_share, plan_balance


@pytest.mark.parametrize(
    "partitions, members, share",
    [(0, 3, 0), (6, 1, 6), (6, 2, 3), (6, 4, 2), (7, 3, 3), (1, 5, 1), (6, 0, 6)],
)
def test_fair_share_is_the_ceiling_of_partitions_per_live_member(
    partitions: int, members: int, share: int
) -> None:
    assert fair_share(partitions, members) == share


@pytest.mark.parametrize(
    "held, others, partitions, expected",
    [
        (0, {}, 6, (6, 0)),  # alone: take everything
        (6, {"b": 0}, 6, (0, 3)),  # a newcomer is short: give back down to the share
        (3, {"b": 3}, 6, (0, 0)),  # balanced
        (4, {"b": 3}, 7, (0, 0)),  # 4/3 of 7: nobody is below the share of 4
        (3, {"b": 3, "c": 1}, 7, (0, 0)),  # at the share: never release into a vacuum
        (4, {"b": 2, "c": 1}, 7, (0, 1)),
        (1, {"b": 3, "c": 3}, 7, (2, 0)),  # short: take free or expired leases
    ],
)
def test_plan_balance_takes_up_to_the_share_and_gives_back_only_when_others_are_short(
    held: int, others: dict[str, int], partitions: int, expected: tuple[int, int]
) -> None:
    membership = Membership(len(others) + 1, {"a": held, **others})
    assert plan_balance(me="a", held=held, partitions=partitions, membership=membership) == expected
