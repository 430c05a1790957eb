-- The snapshot log (docs/audit.md): every served snapshot (or a sample), as the
-- exact canonical bytes its snapshot_hash covers, with what re-deriving it needs.
-- Range-partitioned by the day it was recorded: the server's recorder creates
-- the partitions ahead and drops those past OFP_SNAPSHOT_LOG_RETENTION_DAYS.
CREATE TABLE snapshot_log (
    recorded_at    timestamptz NOT NULL,
    snapshot_hash  text        NOT NULL,
    -- created_at_utc of the snapshot as served (not hashed), in µs since the epoch.
    created_at_us  bigint      NOT NULL,
    as_of_us       bigint      NOT NULL,
    -- Exactly the bytes whose SHA-256 is snapshot_hash (canonical JSON of the hashed fields).
    canonical      bytea       NOT NULL,
    -- The request's keys, groups and named revision, in request order.
    request        jsonb       NOT NULL
) PARTITION BY RANGE (recorded_at);
CREATE INDEX snapshot_log_hash ON snapshot_log (snapshot_hash);
CREATE INDEX snapshot_log_recorded ON snapshot_log (recorded_at);

-- Creates the partitions of `today` and `days_ahead` days after, drops those of days
-- before today - retention_days; returns the dropped partitions' names. SECURITY
-- DEFINER: the server, which may only INSERT into the log, maintains its partitions
-- through this function alone (docs/operations.md, "Database roles").
CREATE FUNCTION snapshot_log_maintain(today date, days_ahead integer, retention_days integer)
RETURNS SETOF text LANGUAGE plpgsql SECURITY DEFINER SET search_path FROM CURRENT AS $fn$
DECLARE
    d date;
    part text;
BEGIN
    -- Several server processes may roll over midnight at once.
    PERFORM pg_advisory_xact_lock(hashtext('ofp.snapshot_log.partitions'));
    FOR i IN 0..days_ahead LOOP
        d := today + i;
        part := 'snapshot_log_p' || to_char(d, 'YYYYMMDD');
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF snapshot_log FOR VALUES FROM (%L) TO (%L)',
                           part, d::timestamp AT TIME ZONE 'UTC',
                           (d + 1)::timestamp AT TIME ZONE 'UTC');
        END IF;
    END LOOP;
    FOR part IN SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
                WHERE i.inhparent = 'snapshot_log'::regclass
                AND c.relname ~ '^snapshot_log_p[0-9]{8}$' ORDER BY c.relname LOOP
        IF to_date(substr(part, 15), 'YYYYMMDD') < today - retention_days THEN
            EXECUTE format('DROP TABLE %I', part);
            RETURN NEXT part;
        END IF;
    END LOOP;
END
$fn$;
REVOKE ALL ON FUNCTION snapshot_log_maintain(date, integer, integer) FROM PUBLIC;

-- Where each applied event came from on the bus, so the late-data audit can name
-- the events a snapshot's basis did not include. NULL for events applied before.
ALTER TABLE event_dedupe
    ADD COLUMN bus_partition integer,
    ADD COLUMN bus_offset    numeric;
