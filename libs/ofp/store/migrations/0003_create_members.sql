-- Live projector replicas per stream (a heartbeat with the lease ttl), so a
-- replica that holds no lease yet still counts in everybody's fair share.
CREATE TABLE projector_members (
    stream      text        NOT NULL,
    owner       text        NOT NULL,
    expires_at  timestamptz NOT NULL,
    PRIMARY KEY (stream, owner)
);
