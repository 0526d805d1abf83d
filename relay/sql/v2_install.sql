-- Nexus Relay trigger layer, version 2, on a database without one. The rest
-- of it is v2_objects.sql, which relay.sql.install() appends.
CREATE SCHEMA relay;
COMMENT ON SCHEMA relay IS
    'Nexus Relay trigger layer: what is published, and the log of its changes.';
-- Nobody but its owner (the relay's role) needs anything in here: the capture
-- runs with the owner's rights.
REVOKE ALL ON SCHEMA relay FROM PUBLIC;

CREATE TABLE relay.publications (
    rel regclass PRIMARY KEY,
    events text[] NOT NULL
        CHECK (cardinality(events) > 0 AND events <@ ARRAY['INSERT', 'UPDATE', 'DELETE']),
    -- alias -> foreign key column, e.g. {"case": "case_id"}
    parents jsonb NOT NULL DEFAULT '{}',
    published_at timestamptz NOT NULL DEFAULT now()
);
