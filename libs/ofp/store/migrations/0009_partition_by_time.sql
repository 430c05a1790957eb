-- The tables that grow with events are range-partitioned by event time, one
-- partition per 7 days (weeks from Thursday 00:00 UTC, the weekday of the
-- epoch: every partition edge is a multiple of 7 days since 1970-01-01), see
-- docs/architecture.md, "Time partitions". Retention drops whole weeks instead
-- of deleting rows, so the tables and their indexes stay the size of the
-- retained window plus at most one week (docs/operations.md, "Retention").
-- A week, not a day: a read plan holds every partition of every table it
-- reads, and a feature read references these tables about 30 times; with
-- weeks a 7-day window touches two partitions (docs/decisions.md).
--
--   feature_events, fv_events, event_dedupe        by ts_us
--   feature_tiles, fv_tiles, fv_distinct, fv_sketches   by tile_start_us
--
-- Minute, hour and day tiles start inside the week of the events they hold, so
-- one week's partitions hold everything its events write, and a week whose
-- end is at or below the retention floor holds nothing a served window reads.
-- Each table has a DEFAULT partition so no insert ever fails; the projector
-- creates weeks ahead and moves anything the default caught into its week.
--
-- event_dedupe's key becomes (scope_id, event_id, ts_us): a key of a
-- partitioned table must hold the partition column. Copies with the same
-- payload hash have the same ts_utc, so a duplicate meets its original in one
-- partition's key as before; a copy at another time is found by the batch's
-- claim and lookup (event_claims below; docs/decisions.md, "Time-partitioned
-- state").
--
-- Rows move by INSERT ... SELECT into the new tables: the migration rewrites
-- the state once (stop the projectors first, as for any migration).

ALTER TABLE feature_events RENAME TO feature_events_0008;
ALTER INDEX feature_events_key_ts RENAME TO feature_events_0008_key_ts;
ALTER TABLE feature_tiles RENAME TO feature_tiles_0008;
ALTER INDEX feature_tiles_pkey RENAME TO feature_tiles_0008_pkey;
ALTER TABLE event_dedupe RENAME TO event_dedupe_0008;
ALTER INDEX event_dedupe_pkey RENAME TO event_dedupe_0008_pkey;
ALTER TABLE fv_events RENAME TO fv_events_0008;
ALTER INDEX fv_events_key_ts RENAME TO fv_events_0008_key_ts;
ALTER TABLE fv_tiles RENAME TO fv_tiles_0008;
ALTER INDEX fv_tiles_pkey RENAME TO fv_tiles_0008_pkey;
ALTER TABLE fv_distinct RENAME TO fv_distinct_0008;
ALTER INDEX fv_distinct_pkey RENAME TO fv_distinct_0008_pkey;
ALTER TABLE fv_sketches RENAME TO fv_sketches_0008;
ALTER INDEX fv_sketches_pkey RENAME TO fv_sketches_0008_pkey;

CREATE TABLE feature_events (
    scope_id  integer  NOT NULL,
    group_id  smallint NOT NULL,
    key_id    text     COLLATE "C" NOT NULL,
    ts_us     bigint   NOT NULL,
    amount    numeric  NOT NULL
) PARTITION BY RANGE (ts_us);
CREATE INDEX feature_events_key_ts ON feature_events (scope_id, group_id, key_id, ts_us)
    INCLUDE (amount);

CREATE TABLE feature_tiles (
    scope_id       integer  NOT NULL,
    group_id       smallint NOT NULL,
    key_id         text     COLLATE "C" NOT NULL,
    tile_start_us  bigint   NOT NULL,
    event_count    bigint   NOT NULL,
    amount_sum     numeric  NOT NULL,
    PRIMARY KEY (scope_id, group_id, key_id, tile_start_us)
) PARTITION BY RANGE (tile_start_us);

CREATE TABLE event_dedupe (
    scope_id      integer NOT NULL,
    event_id      text    COLLATE "C" NOT NULL,
    payload_hash  bytea   NOT NULL,
    ts_us         bigint  NOT NULL,
    PRIMARY KEY (scope_id, event_id, ts_us)
) PARTITION BY RANGE (ts_us);

CREATE TABLE fv_events (
    scope_id   integer  NOT NULL,
    group_id   smallint NOT NULL,
    key_id     text     COLLATE "C" NOT NULL,
    feature    smallint NOT NULL,
    ts_us      bigint   NOT NULL,
    event_id   text     COLLATE "C" NOT NULL,
    num        numeric,
    val        text
) PARTITION BY RANGE (ts_us);
CREATE INDEX fv_events_key_ts ON fv_events (scope_id, group_id, key_id, feature, ts_us, event_id)
    INCLUDE (num, val);

CREATE TABLE fv_tiles (
    scope_id       integer  NOT NULL,
    group_id       smallint NOT NULL,
    key_id         text     COLLATE "C" NOT NULL,
    feature        smallint NOT NULL,
    tile_us        bigint   NOT NULL,
    tile_start_us  bigint   NOT NULL,
    n              bigint   NOT NULL,
    s              numeric,
    s2             numeric,
    mn             numeric,
    mx             numeric,
    first_ts       bigint   NOT NULL,
    first_eid      text     COLLATE "C" NOT NULL,
    first_val      text,
    last_ts        bigint   NOT NULL,
    last_eid       text     COLLATE "C" NOT NULL,
    last_val       text,
    PRIMARY KEY (scope_id, group_id, key_id, feature, tile_us, tile_start_us)
) PARTITION BY RANGE (tile_start_us);

CREATE TABLE fv_distinct (
    scope_id       integer  NOT NULL,
    group_id       smallint NOT NULL,
    key_id         text     COLLATE "C" NOT NULL,
    feature        smallint NOT NULL,
    tile_us        bigint   NOT NULL,
    tile_start_us  bigint   NOT NULL,
    val            text     COLLATE "C" NOT NULL,
    PRIMARY KEY (scope_id, group_id, key_id, feature, tile_us, tile_start_us, val)
) PARTITION BY RANGE (tile_start_us);

CREATE TABLE fv_sketches (
    scope_id       integer  NOT NULL,
    group_id       smallint NOT NULL,
    key_id         text     COLLATE "C" NOT NULL,
    feature        smallint NOT NULL,
    tile_us        bigint   NOT NULL,
    tile_start_us  bigint   NOT NULL,
    sketch         bytea    NOT NULL,
    PRIMARY KEY (scope_id, group_id, key_id, feature, tile_us, tile_start_us)
) PARTITION BY RANGE (tile_start_us);
COMMENT ON TABLE fv_sketches IS
    'approx_distinct_count: one HyperLogLog sketch per minute, hour and day tile (0008)';

CREATE TABLE feature_events_default PARTITION OF feature_events DEFAULT;
CREATE TABLE feature_tiles_default PARTITION OF feature_tiles DEFAULT;
CREATE TABLE event_dedupe_default PARTITION OF event_dedupe DEFAULT;
CREATE TABLE fv_events_default PARTITION OF fv_events DEFAULT;
CREATE TABLE fv_tiles_default PARTITION OF fv_tiles DEFAULT;
CREATE TABLE fv_distinct_default PARTITION OF fv_distinct DEFAULT;
CREATE TABLE fv_sketches_default PARTITION OF fv_sketches DEFAULT;

-- A batch's event ids while it is in flight: each batch inserts its (scope,
-- event_id) pairs here and deletes them again in the same transaction, so a
-- concurrent batch holding the same id waits for it to end (the unique index
-- waits for the inserter) and then sees its dedupe row, whatever partition
-- that row went to. Never holds a committed row; unlogged: nothing to recover.
CREATE UNLOGGED TABLE event_claims (
    scope_id  integer NOT NULL,
    event_id  text    COLLATE "C" NOT NULL,
    PRIMARY KEY (scope_id, event_id)
);

