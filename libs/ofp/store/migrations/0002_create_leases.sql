-- Partition leases with fencing tokens (docs/contract.md 2.4, 6): any number of projector
-- replicas share a stream; only the holder of a partition's current token can
-- commit a batch for it.

CREATE SEQUENCE lease_tokens;

CREATE TABLE partition_leases (
    stream       text        NOT NULL,
    partition    integer     NOT NULL,
    owner        text,                    -- NULL: free
    token        bigint      NOT NULL,    -- raised on every acquisition
    expires_at   timestamptz NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, partition)
);

-- Every acquisition, for audit: who held which token from when.
CREATE TABLE lease_history (
    stream       text        NOT NULL,
    partition    integer     NOT NULL,
    token        bigint      NOT NULL,
    owner        text        NOT NULL,
    acquired_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, partition, token)
);

-- Every committed batch with the token it was committed under: the proof that
-- no fenced-out owner ever advanced a checkpoint.
CREATE TABLE checkpoint_commits (
    stream         text        NOT NULL,
    partition      integer     NOT NULL,
    token          bigint,
    owner          text,
    from_offset    numeric     NOT NULL,
    next_offset    numeric     NOT NULL,
    records        integer     NOT NULL,
    committed_at   timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX checkpoint_commits_partition ON checkpoint_commits (stream, partition, committed_at);

ALTER TABLE checkpoints
    ADD COLUMN lease_token   bigint,
    -- A closed Kinesis shard (SHARD_END reached and every record applied).
    ADD COLUMN closed        boolean NOT NULL DEFAULT false,
    -- Lineage, so a child shard waits for its parents.
    ADD COLUMN parents       integer[] NOT NULL DEFAULT '{}',
    -- How far behind the bus the reader is, where the bus says (Kinesis MillisBehindLatest).
    ADD COLUMN lag_ms        bigint,
    ADD COLUMN lag_records   bigint,
    ADD COLUMN lag_observed_at timestamptz,
    ADD COLUMN last_applied_at timestamptz;
