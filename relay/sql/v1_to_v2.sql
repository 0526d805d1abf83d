-- From version 1 (changes as NOTIFY payloads) to version 2 (the change log).
-- What is published stays; v2_objects.sql follows, then every table is
-- published again with version 2's capture. All in the caller's transaction:
-- a write commits before it (notified) or after it (logged), none in between.
DO $$
DECLARE
    tbl regclass;
BEGIN
    FOR tbl IN SELECT rel FROM relay.publications LOOP
        PERFORM relay.unpublish_triggers(tbl);
    END LOOP;
END
$$;
DROP VIEW relay.published_tables;
DROP FUNCTION relay.publish(regclass, text[], jsonb), relay.unpublish(regclass),
    relay.unpublish_triggers(regclass), relay.table_name(regclass),
    relay.capture(), relay.capture_truncate(), relay.spill(text),
    relay.read_parent(regclass, text, text, text);
DROP TABLE relay.large_changes;
REVOKE ALL ON SCHEMA relay FROM PUBLIC;
COMMENT ON SCHEMA relay IS
    'Nexus Relay trigger layer: what is published, and the log of its changes.';