-- The time-partitioned tables and their partition column.
CREATE FUNCTION ofp_time_partitioned() RETURNS TABLE (tbl text, col text)
LANGUAGE sql IMMUTABLE AS $$
    VALUES ('feature_events', 'ts_us'), ('event_dedupe', 'ts_us'), ('fv_events', 'ts_us'),
           ('feature_tiles', 'tile_start_us'), ('fv_tiles', 'tile_start_us'),
           ('fv_distinct', 'tile_start_us'), ('fv_sketches', 'tile_start_us')
$$;

-- <table>_pYYYYMMDD: the partition of the week starting at p_start (µs, UTC).
CREATE FUNCTION ofp_time_partition_name(p_table text, p_start bigint) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT p_table || '_p'
        || to_char(timestamp '1970-01-01' + p_start * interval '1 microsecond', 'YYYYMMDD')
$$;

-- Every week partition with its bounds [lo, hi) (the default partitions excluded).
CREATE FUNCTION ofp_time_partitions()
RETURNS TABLE (parent text, name text, lo bigint, hi bigint)
LANGUAGE sql STABLE SET search_path FROM CURRENT AS $$
    SELECT t.tbl, c.relname::text,
           (regexp_match(b.bound, 'FROM \(''?(-?[0-9]+)''?\)'))[1]::bigint,
           (regexp_match(b.bound, 'TO \(''?(-?[0-9]+)''?\)'))[1]::bigint
    FROM ofp_time_partitioned() t
    JOIN pg_inherits i ON i.inhparent = to_regclass(t.tbl)
    JOIN pg_class c ON c.oid = i.inhrelid
    CROSS JOIN LATERAL (SELECT pg_get_expr(c.relpartbound, c.oid) AS bound) b
    WHERE b.bound <> 'DEFAULT'
