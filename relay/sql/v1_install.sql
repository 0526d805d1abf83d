-- Nexus Relay trigger layer, version 1.
--
-- Our `ALTER PUBLICATION ... ADD TABLE`: relay.publish(table, events) puts a row
-- trigger on the table that sends each change to the channel `relay_changes` by
-- NOTIFY. PostgreSQL delivers notifications at commit, in commit order, and
-- drops those of rolled-back transactions ("NOTIFY", PostgreSQL docs), which is
-- exactly the stream the relay needs.
--
-- A change is a compact JSON object:
--   {"v":1,"table":"public.t","op":"INSERT|UPDATE|DELETE","xid":"<xid8>",
--    "ts":"<transaction timestamp>","new":{...},"old":{...},
--    "parents":{"alias":{...}},"old_parents":{"alias":{...}}}
-- `new` is absent for DELETE, `old` for INSERT. `parents` holds the rows that
-- the published foreign keys point at (see relay.publish), for authorization.
-- `old_parents` appears only when an UPDATE changed such a foreign key.
--
-- Other messages on the channel:
--   {"v":1,"table":"...","ref":<id>}   the change is in relay.large_changes
--   {"v":1,"table":"...","op":"TRUNCATE"}
--   {"v":1,"table":"...","op":"OVERFLOW"} changes of this transaction were not sent
-- and on `relay_control`: {"op":"publish"|"unpublish","table":"..."}.

CREATE SCHEMA relay;
COMMENT ON SCHEMA relay IS
    'Nexus Relay trigger layer: what is published, and the trigger that NOTIFYs each change.';

-- The trigger runs as the writer, and writers are any role: they need to reach
-- relay.spill, and nothing else here.
GRANT USAGE ON SCHEMA relay TO PUBLIC;

CREATE TABLE relay.publications (
    rel regclass PRIMARY KEY,
    events text[] NOT NULL
        CHECK (cardinality(events) > 0 AND events <@ ARRAY['INSERT', 'UPDATE', 'DELETE']),
    -- alias -> foreign key column, e.g. {"case": "case_id"}
    parents jsonb NOT NULL DEFAULT '{}',
    published_at timestamptz NOT NULL DEFAULT now()
);

