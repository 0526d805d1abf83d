-- Removes the Nexus Relay trigger layer, version 1, and every trigger it placed.
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
