-- `ofp quarantine replay` (docs/operations.md section 6): a quarantined record is
-- classified again with the current code and policy and applied when it now
-- passes. The row keeps its original stream, partition, offset, reason and
-- detail; the replay columns say when it was last replayed, how often, and
-- what the replay decided (APPLIED, DUPLICATE, IGNORED or QUARANTINED, with
-- the reason and detail of that outcome). A row whose replay outcome is
-- APPLIED, DUPLICATE or IGNORED is resolved: no longer open.
ALTER TABLE quarantine
    ADD COLUMN replays        integer     NOT NULL DEFAULT 0,
    ADD COLUMN replayed_at    timestamptz,
    ADD COLUMN replay_outcome text,
    ADD COLUMN replay_reason  text,
    ADD COLUMN replay_detail  text;
CREATE INDEX quarantine_open ON quarantine (stream, quarantine_id)
    WHERE replay_outcome IS NULL OR replay_outcome = 'QUARANTINED';
