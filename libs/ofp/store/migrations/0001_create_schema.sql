-- OFP store, version 1.
-- Time is stored as bigint microseconds since the Unix epoch (UTC): exact, and
-- window arithmetic stays integer arithmetic. Amounts are numeric: exact.

CREATE TABLE policies (
    policy_id          text        NOT NULL,
    revision           text        NOT NULL,
    content_digest     text        NOT NULL,
    content            jsonb       NOT NULL,
    run_config_digest  text        NOT NULL,
    run_config         jsonb       NOT NULL,
    recorded_at        timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (policy_id, revision)
);

-- The revision the server serves; one row.
CREATE TABLE active_policy (
    singleton     boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    policy_id     text        NOT NULL,
    revision      text        NOT NULL,
    activated_at  timestamptz NOT NULL DEFAULT now(),
    FOREIGN KEY (policy_id, revision) REFERENCES policies (policy_id, revision)
);

-- A (name, version) never changes meaning, so its id is stable across revisions.
CREATE TABLE feature_groups (
    group_id   smallint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name       text NOT NULL,
    version    text NOT NULL,
    key_type   text NOT NULL,
    UNIQUE (name, version)
);

-- A run scope is the six ContextPins; state never crosses scopes.
CREATE TABLE run_scopes (
    scope_id              integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    platform_run_id       text          NOT NULL,
    scenario_run_id       text          NOT NULL,
    scenario_id           text          NOT NULL,
    manifest_fingerprint  text          NOT NULL,
    parameter_hash        text          NOT NULL,
    seed                  numeric(20,0) NOT NULL,
    first_seen_at         timestamptz   NOT NULL DEFAULT now(),
    UNIQUE (platform_run_id, scenario_run_id, scenario_id, manifest_fingerprint, parameter_hash, seed)
);

-- Event-level contributions: exact window edges. One row per (event, group).
CREATE TABLE feature_events (
    scope_id  integer  NOT NULL,
    group_id  smallint NOT NULL,
    key_id    text     NOT NULL,
    ts_us     bigint   NOT NULL,
    amount    numeric  NOT NULL
);
CREATE INDEX feature_events_key_ts ON feature_events (scope_id, group_id, key_id, ts_us) INCLUDE (amount);

-- Partial aggregates per fixed tile of event time: the middle of a window is
-- read from tiles, only its two edges from feature_events.
CREATE TABLE feature_tiles (
    scope_id       integer  NOT NULL,
    group_id       smallint NOT NULL,
    key_id         text     NOT NULL,
    tile_start_us  bigint   NOT NULL,
    event_count    bigint   NOT NULL,
    amount_sum     numeric  NOT NULL,
    PRIMARY KEY (scope_id, group_id, key_id, tile_start_us)
);

-- Semantic dedupe: an event_id is applied at most once per scope.
CREATE TABLE event_dedupe (
    scope_id      integer NOT NULL,
    event_id      text    NOT NULL,
    payload_hash  bytea   NOT NULL,
    ts_us         bigint  NOT NULL,
    PRIMARY KEY (scope_id, event_id)
);

-- Exclusive-next checkpoints, and the per-partition event-time high mark the
-- watermark is computed from (docs/contract.md 2.5, 4.3).
CREATE TABLE checkpoints (
    stream         text        NOT NULL,
    partition      integer     NOT NULL CHECK (partition >= 0),
    offset_kind    text        NOT NULL,
    next_offset    numeric     NOT NULL CHECK (next_offset >= 0),
    max_event_us   bigint,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stream, partition)
);

CREATE TABLE quarantine (
    quarantine_id   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream          text        NOT NULL,
    partition       integer     NOT NULL,
    record_offset   numeric     NOT NULL,
    reason          text        NOT NULL,
    detail          text        NOT NULL,
    event_id        text,
    raw             bytea       NOT NULL,
    quarantined_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream, partition, record_offset)
);

CREATE TABLE outcome_counters (
    stream     text    NOT NULL,
    partition  integer NOT NULL,
    outcome    text    NOT NULL,
    reason     text    NOT NULL DEFAULT '',
    n          bigint  NOT NULL,
    PRIMARY KEY (stream, partition, outcome, reason)
);

-- Event time at or below retained_from_us may have been removed; an as-of
-- whose largest window reaches below it is refused.
CREATE TABLE retention (
    stream            text   PRIMARY KEY,
    retained_from_us  bigint NOT NULL
);
