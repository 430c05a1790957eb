-- Rolling out a policy revision (docs/features.md, "Rolling out a revision").
--
-- The projector applies the groups of three revisions: the active one, the
-- previous one (kept current so a rollback is instant and exact) and the
-- staged one. `epoch` changes whenever that set changes; every batch checks it
-- after taking its lease lock, so no batch commits with a stale set.
ALTER TABLE active_policy
    ADD COLUMN epoch bigint NOT NULL DEFAULT 1,
    ADD COLUMN previous_policy_id text,
    ADD COLUMN previous_revision text,
    ADD FOREIGN KEY (previous_policy_id, previous_revision)
        REFERENCES policies (policy_id, revision);

-- The revision being rolled out: recorded, its new groups being backfilled
-- from the bus; caught_up_at is set once every new group holds the whole history.
CREATE TABLE staged_policy (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    policy_id     text        NOT NULL,
    revision      text        NOT NULL,
    staged_at     timestamptz NOT NULL DEFAULT now(),
    caught_up_at  timestamptz,
    FOREIGN KEY (policy_id, revision) REFERENCES policies (policy_id, revision)
);

-- The staged revision's groups that no maintained revision had: they need the
-- bus's history. Emptied when the backfill completes.
CREATE TABLE backfill_groups (
    group_id  smallint PRIMARY KEY REFERENCES feature_groups (group_id)
);

-- Per partition: from which offset the live projector applies the new groups
-- (recorded under its lease before its first batch that does), and how far the
-- backfill has replayed [start, live_from).
CREATE TABLE backfill_partitions (
    stream          text    NOT NULL,
    partition       integer NOT NULL,
    live_from       numeric,
    reached         numeric NOT NULL DEFAULT 0,
    done            boolean NOT NULL DEFAULT false,
    events_applied  bigint  NOT NULL DEFAULT 0,
    first_event_us  bigint,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, partition)
);

-- The events whose contributions to the new groups were applied, by the live
-- projector or by the backfill: each event reaches the new groups once, even
-- when its copies sit on both sides of a partition's live_from.
CREATE TABLE backfill_seen (
    scope_id  integer NOT NULL,
    event_id  text    COLLATE "C" NOT NULL,
    PRIMARY KEY (scope_id, event_id)
);