-- NOTIFY payloads must be shorter than 8000 bytes ("NOTIFY", PostgreSQL docs).
-- A larger change is stored here and the notification carries its id. The
-- relay reads it after the commit and deletes old rows. Its role alone may read
-- this table: it holds rows of every tenant.
CREATE TABLE relay.large_changes (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payload text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX large_changes_created_at_idx ON relay.large_changes (created_at);

-- Runs as its owner so that writers need no right on relay.large_changes;
-- callable from the capture trigger only, not by anyone who wants to fill it.
CREATE FUNCTION relay.spill(payload text) RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    stored bigint;
BEGIN
    IF pg_catalog.pg_trigger_depth() = 0 THEN
        RAISE EXCEPTION 'relay.spill is called by the relay''s capture trigger only'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO relay.large_changes (payload) VALUES (payload) RETURNING id INTO stored;
    RETURN stored;
END
$$;
REVOKE ALL ON FUNCTION relay.spill(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION relay.spill(text) TO PUBLIC;

-- The parent row of a change, as JSON text, read with the writer's own rights:
-- a writer cannot make the relay reveal a row it could not read itself. It is
-- read FOR SHARE when the writer may: a concurrent change to the parent (a case
-- given to another vendor) then waits until the writer commits, so the parent
-- sent is the one the writer's transaction commits with, as RLS sees it then.
-- A writer that may not read it (an importer with rights on the child only)
-- sends null: the row is then visible to nobody, and the write still succeeds.
CREATE FUNCTION relay.read_parent(
    ref regclass, locking_query text, plain_query text, parent_key text
) RETURNS text
LANGUAGE plpgsql
AS $$
DECLARE
    found text;
BEGIN
    IF parent_key IS NULL OR NOT pg_catalog.has_table_privilege(ref, 'SELECT') THEN
        RETURN NULL;
    END IF;
    -- FOR SHARE takes UPDATE privilege on some column (PostgreSQL docs, "SELECT").
    IF pg_catalog.has_any_column_privilege(ref, 'UPDATE') THEN
        EXECUTE locking_query INTO found USING parent_key;
    ELSE
        EXECUTE plain_query INTO found USING parent_key;
    END IF;
    RETURN found;
END
$$;

-- The row trigger. It runs as the writer (SECURITY INVOKER). Everything is
-- schema-qualified instead of a SET search_path clause, which would cost a GUC
-- save and restore per row.
--
-- Trigger arguments come in fives per parent: alias, foreign key column,
-- parent table, and two queries that read the parent row as JSON text by its
-- key, given as text in $1: one FOR SHARE, one plain (see relay.read_parent).
CREATE FUNCTION relay.capture() RETURNS trigger
LANGUAGE plpgsql
AS $$
DECLARE
    new_row json;
    old_row json;
    parents text := '';
    old_parents text := '';
    parent text;
    new_key text;
    old_key text;
    i int;
    payload text;
    head text;
    high_water text;
BEGIN
    head := '{"v":1,"table":' || pg_catalog.to_json(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME)::text;

    -- Past the high-water mark of the notification queue (8 GB by default) a
    -- listener has stalled, and a full queue would make commits fail. Keep
    -- writes working: send one small marker instead of the rows (identical
    -- payloads in one transaction are folded into one), and the relay reports
    -- a gap. The mark is the setting relay.queue_high_water (0 to 1, default
    -- 0.5), e.g. ALTER DATABASE ... SET relay.queue_high_water = 0.8.
    -- A value that is not a number from 0 to 1 reads as the default: a
    -- session's odd setting must not make its writes fail.
    high_water := pg_catalog.current_setting('relay.queue_high_water', true);
    IF high_water IS NULL OR high_water !~ '^(0(\.[0-9]{1,6})?|1(\.0{1,6})?)$' THEN
        high_water := '0.5';
    END IF;
    IF pg_catalog.pg_notification_queue_usage() >= high_water::float8 THEN
        PERFORM pg_catalog.pg_notify('relay_changes', head || ',"op":"OVERFLOW"}');
        RETURN NULL;
    END IF;

    IF TG_OP <> 'DELETE' THEN
        new_row := pg_catalog.row_to_json(NEW);
    END IF;
    IF TG_OP <> 'INSERT' THEN
        old_row := pg_catalog.row_to_json(OLD);
    END IF;

    FOR i IN 0 .. TG_NARGS / 5 - 1 LOOP
        new_key := COALESCE(new_row, old_row) ->> TG_ARGV[5 * i + 1];
        parent := relay.read_parent(TG_ARGV[5 * i + 2]::regclass, TG_ARGV[5 * i + 3],
                                    TG_ARGV[5 * i + 4], new_key);
        parents := parents || CASE WHEN parents = '' THEN '' ELSE ',' END
            || pg_catalog.to_json(TG_ARGV[5 * i])::text || ':' || COALESCE(parent, 'null');

        IF TG_OP = 'UPDATE' THEN
            old_key := old_row ->> TG_ARGV[5 * i + 1];
            IF old_key IS DISTINCT FROM new_key THEN
                parent := relay.read_parent(TG_ARGV[5 * i + 2]::regclass, TG_ARGV[5 * i + 3],
                                            TG_ARGV[5 * i + 4], old_key);
                old_parents := old_parents || CASE WHEN old_parents = '' THEN '' ELSE ',' END
                    || pg_catalog.to_json(TG_ARGV[5 * i])::text || ':' || COALESCE(parent, 'null');
            END IF;
        END IF;
    END LOOP;

    payload := head
        || ',"op":"' || TG_OP || '"'
        || ',"xid":"' || pg_catalog.pg_current_xact_id()::text || '"'
        || ',"ts":' || pg_catalog.to_json(pg_catalog.now())::text
        || CASE WHEN new_row IS NULL THEN '' ELSE ',"new":' || new_row::text END
        || CASE WHEN old_row IS NULL THEN '' ELSE ',"old":' || old_row::text END
        || CASE WHEN parents = '' THEN '' ELSE ',"parents":{' || parents || '}' END
        || CASE WHEN old_parents = '' THEN '' ELSE ',"old_parents":{' || old_parents || '}' END
        || '}';

    IF pg_catalog.octet_length(payload) >= 8000 THEN
        payload := head || ',"ref":' || relay.spill(payload)::text || '}';
    END IF;
    PERFORM pg_catalog.pg_notify('relay_changes', payload);
    RETURN NULL;
END
$$;

-- TRUNCATE fires no row trigger: tell the relay, which reports a gap.
CREATE FUNCTION relay.capture_truncate() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_catalog.pg_notify('relay_changes',
        '{"v":1,"table":' || pg_catalog.to_json(TG_TABLE_SCHEMA || '.' || TG_TABLE_NAME)::text
        || ',"op":"TRUNCATE"}');
    RETURN NULL;
END
$$;

-- relay.publish(table, events, parents): start sending the table's changes.
--   events:  any of INSERT, UPDATE, DELETE (default: all three).
--   parents: {"alias": "fk_column"}: for each change, also send the row that
--            this single-column foreign key points at, as parents.alias. The
--            relay uses it to authorize rows whose visibility depends on their
--            parent (RLS policies with EXISTS on the parent).
-- Publishing again replaces the previous settings. Needs the table's owner.
CREATE FUNCTION relay.publish(
    tbl regclass,
    events text[] DEFAULT ARRAY['INSERT', 'UPDATE', 'DELETE'],
    parents jsonb DEFAULT '{}'
) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    wanted text[];
    args text[] := '{}';
    alias text;
    fk_column text;
    ref_table regclass;
    ref_column text;
    ref_type text;
    parent_query text;
BEGIN
    SELECT array_agg(DISTINCT upper(e) ORDER BY upper(e)) INTO wanted FROM unnest(events) AS e;
    IF wanted IS NULL OR NOT wanted <@ ARRAY['INSERT', 'UPDATE', 'DELETE'] THEN
        RAISE EXCEPTION 'relay.publish: events must be some of INSERT, UPDATE, DELETE, got %', events
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF (SELECT relkind FROM pg_class WHERE oid = tbl) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION 'relay.publish: % is not a table', tbl USING ERRCODE = 'wrong_object_type';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_index WHERE indrelid = tbl AND indisprimary) THEN
        RAISE EXCEPTION 'relay.publish: % has no primary key; subscribers need one to tell rows apart', tbl
            USING ERRCODE = 'invalid_table_definition';
    END IF;
    IF jsonb_typeof(parents) <> 'object' THEN
        RAISE EXCEPTION 'relay.publish: parents must be a JSON object {"alias": "fk_column"}'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;

    FOR alias, fk_column IN SELECT key, value FROM jsonb_each_text(parents) ORDER BY key LOOP
        SELECT c.confrelid::regclass, ra.attname, format_type(ra.atttypid, ra.atttypmod)
          INTO ref_table, ref_column, ref_type
          FROM pg_constraint c
          JOIN pg_attribute la ON la.attrelid = c.conrelid AND la.attnum = c.conkey[1]
          JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1]
         WHERE c.conrelid = tbl AND c.contype = 'f' AND cardinality(c.conkey) = 1
           AND la.attname = fk_column
         LIMIT 1;
        IF ref_table IS NULL THEN
            RAISE EXCEPTION 'relay.publish: %.% is not a single-column foreign key', tbl, fk_column
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        parent_query := format('SELECT pg_catalog.row_to_json(p)::text FROM %s AS p WHERE p.%I = $1::%s',
                               ref_table, ref_column, ref_type);
        -- relay.read_parent runs the first (FOR SHARE) if the writer may lock, else the second.
        args := args || alias || fk_column || ref_table::text
            || (parent_query || ' FOR SHARE') || parent_query;
    END LOOP;

    PERFORM relay.unpublish_triggers(tbl);
    EXECUTE format(
        'CREATE TRIGGER relay_capture AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION relay.capture(%s)',
        array_to_string(wanted, ' OR '), tbl,
        (SELECT string_agg(quote_literal(a), ', ') FROM unnest(args) AS a));
    EXECUTE format(
        'CREATE TRIGGER relay_capture_truncate AFTER TRUNCATE ON %s '
        'FOR EACH STATEMENT EXECUTE FUNCTION relay.capture_truncate()', tbl);

    INSERT INTO relay.publications AS p (rel, events, parents)
    VALUES (tbl, wanted, parents)
    ON CONFLICT (rel) DO UPDATE
        SET events = EXCLUDED.events, parents = EXCLUDED.parents, published_at = now();

    PERFORM pg_notify('relay_control',
        json_build_object('op', 'publish', 'table', relay.table_name(tbl))::text);
