-- One database serves one stream: feature state, dedupe rows and retention
-- deletes carry no stream column, so a second stream would share dedupe with
-- the first and prune its state. The projector claims the stream at start-up
-- and refuses another. A database that already holds checkpoints of exactly
-- one stream is claimed for it here.
CREATE TABLE bus_stream (
    singleton  boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    stream     text    NOT NULL
);
INSERT INTO bus_stream (singleton, stream)
SELECT true, min(stream) FROM checkpoints HAVING count(DISTINCT stream) = 1;

-- What a (name, version) means: its key type, amount field, event types and
-- windows as first recorded. A later revision that changes any of them under
-- the same (name, version) is refused (a changed meaning needs a new version).
-- NULL for groups recorded before this migration: filled by the next record.
ALTER TABLE feature_groups ADD COLUMN definition jsonb;