$$;

-- Create the week starting at p_start in every time-partitioned table that
-- lacks it; returns how many were created. Rows the default partition caught
-- for that week move into the new partition first. SECURITY DEFINER: the
-- projector's role may not run DDL (docs/operations.md, "Database roles");
-- this function can only add a whole week. The caller bounds its lock waits
-- with lock_timeout (ofp.store.timeparts).
CREATE FUNCTION ofp_create_time_partitions(p_start bigint) RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    t record;
    v_end bigint := p_start + 604800000000;
    v_name text;
    v_held boolean;
    v_created integer := 0;
BEGIN
    IF p_start % 604800000000 <> 0 THEN
        RAISE EXCEPTION 'time partition start % is not a multiple of 7 days since the epoch', p_start;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('ofp.time_partitions'));
    FOR t IN SELECT * FROM ofp_time_partitioned() LOOP
        v_name := ofp_time_partition_name(t.tbl, p_start);
        CONTINUE WHEN to_regclass(v_name) IS NOT NULL;
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE %I >= %s AND %I < %s)',
                       t.tbl || '_default', t.col, p_start, t.col, v_end) INTO v_held;
        IF v_held THEN
            EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', v_name, t.tbl);
            EXECUTE format('WITH moved AS (DELETE FROM %I WHERE %I >= %s AND %I < %s'
                           ' RETURNING *) INSERT INTO %I SELECT * FROM moved',
                           t.tbl || '_default', t.col, p_start, t.col, v_end, v_name);
            EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES FROM (%s) TO (%s)',
                           t.tbl, v_name, p_start, v_end);
        ELSE
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES FROM (%s) TO (%s)',
                           v_name, t.tbl, p_start, v_end);
        END IF;
        v_created := v_created + 1;
    END LOOP;
    RETURN v_created;
END
$$;

