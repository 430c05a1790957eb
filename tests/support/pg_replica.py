"""The primary/replica pair of the read-replica tests (bench.pg_replica makes it:
the bench's replica figure uses the same code).

Missing PostgreSQL binaries FAIL the test, loudly: the CI machine has them
(/usr/lib/postgresql/15/bin, or OFP_PG_BIN), and a replica test that cannot make
its replica has not passed.
"""

from __future__ import annotations

import pytest

from bench.pg_replica import PostgresBinariesMissingError, ReplicaPair
from bench.pg_replica import make_pair as _make_pair

__all__ = ["ReplicaPair", "make_pair"]


def make_pair() -> ReplicaPair:
    try:
        return _make_pair()
    except PostgresBinariesMissingError as exc:
        pytest.fail(str(exc))
