-- Removes the Nexus Relay trigger layer, version 2: every trigger and capture
-- function it placed, the log, the schema.
DO $$
DECLARE
    tbl regclass;
BEGIN
    FOR tbl IN SELECT rel FROM relay.publications LOOP
        PERFORM relay.unpublish_triggers(tbl);
    END LOOP;
END
$$;
DROP SCHEMA relay CASCADE;
