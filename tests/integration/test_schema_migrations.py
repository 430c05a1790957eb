"""Migrations applied to a database that already holds state keep it, and leave
keys and event ids compared as bytes (0004)."""

from __future__ import annotations

import asyncpg

from ofp.store.db import migrate, migration_files

KEYS = ["plain", "ünïcödé", "東京", "Z", "a", "emoji-🙂"]


async def _migrate_to(conn: asyncpg.Connection, last: int) -> None:
    await conn.execute(
        "CREATE TABLE schema_migrations (version integer PRIMARY KEY, name text NOT NULL,"
        " applied_at timestamptz NOT NULL DEFAULT now())"
    )
    for version, name, path in migration_files():
        if version <= last:
            await conn.execute(path.read_text(encoding="utf-8"))
            await conn.execute(
                "INSERT INTO schema_migrations (version, name) VALUES ($1, $2)", version, name
            )


async def _collation(conn: asyncpg.Connection, table: str, column: str) -> str:
    value: str = await conn.fetchval(
        "SELECT coalesce(c.collname, 'default') FROM pg_attribute a"
        " LEFT JOIN pg_collation c ON c.oid = a.attcollation"
        " WHERE a.attrelid = $1::regclass AND a.attname = $2",
        table,
        column,
    )
    return value


async def test_key_collation_migration_keeps_state_and_compares_bytes(fresh_dsn: str) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await _migrate_to(conn, 3)
        assert await _collation(conn, "feature_events", "key_id") == "default"
        for i, key in enumerate(KEYS):
            await conn.execute(
                "INSERT INTO feature_events VALUES (1, 1, $1, $2, 1.5)", key, 1000 + i
            )
            await conn.execute("INSERT INTO feature_tiles VALUES (1, 1, $1, 0, 1, 1.5)", key)
            await conn.execute(
                "INSERT INTO event_dedupe VALUES (1, $1, '\\x00', $2)", f"ev-{key}", 1000 + i
            )

        applied = await migrate(conn)
        assert applied[0] == "0004_alter_key_collation"

        for table, column in (
            ("feature_events", "key_id"),
            ("feature_tiles", "key_id"),
            ("event_dedupe", "event_id"),
        ):
            assert await _collation(conn, table, column) == "C"
        # Lookups go through the rebuilt indexes and find every key, non-ASCII included.
        await conn.execute("SET enable_seqscan = off")
        for key in KEYS:
            assert (
                await conn.fetchval(
                    "SELECT count(*) FROM feature_events WHERE scope_id = 1 AND group_id = 1"
                    " AND key_id = $1 AND ts_us > 0",
                    key,
                )
                == 1
            )
            assert (
                await conn.fetchval(
                    "SELECT event_count FROM feature_tiles WHERE scope_id = 1 AND group_id = 1"
                    " AND key_id = $1 AND tile_start_us = 0",
                    key,
                )
                == 1
            )
            assert (
                await conn.fetchval(
                    "SELECT ts_us FROM event_dedupe WHERE scope_id = 1 AND event_id = $1",
                    f"ev-{key}",
                )
                is not None
            )
        # Index order is code point order, the order Python sorts str in.
        ordered = await conn.fetch(
            "SELECT key_id FROM feature_tiles WHERE scope_id = 1 AND group_id = 1"
            " ORDER BY scope_id, group_id, key_id"
        )
        assert [r["key_id"] for r in ordered] == sorted(KEYS)
        # The primary key still refuses a second (scope, event_id) at its time
        # (migration 0009 put ts_us in the key: a copy at another time is found
        # by the batch's lookup, ofp.store.writes._HELD_DEDUPE).
        try:
            await conn.execute("INSERT INTO event_dedupe VALUES (1, 'ev-東京', '\\x01', $1)",
                               1000 + KEYS.index("東京"))
        except asyncpg.UniqueViolationError:
            pass
        else:
            raise AssertionError("event_dedupe accepted a duplicate event_id")
    finally:
        await conn.close()


async def test_a_database_of_one_stream_is_claimed_for_it_by_migration_0005(
    fresh_dsn: str,
) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await _migrate_to(conn, 4)
        await conn.execute(
            "INSERT INTO checkpoints (stream, partition, offset_kind, next_offset)"
            " VALUES ('s1', 0, 'file_line', 3), ('s1', 1, 'file_line', 0)")
        await conn.execute(
            "INSERT INTO feature_groups (name, version, key_type) VALUES ('g', 'v1', 'k')")
        assert (await migrate(conn))[0] == "0005_one_stream_and_group_meaning"
        assert await conn.fetchval("SELECT stream FROM bus_stream") == "s1"
        # Groups recorded before keep a NULL definition until the next record_policy.
        assert await conn.fetchval("SELECT definition FROM feature_groups") is None
    finally:
        await conn.close()


async def test_a_database_of_several_streams_is_left_unclaimed_by_migration_0005(
    fresh_dsn: str,
) -> None:
    conn = await asyncpg.connect(fresh_dsn)
    try:
        await _migrate_to(conn, 4)
        await conn.execute(
            "INSERT INTO checkpoints (stream, partition, offset_kind, next_offset)"
            " VALUES ('s1', 0, 'file_line', 3), ('s2', 0, 'file_line', 0)")
        await migrate(conn)
        assert await conn.fetchval("SELECT count(*) FROM bus_stream") == 0
    finally:
        await conn.close()
