-- relay.broadcast(topic, event, payload, private): a broadcast from the
-- database, delivered after commit, like Supabase's realtime.send. It writes a
-- marker to the log (op BROADCAST), in the caller's transaction: a rollback
-- (or the rollback of a savepoint) takes it with it, and relays deliver it
-- when they read the log, once each to their own members of the topic, in the
-- log's order with the row changes (docs/architecture.md, "Broadcast from the
-- database"). Migration 0009 adds it to a version 2 installed before it.
--
-- Limits, checked here, so that the caller learns of them and not the relay:
-- a topic and an event of 1 to 255 bytes (Supabase's binary frames carry no
-- more), a payload (a JSON object) of at most 65536 bytes as JSON text (the
-- relay's broadcast limit). private is what realtime.send takes: every member
-- of a room was admitted by its topic rule, so the relay delivers to the
-- members that may read broadcasts either way.
--
-- Who may call it: the owner of schema relay (the relay's role), and whoever
-- they grant it to (GRANT USAGE ON SCHEMA relay, GRANT EXECUTE ON FUNCTION
-- relay.broadcast(text, text, jsonb, boolean)); never PUBLIC. It runs as the
-- owner (SECURITY DEFINER): callers need no right on the log.
CREATE OR REPLACE FUNCTION relay.broadcast(
    topic text, event text, payload jsonb, private boolean DEFAULT true
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
DECLARE
    n bigint;
    body text;
BEGIN
    IF broadcast.topic IS NULL OR octet_length(broadcast.topic) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'relay.broadcast: a topic is 1 to 255 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF broadcast.event IS NULL OR octet_length(broadcast.event) NOT BETWEEN 1 AND 255 THEN
        RAISE EXCEPTION 'relay.broadcast: an event is 1 to 255 bytes'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF broadcast.payload IS NULL OR jsonb_typeof(broadcast.payload) <> 'object' THEN
        RAISE EXCEPTION 'relay.broadcast: the payload is a JSON object'
            USING ERRCODE = 'invalid_parameter_value',
                  HINT = 'The official clients read a broadcast''s payload as an object.';
    END IF;
    body := broadcast.payload::text;
    IF octet_length(body) > 65536 THEN
        RAISE EXCEPTION 'relay.broadcast: the payload is % bytes as JSON, at most 65536',
            octet_length(body)
            USING ERRCODE = 'program_limit_exceeded',
                  HINT = 'Broadcast a key, and let the members fetch the rest.';
    END IF;
    -- Its own number as its key: two broadcasts of one transaction are two
    -- entries, not one net change.
    n := nextval('relay.change_seq');
    INSERT INTO relay.changes (seq, rel, op, key, new)
    VALUES (n, 'relay.log'::regclass, 'BROADCAST', n::text,
            json_build_object('topic', broadcast.topic, 'event', broadcast.event,
                              'payload', broadcast.payload,
                              'private', COALESCE(broadcast.private, true)));
    PERFORM relay.ring();
END
$$;
REVOKE ALL ON FUNCTION relay.broadcast(text, text, jsonb, boolean) FROM PUBLIC;
