"""The one-request statement (`SNAPSHOT_ONE_SQL`, used for a request read alone)
answers exactly what the batch statement (`SNAPSHOTS_SQL`) answers for the same
request, whatever the request shares the batch with."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ofp.contracts.request import validate_request_json
from ofp.model import Pins, ReadProbes
from ofp.snapshot import plan_read
from ofp.store.reads import active_groups, read_snapshots
from tests.support.harness import default_policy, project_once
from tests.support.streams import TOPIC, generate, interesting_as_of, keys_request


async def _read(pool: asyncpg.Pool, doc: dict[str, Any]) -> tuple[Pins, ReadProbes]:
    req = validate_request_json(doc, max_keys=100, max_groups=16)
    plan = plan_read(req, default_policy(), await active_groups(pool))
    p = req.pins
    pins = (p["platform_run_id"], p["scenario_run_id"], p["scenario_id"],
            p["manifest_fingerprint"], p["parameter_hash"], int(p["seed"]))
    return pins, plan.probes


STREAM = generate(31, n_events=400, n_keys=6, n_partitions=2)
AS_OFS = interesting_as_of(STREAM.truth, random.Random(3), n=20)
KEYS = [*STREAM.keys, "404"]
RUNS = ["A", "B", "C"]  # "C" was never seen: its scope is NULL in both statements


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(run=st.sampled_from(RUNS), other_run=st.sampled_from(RUNS),
       chosen=st.lists(st.sampled_from(KEYS), min_size=1, max_size=5, unique=True),
       others=st.lists(st.sampled_from(KEYS), min_size=1, max_size=3, unique=True),
       as_of=st.sampled_from(AS_OFS), other_as_of=st.sampled_from(AS_OFS),
       first=st.booleans())
async def test_one_request_statement_equals_the_batch_statement(
    pool: asyncpg.Pool, bus_root: Path, run: str, other_run: str, chosen: list[str],
    others: list[str], as_of: int, other_as_of: int, first: bool,
) -> None:
    # The fixtures live for the whole test: the stream is projected once.
    if not await pool.fetchval("SELECT count(*) FROM checkpoints"):
        STREAM.write(bus_root)
        await project_once(pool, bus_root)
    mine = await _read(pool, keys_request(run, chosen, as_of))
    other = await _read(pool, keys_request(other_run, others, other_as_of))
    alone = await read_snapshots(pool, stream=TOPIC, reads=[mine])
    batch = await read_snapshots(pool, stream=TOPIC,
                                 reads=[mine, other] if first else [other, mine])
    assert alone is not None and batch is not None
    assert alone[0] == batch[0 if first else 1]