-- Drop the partitions of the oldest week that ends at or below the retention
-- floor (every instant it covers is at or below it, so no answered window
-- reads it); returns how many were dropped (0: nothing left to drop). The
-- floor is read here, never passed in: whoever calls this can only drop what
-- retention already gave up.
CREATE FUNCTION ofp_drop_time_partitions() RETURNS integer
LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $$
DECLARE
    v_floor bigint;
    v_start bigint;
    p record;
    v_dropped integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ofp.time_partitions'));
    SELECT r.retained_from_us INTO v_floor FROM retention r JOIN bus_stream s USING (stream);
    IF v_floor IS NULL THEN
        RETURN 0;
    END IF;
    SELECT min(lo) INTO v_start FROM ofp_time_partitions() WHERE hi <= v_floor + 1;
    IF v_start IS NULL THEN
        RETURN 0;
    END IF;
    FOR p IN SELECT name FROM ofp_time_partitions() WHERE lo = v_start AND hi <= v_floor + 1
    LOOP
        EXECUTE format('DROP TABLE %I', p.name);
        v_dropped := v_dropped + 1;
    END LOOP;
    RETURN v_dropped;
END
$$;

-- The weeks the existing state covers get their partitions, then the rows move.
DO $$
DECLARE
    d bigint;
BEGIN
    FOR d IN
        SELECT DISTINCT x - ((x % 604800000000) + 604800000000) % 604800000000 FROM (
            SELECT DISTINCT ts_us AS x FROM feature_events_0008
            UNION SELECT ts_us FROM event_dedupe_0008
            UNION SELECT ts_us FROM fv_events_0008
            UNION SELECT tile_start_us FROM feature_tiles_0008
            UNION SELECT tile_start_us FROM fv_tiles_0008
            UNION SELECT tile_start_us FROM fv_distinct_0008
            UNION SELECT tile_start_us FROM fv_sketches_0008) s
    LOOP
        PERFORM ofp_create_time_partitions(d);
    END LOOP;
END
$$;

INSERT INTO feature_events (scope_id, group_id, key_id, ts_us, amount)
    SELECT scope_id, group_id, key_id, ts_us, amount FROM feature_events_0008;
INSERT INTO feature_tiles (scope_id, group_id, key_id, tile_start_us, event_count, amount_sum)
    SELECT scope_id, group_id, key_id, tile_start_us, event_count, amount_sum
    FROM feature_tiles_0008;
INSERT INTO event_dedupe (scope_id, event_id, payload_hash, ts_us)
    SELECT scope_id, event_id, payload_hash, ts_us FROM event_dedupe_0008;
INSERT INTO fv_events (scope_id, group_id, key_id, feature, ts_us, event_id, num, val)
    SELECT scope_id, group_id, key_id, feature, ts_us, event_id, num, val FROM fv_events_0008;
INSERT INTO fv_tiles (scope_id, group_id, key_id, feature, tile_us, tile_start_us, n, s, s2,
                      mn, mx, first_ts, first_eid, first_val, last_ts, last_eid, last_val)
    SELECT scope_id, group_id, key_id, feature, tile_us, tile_start_us, n, s, s2,
           mn, mx, first_ts, first_eid, first_val, last_ts, last_eid, last_val
    FROM fv_tiles_0008;
INSERT INTO fv_distinct (scope_id, group_id, key_id, feature, tile_us, tile_start_us, val)
    SELECT scope_id, group_id, key_id, feature, tile_us, tile_start_us, val FROM fv_distinct_0008;
INSERT INTO fv_sketches (scope_id, group_id, key_id, feature, tile_us, tile_start_us, sketch)
    SELECT scope_id, group_id, key_id, feature, tile_us, tile_start_us, sketch
    FROM fv_sketches_0008;

DROP TABLE feature_events_0008, feature_tiles_0008, event_dedupe_0008, fv_events_0008,
    fv_tiles_0008, fv_distinct_0008, fv_sketches_0008;
