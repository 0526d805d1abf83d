-- Nexus Relay trigger layer, version 2: the change log.
--
-- Every change of a published table is written, in the writer's transaction,
-- to the log relay.changes; relays read the log. NOTIFY carries no data: it is
-- a doorbell (channel relay_wake) that some transactions ring, and relays also
-- read the log a few times a second without it. (Version 1 sent each change as
-- a NOTIFY payload: every notifying commit took PostgreSQL's global NOTIFY
-- lock, a stalled listener filled the queue until writers failed, any login
-- could LISTEN to every tenant's rows or forge a change, and history lived
-- only in the relay's memory. docs/architecture.md, "The change log".)
--
-- Order and completeness, as in PgQ (Skype's queue): relays take "ticks",
-- snapshots of which transactions have committed (pg_current_snapshot()),
-- one at a time, in order. The batch of tick N holds the changes of the
-- transactions visible in tick N's snapshot and not in tick N-1's: every
-- committed change is in exactly one batch, whenever its transaction started
-- or however long it ran, and a transaction left open holds back no one else.
-- Within a batch, changes are in the order of relay.change_seq; two changes of
-- one row (or of a row and its parent, read FOR SHARE) are serialized by the
-- row lock, so their sequence numbers are in commit order. A position is
-- (tick, seq): the same for every relay reading this database.
--
-- Nobody reads or writes the log but its owner (the relay's role) and the
-- capture functions, which run as that owner (SECURITY DEFINER): writers need
-- no right on it, cannot forge a change, and a LISTEN hears only doorbells.

-- Advisory locks of the class 1380273241 ("RELY"): (…, 1) one tick at a time,
-- (…, 2) one pruner at a time; of the class 1380273242: (…, 0) the doorbell.

-- This log's identity: positions of another log (a reinstall) are not ours.
CREATE TABLE relay.log (
    id text NOT NULL DEFAULT substr(md5(random()::text || clock_timestamp()::text), 1, 8),
    installed_at timestamptz NOT NULL DEFAULT now(),
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton)
);
INSERT INTO relay.log DEFAULT VALUES;

-- NO CYCLE, CACHE 1 (the default): numbers are handed out in call order
-- across sessions, which the order argument above needs.
CREATE SEQUENCE relay.change_seq NO CYCLE;

CREATE TABLE relay.changes (
    seq bigint NOT NULL DEFAULT nextval('relay.change_seq'),
    xid xid8 NOT NULL DEFAULT pg_current_xact_id(),  -- the top-level transaction
    rel oid NOT NULL,                                -- the published table
    op text NOT NULL,                                -- INSERT, UPDATE, DELETE, TRUNCATE
    key text,                                        -- the primary key, as text
    new json,
    old json,
    parents json,                                    -- {"alias": parent row} of new (or old)
    old_parents json,                                -- of old, when a foreign key changed
    at timestamptz NOT NULL DEFAULT now()            -- the transaction's timestamp
);
CREATE INDEX changes_xid_idx ON relay.changes (xid);
-- A queue: rows leave in the order they came (relay.prune, in batches).
-- Vacuum it by the number of dead rows, not by a fraction of a table that
-- stays about the same size.
ALTER TABLE relay.changes SET (
    autovacuum_vacuum_scale_factor = 0,
    autovacuum_vacuum_threshold = 20000,
    autovacuum_vacuum_insert_scale_factor = 0,
    autovacuum_vacuum_insert_threshold = 100000
);

CREATE TABLE relay.ticks (
    id bigint PRIMARY KEY,
    snapshot pg_snapshot NOT NULL,
    seq_at bigint NOT NULL,  -- relay.change_seq's last value when the snapshot was taken
    at timestamptz NOT NULL DEFAULT clock_timestamp()
);

REVOKE ALL ON relay.log, relay.changes, relay.ticks FROM PUBLIC;
REVOKE ALL ON SEQUENCE relay.change_seq FROM PUBLIC;

-- The first tick: the batch of the next one starts here.
INSERT INTO relay.ticks (id, snapshot, seq_at)
SELECT 1, pg_current_snapshot(), s.last_value FROM relay.change_seq s;

-- relay.tick(): take a tick if the log has news, and return the newest tick's
-- id. Called by every relay when the doorbell rings and a few times a second
-- without it. Ticks are taken one at a time (an advisory lock held to commit),
-- so that each snapshot is taken after the previous tick committed. A tick is
-- due when a committed change is in no batch yet: one whose transaction the
-- last tick's snapshot did not see as committed, because it was in progress
-- (listed in the snapshot) or not yet known to it (at or past its xmax, which
-- is "the last completed transaction, plus one": a transaction already running
-- but past it is listed nowhere).
CREATE FUNCTION relay.tick() RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan  -- a generic plan of these probes scans the log
AS $$
DECLARE
    last relay.ticks;
    last_xmax xid8;
    last_running xid8[];
    seq_now bigint;
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        -- Each statement must see what committed before it: the lock, then the snapshot.
        RAISE EXCEPTION 'relay.tick() runs in READ COMMITTED, not %',
            current_setting('transaction_isolation');
    END IF;
    PERFORM pg_advisory_xact_lock(1380273241, 1);
    SELECT * INTO last FROM relay.ticks ORDER BY id DESC LIMIT 1;
    last_xmax := pg_snapshot_xmax(last.snapshot);
    last_running := ARRAY(SELECT pg_snapshot_xip(last.snapshot));
    -- Probes of the index on xid (a query with OR, or a generic plan of
    -- "xid >= $1", could scan the whole log): the newest committed xid, and
    -- each transaction that was in progress.
    IF NOT (SELECT max(c.xid) >= last_xmax FROM relay.changes c) IS TRUE
       AND NOT EXISTS (SELECT FROM relay.changes c WHERE c.xid = ANY (last_running)) THEN
        RETURN last.id;  -- nothing committed that no batch has
    END IF;
    SELECT s.last_value INTO seq_now FROM relay.change_seq s;
    INSERT INTO relay.ticks (id, snapshot, seq_at)
    VALUES (last.id + 1, pg_current_snapshot(), seq_now);
    RETURN last.id + 1;
END
$$;

-- relay.prune(max_age, max_bytes): delete what the log no longer keeps, a
-- batch at a time; returns the rows deleted (call again while it is not 0).
-- The cutoff is the newest tick older than max_age, or later if the log holds
-- more than about max_bytes (rows since the oldest tick, times a sampled row
-- size: cheap, and approximate). What the cutoff's snapshot saw as finished is
-- deleted, then the ticks before it: a change still in progress at the cutoff
-- stays, however old, and the cutoff stays too (the next batch starts there).
CREATE FUNCTION relay.prune(max_age interval, max_bytes bigint, batch integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
SET plan_cache_mode = force_custom_plan  -- "xid < $1" must use the index, whatever $1
AS $$
DECLARE
    newest relay.ticks;
    oldest relay.ticks;
    cutoff relay.ticks;
    by_size relay.ticks;
    row_bytes float8;
    deleted bigint;
BEGIN
    IF NOT pg_try_advisory_xact_lock(1380273241, 2) THEN
        RETURN 0;  -- another relay is pruning
    END IF;
    SELECT * INTO newest FROM relay.ticks ORDER BY id DESC LIMIT 1;
    SELECT * INTO oldest FROM relay.ticks ORDER BY id LIMIT 1;
    SELECT * INTO cutoff FROM relay.ticks
     WHERE at < clock_timestamp() - max_age AND id < newest.id ORDER BY id DESC LIMIT 1;

    SELECT avg(pg_column_size(c.*)) INTO row_bytes FROM relay.changes c TABLESAMPLE SYSTEM (1);
    IF row_bytes IS NULL THEN
        SELECT avg(pg_column_size(c.*)) INTO row_bytes
          FROM (SELECT * FROM relay.changes LIMIT 100) c;
    END IF;
    IF (newest.seq_at - oldest.seq_at) * COALESCE(row_bytes, 0) > max_bytes THEN
        SELECT * INTO by_size FROM relay.ticks
         WHERE seq_at <= newest.seq_at - max_bytes / row_bytes AND id < newest.id
         ORDER BY id DESC LIMIT 1;
        IF by_size.id > cutoff.id OR cutoff.id IS NULL THEN
            cutoff := by_size;
        END IF;
    END IF;
    IF cutoff.id IS NULL THEN
        RETURN 0;
    END IF;

    DELETE FROM relay.changes WHERE ctid = ANY (ARRAY(
        SELECT ctid FROM relay.changes
         WHERE xid < pg_snapshot_xmin(cutoff.snapshot) LIMIT batch));
    GET DIAGNOSTICS deleted = ROW_COUNT;
    IF deleted < batch THEN
        DELETE FROM relay.ticks WHERE id < cutoff.id;
    END IF;
    RETURN deleted;
END
$$;

REVOKE ALL ON FUNCTION relay.tick(), relay.prune(interval, bigint, integer) FROM PUBLIC;

-- The doorbell. A relay that is reading busily (it read changes a moment ago
-- and reads again every few milliseconds) holds the advisory lock
-- (1380273242, 0) in share mode: then nobody rings. Otherwise the first writer
-- to take it exclusively rings, and holds it to commit: concurrent writers do
-- not ring too. So at most one transaction notifies at a time, and none while
-- relays read anyway (each notifying commit takes PostgreSQL's global NOTIFY
-- lock: the bell must not serialize writers). A change of a transaction that
-- did not ring is read by a relay's next read: a few milliseconds while it is
-- busy, RELAY_POLL_INTERVAL_S when idle. Never past half of the notification
-- queue (a relay that stopped reading must not make writers fail), nor when
-- relay.doorbell is 'off'. The capture functions ring the same way, inline.
CREATE FUNCTION relay.ring() RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF pg_try_advisory_xact_lock(1380273242, 0)
       AND pg_notification_queue_usage() < 0.5
       AND current_setting('relay.doorbell', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('relay_wake', '');
    END IF;
END
$$;
REVOKE ALL ON FUNCTION relay.ring() FROM PUBLIC;

-- TRUNCATE fires no row trigger: a marker in the log, and the relay tells the
-- table's subscribers to re-fetch.
CREATE FUNCTION relay.capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    INSERT INTO relay.changes (rel, op) VALUES (TG_RELID, 'TRUNCATE');
    PERFORM relay.ring();
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION relay.capture_truncate() FROM PUBLIC;

-- Revocation: relay.revoke(subject, reason) ends a user's access through the
-- relays at once, instead of when their token expires (a user moved to another
-- tenant, signed out, deactivated). Every relay closes the connections of that
-- subject (a token's sub) and refuses the tokens issued (iat) before the
-- revoking transaction committed, until the user comes with a newer one.
-- relay.revocations keeps the newest revocation of each subject (a relay
-- loads it when it connects); a marker in the log tells the relays, in order
-- with the changes: no change committed after the revocation reaches a
-- connection of the revoked tokens.
CREATE TABLE relay.revocations (
    subject text PRIMARY KEY,
    revoked_at timestamptz NOT NULL,  -- at the revoking transaction's commit
    reason text NOT NULL
);
REVOKE ALL ON relay.revocations FROM PUBLIC;

CREATE FUNCTION relay.revoke(subject text, reason text DEFAULT '') RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    IF revoke.subject IS NULL OR revoke.subject = '' THEN
        RAISE EXCEPTION 'relay.revoke: the subject (a token''s sub) is empty'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- Deleted and inserted (not updated): the trigger below fires on INSERT.
    DELETE FROM relay.revocations r WHERE r.subject = revoke.subject;
    INSERT INTO relay.revocations (subject, revoked_at, reason)
    VALUES (revoke.subject, clock_timestamp(), COALESCE(revoke.reason, ''));
END
$$;
REVOKE ALL ON FUNCTION relay.revoke(text, text) FROM PUBLIC;

-- At commit (a deferred trigger), not when relay.revoke was called: a token
-- issued while the revoking transaction ran (with claims read before it
-- committed) is refused too.
CREATE FUNCTION relay.revocation_at_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    at timestamptz := clock_timestamp();
BEGIN
    UPDATE relay.revocations r SET revoked_at = at WHERE r.subject = NEW.subject;
    INSERT INTO relay.changes (rel, op, key, new)
    VALUES ('relay.revocations'::regclass, 'REVOKE', NEW.subject,
            json_build_object('subject', NEW.subject, 'reason', NEW.reason,
                              'revoked_at', extract(epoch FROM at)));
    PERFORM relay.ring();
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION relay.revocation_at_commit() FROM PUBLIC;
CREATE CONSTRAINT TRIGGER revocation_at_commit AFTER INSERT ON relay.revocations
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION relay.revocation_at_commit();

CREATE FUNCTION relay.table_name(tbl regclass) RETURNS text
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT n.nspname || '.' || c.relname
      FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
     WHERE c.oid = tbl
$$;

-- Whether reader (the owner of schema relay, whose rights the capture
-- functions have) reads every row of tbl, and may lock it FOR SHARE: neither
-- row-level security nor a missing privilege may hide a parent from them.
CREATE FUNCTION relay.reads_every_row(tbl regclass, reader regrole) RETURNS boolean
LANGUAGE sql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT pg_catalog.has_table_privilege(reader, tbl, 'SELECT')
       -- FOR SHARE takes UPDATE privilege on some column (PostgreSQL docs, "SELECT").
       AND pg_catalog.has_any_column_privilege(reader, tbl, 'UPDATE')
       AND (r.rolsuper OR r.rolbypassrls OR NOT c.relrowsecurity
            OR (pg_catalog.pg_has_role(reader, c.relowner, 'USAGE') AND NOT c.relforcerowsecurity))
      FROM pg_roles r, pg_class c
     WHERE r.oid = reader AND c.oid = tbl
$$;

-- The capture function of one table, generated by relay.publish: static SQL,
-- whose plans PL/pgSQL keeps, instead of a generic function that builds
-- queries per row. It runs as the owner of schema relay: the log is theirs,
-- and parents are read with every row visible (they never leave the log but
-- for the relay's authorization, which then matches RLS for every reader). A
-- parent is read FOR SHARE: a concurrent change of it (a case given to another
-- vendor) waits for this transaction, so the parent logged is the one this
-- transaction commits with. An UPDATE that changes the primary key is logged
-- as a DELETE of the old key and an INSERT of the new one.
CREATE FUNCTION relay.capture_source(tbl regclass, parents jsonb) RETURNS text
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    pk text[];
    new_key text;
    old_key text;
    alias text;
    fk_column text;
    ref_table regclass;
    ref_column text;
    declarations text := '';
    read_new text := '';
    read_old text := '';
    new_parents text;
    old_parents text;
    i integer := 0;
BEGIN
    SELECT array_agg(a.attname::text ORDER BY k.ord) INTO pk
      FROM pg_index x
      JOIN LATERAL unnest(x.indkey) WITH ORDINALITY AS k(attnum, ord) ON true
      JOIN pg_attribute a ON a.attrelid = x.indrelid AND a.attnum = k.attnum
     WHERE x.indrelid = tbl AND x.indisprimary;
    IF cardinality(pk) = 1 THEN
        new_key := format('NEW.%I::text', pk[1]);
        old_key := format('OLD.%I::text', pk[1]);
    ELSE
        new_key := format('json_build_array(%s)::text',
                          (SELECT string_agg(format('NEW.%I', c), ', ') FROM unnest(pk) c));
        old_key := format('json_build_array(%s)::text',
                          (SELECT string_agg(format('OLD.%I', c), ', ') FROM unnest(pk) c));
    END IF;

    new_parents := 'NULL';
    old_parents := 'NULL';
    FOR alias, fk_column IN SELECT key, value FROM jsonb_each_text(parents) ORDER BY key LOOP
        i := i + 1;
        SELECT c.confrelid::regclass, ra.attname INTO ref_table, ref_column
          FROM pg_constraint c
          JOIN pg_attribute la ON la.attrelid = c.conrelid AND la.attnum = c.conkey[1]
          JOIN pg_attribute ra ON ra.attrelid = c.confrelid AND ra.attnum = c.confkey[1]
         WHERE c.conrelid = tbl AND c.contype = 'f' AND cardinality(c.conkey) = 1
           AND la.attname = fk_column
         LIMIT 1;
        declarations := declarations || format(E'    p%s json;\n    old_p%s json;\n', i, i);
        read_new := read_new || format(
            E'        SELECT row_to_json(p) INTO p%s FROM %s AS p WHERE p.%I = NEW.%I FOR SHARE;\n',
            i, ref_table, ref_column, fk_column);
        read_old := read_old || format(
            E'        SELECT row_to_json(p) INTO old_p%s FROM %s AS p WHERE p.%I = OLD.%I FOR SHARE;\n',
            i, ref_table, ref_column, fk_column);
        new_parents := CASE WHEN i = 1 THEN '' ELSE new_parents || ', ' END
            || format('%L, p%s', alias, i);
        old_parents := CASE WHEN i = 1 THEN '' ELSE old_parents || ', ' END
            || format('%L, old_p%s', alias, i);
    END LOOP;
    IF i > 0 THEN
        new_parents := 'json_build_object(' || new_parents || ')';
        old_parents := 'json_build_object(' || old_parents || ')';
    END IF;

    RETURN format($f$
DECLARE
    new_key text;
    old_key text;
%s
BEGIN
    IF TG_OP = 'INSERT' THEN
%s
        INSERT INTO relay.changes (rel, op, key, new, parents)
        VALUES (TG_RELID, 'INSERT', %s, row_to_json(NEW), %s);
    ELSIF TG_OP = 'DELETE' THEN
%s
        INSERT INTO relay.changes (rel, op, key, old, parents)
        VALUES (TG_RELID, 'DELETE', %s, row_to_json(OLD), %s);
    ELSE
        new_key := %s;
        old_key := %s;
%s
        IF new_key IS DISTINCT FROM old_key THEN
%s
            INSERT INTO relay.changes (rel, op, key, old, parents)
            VALUES (TG_RELID, 'DELETE', old_key, row_to_json(OLD), %s);
            INSERT INTO relay.changes (rel, op, key, new, parents)
            VALUES (TG_RELID, 'INSERT', new_key, row_to_json(NEW), %s);
        ELSE
            IF %s THEN
%s
                INSERT INTO relay.changes (rel, op, key, new, old, parents, old_parents)
                VALUES (TG_RELID, 'UPDATE', new_key, row_to_json(NEW), row_to_json(OLD), %s, %s);
            ELSE
                INSERT INTO relay.changes (rel, op, key, new, old, parents)
                VALUES (TG_RELID, 'UPDATE', new_key, row_to_json(NEW), row_to_json(OLD), %s);
            END IF;
        END IF;
    END IF;
    -- relay.ring(), inline: a function call per row costs.
    IF pg_try_advisory_xact_lock(1380273242, 0)
       AND pg_notification_queue_usage() < 0.5
       AND current_setting('relay.doorbell', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('relay_wake', '');
    END IF;
    RETURN NULL;
END
$f$,
        declarations,
        read_new, new_key, new_parents,
        replace(read_old, 'INTO old_p', 'INTO p'), old_key, new_parents,
        new_key, old_key,
        read_new,
        read_old, old_parents, new_parents,
        -- an UPDATE that moved a foreign key: the old row's parents too
        CASE WHEN i = 0 THEN 'false' ELSE (
            SELECT string_agg(format('OLD.%I IS DISTINCT FROM NEW.%I', v, v), ' OR ')
              FROM jsonb_each_text(parents) AS e(k, v)) END,
        read_old,
        new_parents, old_parents,
        new_parents);
END
$$;

-- relay.publish(table, events, parents): start logging the table's changes.
--   events:  any of INSERT, UPDATE, DELETE (default: all three).
--   parents: {"alias": "fk_column"}: with each change, also log the row that
--            this single-column foreign key points at, as parents.alias. The
--            relay uses it to authorize rows whose visibility depends on their
--            parent (RLS policies with EXISTS on the parent).
-- Publishing again replaces the previous settings. Needs the table's owner,
-- and is run by the owner of schema relay, whose rights the capture has.
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
    alias text;
    fk_column text;
    ref_table regclass;
    capture text := format('relay.%I', 'capture_' || tbl::oid);
    relay_owner regrole := (SELECT nspowner FROM pg_namespace WHERE nspname = 'relay');
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
    FOR alias, fk_column IN SELECT key, value FROM jsonb_each_text(parents) LOOP
        SELECT c.confrelid::regclass INTO ref_table
          FROM pg_constraint c
          JOIN pg_attribute la ON la.attrelid = c.conrelid AND la.attnum = c.conkey[1]
         WHERE c.conrelid = tbl AND c.contype = 'f' AND cardinality(c.conkey) = 1
           AND la.attname = fk_column
         LIMIT 1;
        IF ref_table IS NULL THEN
            RAISE EXCEPTION 'relay.publish: %.% is not a single-column foreign key', tbl, fk_column
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        IF NOT relay.reads_every_row(ref_table, relay_owner) THEN
            RAISE EXCEPTION 'relay.publish: %, the owner of schema relay, cannot read every row of the parent % and lock it', relay_owner, ref_table
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'It needs SELECT and UPDATE on it, and to see every row: a superuser, BYPASSRLS, or the table''s owner when it does not force row-level security.';
        END IF;
    END LOOP;
    IF NOT pg_has_role(relay_owner, 'MEMBER') THEN
        RAISE EXCEPTION 'relay.publish: run it as the owner of schema relay (the capture runs with its rights)'
            USING ERRCODE = 'insufficient_privilege';
    END IF;

    PERFORM relay.unpublish_triggers(tbl);
    EXECUTE format(
        'CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql SECURITY DEFINER '
        'SET search_path = pg_catalog, pg_temp AS %L',
        capture, relay.capture_source(tbl, parents));
    EXECUTE format('ALTER FUNCTION %s() OWNER TO %s', capture, relay_owner);
    EXECUTE format('REVOKE ALL ON FUNCTION %s() FROM PUBLIC', capture);
    EXECUTE format(
        'CREATE TRIGGER relay_capture AFTER %s ON %s FOR EACH ROW EXECUTE FUNCTION %s()',
        array_to_string(wanted, ' OR '), tbl, capture);
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

CREATE FUNCTION relay.unpublish_triggers(tbl regclass) RETURNS void
LANGUAGE plpgsql
SET search_path = pg_catalog, pg_temp
AS $$
BEGIN
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture ON %s', tbl);
    EXECUTE format('DROP TRIGGER IF EXISTS relay_capture_truncate ON %s', tbl);
    EXECUTE format('DROP FUNCTION IF EXISTS relay.%I()', 'capture_' || tbl::oid);
END
$$;

-- relay.unpublish(table): stop logging the table's changes.
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
REVOKE ALL ON FUNCTION relay.capture_source(regclass, jsonb) FROM PUBLIC;

-- What is published, like pg_publication_tables: one row per table, with what
-- the relay needs to know of it (its oid, primary key, columns and their types).
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
    p.published_at,
    c.oid AS relid
FROM relay.publications p
JOIN pg_class c ON c.oid = p.rel
JOIN pg_namespace n ON n.oid = c.relnamespace;

-- Which version of the trigger layer this is, for `nexus-relay install`
-- (relay/trigger_layer.py): a later layer answers its own number, and a
-- nexus-relay that knows only older ones refuses to touch it.
CREATE FUNCTION relay.version() RETURNS integer
LANGUAGE sql IMMUTABLE
AS $$ SELECT 2 $$;
REVOKE ALL ON FUNCTION relay.version() FROM PUBLIC;
