-- A to-do application's schema, as its own migrations would create it: each
-- user sees and writes only their own to-dos. Nothing here knows Nexus Relay.
--
-- Users come from your identity provider. Your API verifies their JWT and, in
-- each transaction, puts its claims where the policies read them, as PostgREST
-- and Supabase do, as a role other than the table's owner (whom RLS does not bind):
--     SELECT set_config('request.jwt.claims', '{"sub": "…"}', true);
-- Run as the role that owns the application's tables (todo_owner in the README).

CREATE TABLE todos (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    owner_id uuid NOT NULL,
    title text NOT NULL,
    done boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE todos ENABLE ROW LEVEL SECURITY;

-- Visible and writable when it is yours: owner_id is the token's "sub".
CREATE POLICY todos_are_their_owners ON todos
    USING (owner_id = (current_setting('request.jwt.claims', true)::json ->> 'sub')::uuid)
    WITH CHECK (owner_id = (current_setting('request.jwt.claims', true)::json ->> 'sub')::uuid);