END
$$;

CREATE FUNCTION relay.table_name(tbl regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.nspname || '.' || c.relname
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl
$$;

CREATE FUNCTION relay.unpublish_triggers(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture_truncate ON %s', tbl);
END
$$;

-- relay.unpublish(table): stop sending the table's changes.
CREATE FUNCTION relay.unpublish(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM relay.unpublish_triggers(tbl);
    DELETE FROM relay.publications WHERE rel = tbl;
    PERFORM pg_notify('relay_control',
        json_build_object('op', 'unpublish', 'table', relay.table_name(tbl))::text);
END
$$;

REVOKE ALL ON FUNCTION relay.publish(regclass, text[], jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION relay.unpublish(regclass) FROM PUBLIC;
REVOKE ALL ON FUNCTION relay.unpublish_triggers(regclass) FROM PUBLIC;

-- What is published, like pg_publication_tables: one row per table, with what
-- the relay needs to know of it (primary key, columns and their types).
CREATE VIEW relay.published_tables AS
SELECT
    n.nspname AS schemaname,
    c.relname AS tablename,
    p.events,
    p.parents,
    ARRAY(
        SELECT a.attname::text
          FROM pg_index i
          JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
          JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
         WHERE i.indrelid = c.oid AND i.indisprimary
         ORDER BY k.ord
    ) AS primary_key,
    (
        SELECT jsonb_agg(jsonb_build_object(
                   'name', a.attname, 'type', format_type(a.atttypid, a.atttypmod),
                   'category', t.typcategory)
                ORDER BY a.attnum)
          FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
         WHERE a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
    ) AS columns,
    p.published_at
FROM relay.publications p
JOIN pg_class c ON c.oid = p.rel
JOIN pg_namespace n ON n.oid = c.relnamespace;
