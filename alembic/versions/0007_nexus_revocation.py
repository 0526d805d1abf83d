"""Revocation: a user who moves, is deactivated, deleted or signs out loses the relay at once.

A relay token lives for minutes; without this, a user moved to another tenant
would keep receiving the old tenant's rows until theirs expired. Triggers call
``relay.revoke(user_id, reason)`` (relay/sql/v2_objects.sql), in the writer's
transaction, whoever writes (the portal, psql, a batch job):

- ``moved``: a user's ``tenant_id`` changes;
- ``deactivated``: ``deactivated_at`` (new) becomes set; the user's live
  sessions end too, and the portal signs them in no more;
- ``deleted``: a user is deleted;
- ``signed_out``: a live session ends (``revoked_at`` set, or the row deleted
  before it expired).

The trigger functions are ``SECURITY DEFINER``, owned by the migrating role
(the owner of schema ``relay``, which alone may call ``relay.revoke``), with a
pinned ``search_path``.

Revision ID: 0007
Revises: 0006
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

LOGIN_POLICY = """
    CREATE POLICY sessions_login ON nexus_sessions FOR INSERT TO nexus_login
        WITH CHECK (EXISTS (
            SELECT 1 FROM public.nexus_users u
             WHERE u.id = nexus_sessions.user_id AND u.tenant_id = nexus_sessions.tenant_id
               AND u.email = current_setting('nexus.login_email', true){active}));
"""


def upgrade() -> None:
    op.execute(f"""
        DO $$
        BEGIN
            IF NOT pg_has_role(current_user,
                               (SELECT nspowner FROM pg_namespace WHERE nspname = 'relay'),
                               'USAGE') THEN
                RAISE EXCEPTION 'migration 0007: run it as the owner of schema relay'
                    USING HINT = 'Its triggers run relay.revoke as the role that creates them.';
            END IF;
        END
        $$;

        ALTER TABLE nexus_users ADD COLUMN deactivated_at timestamptz;
        GRANT SELECT (deactivated_at) ON nexus_users TO authenticated, nexus_login;

        -- A deactivated user gets no new session, whatever the portal checks.
        DROP POLICY sessions_login ON nexus_sessions;
        {LOGIN_POLICY.format(active=" AND u.deactivated_at IS NULL")}

        CREATE FUNCTION public.nexus_revoke_user() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $$
        BEGIN
            IF TG_OP = 'DELETE' THEN
                PERFORM relay.revoke(OLD.id, 'deleted');
                RETURN NULL;
            END IF;
            IF NEW.deactivated_at IS NOT NULL AND OLD.deactivated_at IS NULL THEN
                -- Ended here, so that a session check holding the session row
                -- (FOR SHARE: the portal's relay token) waits for this commit.
                UPDATE public.nexus_sessions s SET revoked_at = now()
                 WHERE s.user_id = NEW.id AND s.revoked_at IS NULL;
                PERFORM relay.revoke(OLD.id, 'deactivated');
            ELSIF NEW.tenant_id IS DISTINCT FROM OLD.tenant_id THEN
                PERFORM relay.revoke(OLD.id, 'moved');
            END IF;
            RETURN NULL;
        END
        $$;
        REVOKE ALL ON FUNCTION public.nexus_revoke_user() FROM PUBLIC;

        -- Named to fire after the foreign keys' cascades ("RI_..." sort first),
        -- so that the user's reason is the one relay.revocations keeps.
        CREATE TRIGGER revoke_on_change AFTER UPDATE OF tenant_id, deactivated_at ON nexus_users
            FOR EACH ROW
            WHEN (OLD.tenant_id IS DISTINCT FROM NEW.tenant_id
                  OR (OLD.deactivated_at IS NULL AND NEW.deactivated_at IS NOT NULL))
            EXECUTE FUNCTION public.nexus_revoke_user();
        CREATE TRIGGER revoke_on_delete AFTER DELETE ON nexus_users
            FOR EACH ROW EXECUTE FUNCTION public.nexus_revoke_user();

        CREATE FUNCTION public.nexus_revoke_session() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER
        SET search_path = pg_catalog, pg_temp
        AS $$
        BEGIN
            -- A session ended because its user was deleted or deactivated: that
            -- user's trigger revokes, with its reason (this one fires after it).
            IF NOT EXISTS (SELECT 1 FROM public.nexus_users u
                            WHERE u.id = OLD.user_id AND u.deactivated_at IS NULL) THEN
                RETURN NULL;
            END IF;
            PERFORM relay.revoke(OLD.user_id, 'signed_out');
            RETURN NULL;
        END
        $$;
        REVOKE ALL ON FUNCTION public.nexus_revoke_session() FROM PUBLIC;

        CREATE TRIGGER revoke_on_sign_out AFTER UPDATE OF revoked_at ON nexus_sessions
            FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND NEW.revoked_at IS NOT NULL)
            EXECUTE FUNCTION public.nexus_revoke_session();
        -- Deleting sessions that had ended already (a clean-up) revokes nothing.
        CREATE TRIGGER revoke_on_delete AFTER DELETE ON nexus_sessions
            FOR EACH ROW WHEN (OLD.revoked_at IS NULL AND OLD.expires_at > now())
            EXECUTE FUNCTION public.nexus_revoke_session();
    """)


def downgrade() -> None:
    op.execute(f"""
        DROP TRIGGER revoke_on_delete ON nexus_sessions;
        DROP TRIGGER revoke_on_sign_out ON nexus_sessions;
        DROP FUNCTION public.nexus_revoke_session();
        DROP TRIGGER revoke_on_delete ON nexus_users;
        DROP TRIGGER revoke_on_change ON nexus_users;
        DROP FUNCTION public.nexus_revoke_user();
        DROP POLICY sessions_login ON nexus_sessions;
        {LOGIN_POLICY.format(active="")}
        ALTER TABLE nexus_users DROP COLUMN deactivated_at;
    """)
