"""What a policy may change, and what one database serves.

- a (name, version) never changes meaning: a later revision that changes any
  part of a group's definition under the same (name, version) is refused,
  naming the field;
- retention must cover the largest window plus lateness, checked at start-up;
- one database serves one stream;
- an answer is always assembled with the revision it was planned with, even
  when the server reloads the policy while the read is in flight.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from ofp.config import ConfigError
from ofp.policy import policy_from_dict
from ofp.store.writes import PolicyConflictError, StreamMismatchError, record_policy
from ofp_projector.projector import Projector
from tests.support.harness import (
    default_policy,
    get_features,
    project_once,
    running_server,
    settings,
)
from tests.support.streams import BASE_US, HOUR_US, generate, keys_request

GROUP = {"name": "g", "version": "v1", "key_type": "flow_id", "amount_field": "amount"}


def _policy(revision: str, **group: Any) -> Any:
    return policy_from_dict({
        "policy_id": "p", "revision": revision, "source_topic": "t",
        "feature_groups": [{**GROUP, **group}],
    })


@pytest.mark.parametrize(("change", "field"), [
    ({"key_type": "card_id"}, "key_type"),
    ({"amount_field": "value"}, "amount_field"),
    ({"event_types": ["txn"]}, "event_types"),
    ({"exclude_event_types": []}, "exclude_event_types"),
    ({"windows": [{"window": "1h", "duration": "1h"}]}, "windows"),
    ({"windows": [{"window": "1h", "duration": "1h", "ttl": "2h"},
                  {"window": "24h", "duration": "24h"},
                  {"window": "7d", "duration": "7d"}]}, "windows"),
])
async def test_a_new_revision_may_not_change_a_groups_meaning(
    pool: asyncpg.Pool, change: dict[str, Any], field: str
) -> None:
    async with pool.acquire() as conn:
        ids = await record_policy(conn, _policy("r1"), None)
        # The same definition under a new revision is fine and keeps the group id.
        assert await record_policy(conn, _policy("r2"), None) == ids
        with pytest.raises(PolicyConflictError) as info:
            await record_policy(conn, _policy("r3", **change), None)
        assert f"recorded with {field} " in str(info.value)
        assert "new version" in str(info.value)
        # Refused as a whole: r3 was not recorded nor activated.
        assert await conn.fetchval("SELECT revision FROM active_policy") == "r2"
        assert await conn.fetchval("SELECT count(*) FROM policies WHERE revision = 'r3'") == 0
        # The changed definition under a new version is fine.
        moved = await record_policy(conn, _policy("r3", version="v2", **change), None)
        assert moved != ids


async def test_a_group_recorded_before_definitions_were_kept_is_checked_from_now_on(
    pool: asyncpg.Pool,
) -> None:
    async with pool.acquire() as conn:
        await record_policy(conn, _policy("r1"), None)
        await conn.execute("UPDATE feature_groups SET definition = NULL")
        await record_policy(conn, _policy("r2"), None)  # fills the definition in
        assert await conn.fetchval("SELECT definition IS NOT NULL FROM feature_groups")
        with pytest.raises(PolicyConflictError, match="amount_field"):
            await record_policy(conn, _policy("r3", amount_field="value"), None)


@pytest.mark.parametrize(("retention_days", "window", "ok"), [
    (30, "30d", False),   # the reported instance: 30-day window, default retention
    (31, "30d", True),
    (7, "7d", False),     # 7 d < 7 d + 2 min
    (8, "7d", True),
    (1, "1h", True),
])
def test_retention_must_cover_the_largest_window_plus_lateness(
    tmp_path: Path, retention_days: int, window: str, ok: bool
) -> None:
    policy = _policy("r1", windows=[{"window": "w", "duration": window}])
    s = settings(tmp_path, retention_days=retention_days)
    if ok:
        s.check_retention(policy)
        return
    with pytest.raises(ConfigError) as info:
        s.check_retention(policy)
    text = str(info.value)
    # Both numbers, named.
    assert f"retention_days {retention_days}" in text
    assert f"largest window ({policy.groups[0].windows[0].duration_s} s)" in text


async def test_the_projector_refuses_to_start_with_too_short_a_retention(
    pool: asyncpg.Pool, bus_root: Path
) -> None:
    policy = _policy("r1", windows=[{"window": "w", "duration": "30d"}])
    projector = Projector(settings(bus_root), pool, policy)
    with pytest.raises(ConfigError, match="retention_days 30"):
        await projector.prepare()
    assert await pool.fetchval("SELECT count(*) FROM policies") == 0


async def test_one_database_serves_one_stream(pool: asyncpg.Pool, bus_root: Path) -> None:
    generate(3, n_events=20, n_partitions=1).write(bus_root)
    await project_once(pool, bus_root)
    other = dataclasses.replace(default_policy(), source_topic="another.topic")
    with pytest.raises(StreamMismatchError, match="serves stream"):
        await project_once(pool, bus_root, policy=other)
    streams = [r["stream"] for r in await pool.fetch("SELECT DISTINCT stream FROM checkpoints")]
    assert streams == ["fp.bus.traffic.fraud.v1"]


async def test_an_answer_is_assembled_with_the_revision_it_was_planned_with(
    pool: asyncpg.Pool, bus_root: Path, fresh_dsn: str
) -> None:
    """The race: a request planned with r1 reads while r2 is activated and the
    server reloads. An answer is given with the revision of the snapshot it read
    (docs/features.md, "Rolling out a revision"): r1's features labelled r1, or
    r2's labelled r2, never r2's label on r1's features; the next request answers
    with r2. r2 here changes
    a window of core_features v1 directly in the database (what the record_policy
    check refuses) so that the two plans differ visibly."""
    generate(11, n_events=60, n_keys=2, n_partitions=1, noise=False).write(bus_root)
    await project_once(pool, bus_root)
    content = json.loads(await pool.fetchval("SELECT content FROM policies"))
    content["revision"] = "r2"
    content["feature_groups"][0]["windows"] = [
        {"window": "week", "duration_s": 604800, "ttl_s": 604800}]
    from ofp.contracts.canonical import digest

    r2_digest = digest(content)
    doc = keys_request("A", ["1"], BASE_US + 30 * HOUR_US)
    async with running_server(pool, bus_root) as (srv, stub):
        first = await get_features(stub, doc)  # the cache holds r1
        assert "event_count_1h" in first["snapshot"]["features"]["flow_id:1"]["core_features"]
        locker = await asyncpg.connect(fresh_dsn)
        try:
            tx = locker.transaction()
            await tx.start()
            await locker.execute("LOCK TABLE feature_tiles IN ACCESS EXCLUSIVE MODE")
            pending = asyncio.ensure_future(get_features(stub, doc))
            for _ in range(200):  # the read is planned with r1 and waits on the lock
                if await pool.fetchval("SELECT count(*) FROM pg_stat_activity WHERE"
                                       " wait_event_type = 'Lock' AND datname ="
                                       " current_database()"):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the read never waited on the lock")
            await pool.execute(
                "INSERT INTO policies (policy_id, revision, content_digest, content,"
                " run_config_digest, run_config) SELECT policy_id, 'r2', $1, $2::jsonb,"
                " run_config_digest, run_config FROM policies",
                r2_digest, json.dumps(content))
            # What `ofp policy activate` does: r1 becomes the previous revision.
            await pool.execute(
                "UPDATE active_policy SET revision = 'r2', previous_policy_id = policy_id,"
                " previous_revision = 'r1', epoch = epoch + 1")
            assert (await srv.service.policies.load(pool)) is not None  # reloaded: r2
            await tx.commit()
            answer = await asyncio.wait_for(pending, 10)
        finally:
            await locker.close()
        after = await get_features(stub, doc)
    # Whichever revision the in-flight answer names (r1 if its read's snapshot
    # predates the switch, r2 if it saw it), its features are that revision's.
    snap = answer["snapshot"]
    values = snap["features"]["flow_id:1"]["core_features"]
    if snap["feature_def_policy_rev"]["revision"] == "r1":
        assert snap["feature_def_policy_rev"]["content_digest"] == first["snapshot"][
            "feature_def_policy_rev"]["content_digest"]
        assert "event_count_1h" in values and "event_count_week" not in values
    else:
        assert snap["feature_def_policy_rev"]["content_digest"] == r2_digest
        assert "event_count_week" in values and "event_count_1h" not in values
    snap = after["snapshot"]
    assert snap["feature_def_policy_rev"]["revision"] == "r2"
    assert snap["feature_def_policy_rev"]["content_digest"] == r2_digest
    values = snap["features"]["flow_id:1"]["core_features"]
    assert "event_count_week" in values and "event_count_1h" not in values
