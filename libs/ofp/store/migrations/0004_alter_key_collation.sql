-- Keys and event ids compare as bytes (COLLATE "C"): they are identifiers, not
-- words, and every sort OFP asks for is already code point order. A database
-- created with a libc locale (even C.UTF-8) otherwise compares them with
-- strcoll in every index insert and lookup; byte comparison cut PostgreSQL's
-- CPU per ingested event by about 10% (docs/performance.md). The change is
-- binary compatible: no table rewrite, only the indexes on these columns are
-- rebuilt.
ALTER TABLE feature_events ALTER COLUMN key_id TYPE text COLLATE "C";
ALTER TABLE feature_tiles ALTER COLUMN key_id TYPE text COLLATE "C";
ALTER TABLE event_dedupe ALTER COLUMN event_id TYPE text COLLATE "C";
