-- Day tiles for the two distinct kinds (docs/features.md, "Cost"): a 7-day
-- window of distinct_count or approx_distinct_count reads at most 6 day, 46
-- hour and 118 minute tiles instead of 168 hour and 118 minute ones, so a read
-- no longer grows with the number of hours in the window that hold values.
-- tile_us = 86400000000 in the existing tables: no column changes.
--
-- distinct_count: the day tiles of the state already written, from its hour
-- tiles (a day's distinct values are its hours' distinct values). Tile starts
-- are floored as everywhere else (before 1970 too).
INSERT INTO fv_distinct (scope_id, group_id, key_id, feature, tile_us, tile_start_us, val)
SELECT DISTINCT scope_id, group_id, key_id, feature, 86400000000::bigint,
       tile_start_us - ((tile_start_us % 86400000000) + 86400000000) % 86400000000, val
FROM fv_distinct
WHERE tile_us = 3600000000
ON CONFLICT DO NOTHING;

-- approx_distinct_count: sketches can only be united in Python (DataSketches),
-- not here. A day's sketch is created by the first batch that writes to the
-- day, as the union of the day's hour sketches and the batch's values
-- (ofp.store.writes._new_day_sketches); until then a read unites the day's hour
-- sketches (ofp.store.reads._sketch_sources). Either way a read sees the whole
-- day. Projectors of before this migration write no day tiles: stop them
-- before starting the new ones, as for any migration.
COMMENT ON TABLE fv_sketches IS
    'approx_distinct_count: one HyperLogLog sketch per minute, hour and day tile (0008)';
