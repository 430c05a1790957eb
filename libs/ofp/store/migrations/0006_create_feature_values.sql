-- The v1 feature language (docs/features.md). One row per (event, group,
-- feature) the event contributes to: the field's exact value for numeric kinds,
-- its text for first / last. Feature 0 of a group stands for every event the
-- group consumed (the key's presence and latest event).
CREATE TABLE fv_events (
    scope_id   integer  NOT NULL,
    group_id   smallint NOT NULL,
    key_id     text     COLLATE "C" NOT NULL,
    feature    smallint NOT NULL,
    ts_us      bigint   NOT NULL,
    event_id   text     COLLATE "C" NOT NULL,
    num        numeric,
    val        text
);
CREATE INDEX fv_events_key_ts ON fv_events (scope_id, group_id, key_id, feature, ts_us, event_id)
    INCLUDE (num, val);

-- Each feature's intermediates per tile of one minute and of one hour
-- (tile_us): count, exact sum and sum of squares, min, max, and the earliest and
-- latest event by (ts_us, event_id) with its value. A window's middle is read
-- from these; only its two partial minutes from fv_events.
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
);

-- distinct_count: each tile's distinct values, once each. A window counts the
-- distinct values of its tiles and edge events: the cost is bounded by the
-- distinct values per tile, not by the number of events.
CREATE TABLE fv_distinct (
    scope_id       integer  NOT NULL,
    group_id       smallint NOT NULL,
    key_id         text     COLLATE "C" NOT NULL,
    feature        smallint NOT NULL,
    tile_us        bigint   NOT NULL,
    tile_start_us  bigint   NOT NULL,
    val            text     COLLATE "C" NOT NULL,
    PRIMARY KEY (scope_id, group_id, key_id, feature, tile_us, tile_start_us, val)
);

-- approx_distinct_count: one HyperLogLog sketch per tile (ofp.store.sketches).
CREATE TABLE fv_sketches (
    scope_id       integer  NOT NULL,
    group_id       smallint NOT NULL,
    key_id         text     COLLATE "C" NOT NULL,
    feature        smallint NOT NULL,
    tile_us        bigint   NOT NULL,
    tile_start_us  bigint   NOT NULL,
    sketch         bytea    NOT NULL,
    PRIMARY KEY (scope_id, group_id, key_id, feature, tile_us, tile_start_us)
);
