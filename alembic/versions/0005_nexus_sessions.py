"""Portal sessions, kept in the database so that they can end.

A signed cookie alone cannot be revoked: a copy stays valid after sign-out,
after the user is deleted or moved to another tenant. The cookie now names a
session (by a random id; only its SHA-256 is stored), and every request checks
that the session is live, and still belongs to the user and the tenant the
cookie says.

- ``nexus_login`` creates a session for the user whose password it checked;
- a user (``authenticated``) sees and ends their own sessions only.

Revision ID: 0005
Revises: 0004
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

USER = "(SELECT public.jwt_nexus_user_id())"
TENANT = "(SELECT public.jwt_nexus_tenant_id())"


def upgrade() -> None:
    op.execute(f"""
        CREATE TABLE nexus_sessions (
            id_hash text PRIMARY KEY CHECK (id_hash ~ '^[0-9a-f]{{64}}$'),
            user_id text NOT NULL,
            tenant_id text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            expires_at timestamptz NOT NULL,
            revoked_at timestamptz,
            -- A deleted user's sessions go; a moved user's follow, and then no
            -- longer match the tenant their cookie names: they are dead too.
            FOREIGN KEY (user_id, tenant_id) REFERENCES nexus_users (id, tenant_id)
                ON UPDATE CASCADE ON DELETE CASCADE
        );
        CREATE INDEX nexus_sessions_user_id_idx ON nexus_sessions (user_id);
        ALTER TABLE nexus_sessions ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY;

        CREATE POLICY sessions_login ON nexus_sessions FOR INSERT TO nexus_login
            WITH CHECK (EXISTS (
                SELECT 1 FROM public.nexus_users u
                 WHERE u.id = nexus_sessions.user_id AND u.tenant_id = nexus_sessions.tenant_id
                   AND u.email = current_setting('nexus.login_email', true)));
        CREATE POLICY sessions_select ON nexus_sessions FOR SELECT TO authenticated
            USING (user_id = {USER} AND tenant_id = {TENANT});
        CREATE POLICY sessions_end ON nexus_sessions FOR UPDATE TO authenticated
            USING (user_id = {USER} AND tenant_id = {TENANT})
            WITH CHECK (user_id = {USER} AND tenant_id = {TENANT});

        GRANT INSERT (id_hash, user_id, tenant_id, expires_at) ON nexus_sessions TO nexus_login;
        GRANT SELECT ON nexus_sessions TO authenticated;
        GRANT UPDATE (revoked_at) ON nexus_sessions TO authenticated;
    """)


def downgrade() -> None:
    op.execute("DROP TABLE nexus_sessions")
