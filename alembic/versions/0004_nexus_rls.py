"""Row-level security on the Nexus tables: the seed's "Production RLS Policies
(Finalized)", enabled and forced, with the roles the application switches to.

- ``authenticated`` (NOLOGIN): an application connection runs a user's queries
  as this role, after ``SET LOCAL ROLE authenticated`` and
  ``set_config('request.jwt.claims', '<claims json>', true)``. The claims carry
  ``app_metadata.user_id`` (USR-*) and ``app_metadata.tenant_id`` (TNT-*).
- ``nexus_login`` (NOLOGIN): checks a password. It sees one user, the one whose
  email is in ``nexus.login_email``, and no other table.

FORCE makes the policies apply to the tables' owner too; only a superuser or a
role with BYPASSRLS (migrations, the demo data loader) writes around them.
Roles and role memberships are cluster-wide: downgrade revokes what this
revision granted on its tables and leaves the roles, which other databases of
the cluster may use.

Revision ID: 0004
Revises: 0003
"""

import re
from collections.abc import Sequence

from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLES = (
    "nexus_tenants",
    "nexus_users",
    "nexus_cases",
    "nexus_case_messages",
    "nexus_payments",
    "nexus_notifications",
    "nexus_tenant_relationships",
)

# Wrapped in a sub-select so that PostgreSQL evaluates it once per query, as an
# init plan, instead of once per row.
TENANT = "(SELECT public.jwt_nexus_tenant_id())"
USER = "(SELECT public.jwt_nexus_user_id())"

# An active relationship between my tenant and {tenant}.
ACTIVE_WITH_MY_TENANT = f"""
    EXISTS (
        SELECT 1 FROM public.nexus_tenant_relationships r
         WHERE r.status = 'active'
           AND ((r.client_id = {{tenant}} AND r.vendor_id = {TENANT})
             OR (r.vendor_id = {{tenant}} AND r.client_id = {TENANT}))
    )"""

# An open invitation from {tenant} to my tenant: the invitee sees who invites.
INVITING_MY_TENANT = f"""
    EXISTS (
        SELECT 1 FROM public.nexus_tenant_relationships r
         WHERE r.status = 'invited' AND r.invited_by_tenant_id = {{tenant}}
           AND (r.client_id = {TENANT} OR r.vendor_id = {TENANT})
    )"""

# {a} and {b} are the two sides of an active relationship.
ACTIVE_BETWEEN = """
    EXISTS (
        SELECT 1 FROM public.nexus_tenant_relationships r
         WHERE r.status = 'active'
           AND ((r.client_id = {a} AND r.vendor_id = {b}) OR (r.client_id = {b} AND r.vendor_id = {a}))
    )"""

POLICIES = f"""
    -- Tenants: my own, those with an active relationship with mine, and those
    -- inviting mine (so that an invitation shows who it is from). An invitation
    -- I sent shows the invitee's name only once accepted: inviting a tenant id
    -- does not reveal who is behind it.
    CREATE POLICY tenants_select ON nexus_tenants FOR SELECT TO authenticated
        USING (id = {TENANT}
               OR {ACTIVE_WITH_MY_TENANT.format(tenant="nexus_tenants.id")}
               OR {INVITING_MY_TENANT.format(tenant="nexus_tenants.id")});

    -- Users: my tenant's, and those of tenants in an active relationship with mine.
    CREATE POLICY users_select ON nexus_users FOR SELECT TO authenticated
        USING (tenant_id = {TENANT} OR {ACTIVE_WITH_MY_TENANT.format(tenant="nexus_users.tenant_id")});
    CREATE POLICY users_login ON nexus_users FOR SELECT TO nexus_login
        USING (email = current_setting('nexus.login_email', true));
    CREATE POLICY users_login_rehash ON nexus_users FOR UPDATE TO nexus_login
        USING (email = current_setting('nexus.login_email', true))
        WITH CHECK (email = current_setting('nexus.login_email', true));

    -- Cases: both sides of the case.
    CREATE POLICY cases_select ON nexus_cases FOR SELECT TO authenticated
        USING (client_id = {TENANT} OR vendor_id = {TENANT});
    CREATE POLICY cases_insert ON nexus_cases FOR INSERT TO authenticated
        WITH CHECK ((client_id = {TENANT} OR vendor_id = {TENANT})
                    AND {ACTIVE_BETWEEN.format(a="client_id", b="vendor_id")});
    CREATE POLICY cases_update ON nexus_cases FOR UPDATE TO authenticated
        USING (client_id = {TENANT} OR vendor_id = {TENANT})
        WITH CHECK (client_id = {TENANT} OR vendor_id = {TENANT});

    -- Case messages: through the parent case; a message is sent as oneself.
    CREATE POLICY case_messages_select ON nexus_case_messages FOR SELECT TO authenticated
        USING (EXISTS (
            SELECT 1 FROM public.nexus_cases c
             WHERE c.id = nexus_case_messages.case_id
               AND (c.client_id = {TENANT} OR c.vendor_id = {TENANT})));
    CREATE POLICY case_messages_insert ON nexus_case_messages FOR INSERT TO authenticated
        WITH CHECK (
            sender_tenant_id = {TENANT}
            AND sender_user_id = {USER}
            AND EXISTS (
                SELECT 1 FROM public.nexus_cases c
                 WHERE c.id = nexus_case_messages.case_id
                   AND (c.client_id = {TENANT} OR c.vendor_id = {TENANT})));

    -- Payments: payer and payee; the payer creates them, to a tenant in an active relationship.
    CREATE POLICY payments_select ON nexus_payments FOR SELECT TO authenticated
        USING (from_id = {TENANT} OR to_id = {TENANT});
    CREATE POLICY payments_insert ON nexus_payments FOR INSERT TO authenticated
        WITH CHECK (from_id = {TENANT} AND {ACTIVE_BETWEEN.format(a="from_id", b="to_id")});
    CREATE POLICY payments_update ON nexus_payments FOR UPDATE TO authenticated
        USING (from_id = {TENANT} OR to_id = {TENANT})
        WITH CHECK (from_id = {TENANT} OR to_id = {TENANT});

    -- Notifications: mine, and my tenant's that are for every user (user_id NULL).
    CREATE POLICY notifications_select ON nexus_notifications FOR SELECT TO authenticated
        USING (tenant_id = {TENANT} AND (user_id = {USER} OR user_id IS NULL));
    CREATE POLICY notifications_update ON nexus_notifications FOR UPDATE TO authenticated
        USING (tenant_id = {TENANT} AND (user_id = {USER} OR user_id IS NULL))
        WITH CHECK (tenant_id = {TENANT} AND (user_id = {USER} OR user_id IS NULL));

    -- Relationships: both sides; the inviter creates, the invitee answers.
    CREATE POLICY relationships_select ON nexus_tenant_relationships FOR SELECT TO authenticated
        USING (client_id = {TENANT} OR vendor_id = {TENANT});
    CREATE POLICY relationships_insert ON nexus_tenant_relationships FOR INSERT TO authenticated
        WITH CHECK (
            (client_id = {TENANT} OR vendor_id = {TENANT})
            AND invited_by_tenant_id = {TENANT}
            AND status = 'invited');
    CREATE POLICY relationships_update ON nexus_tenant_relationships FOR UPDATE TO authenticated
        USING ((client_id = {TENANT} OR vendor_id = {TENANT}) AND invited_by_tenant_id <> {TENANT})
        WITH CHECK ((client_id = {TENANT} OR vendor_id = {TENANT}) AND invited_by_tenant_id <> {TENANT});
"""

GRANTS = """
    GRANT SELECT ON nexus_tenants, nexus_cases, nexus_case_messages, nexus_payments,
                    nexus_notifications, nexus_tenant_relationships, nexus_notification_counts
        TO authenticated;
    -- Never the password hash, nor the identity provider's id.
    GRANT SELECT (id, tenant_id, email, display_name, created_at) ON nexus_users TO authenticated;
    GRANT INSERT (client_id, vendor_id, subject) ON nexus_cases TO authenticated;
    GRANT UPDATE (status) ON nexus_cases TO authenticated;
    GRANT INSERT (case_id, sender_tenant_id, sender_user_id, body) ON nexus_case_messages TO authenticated;
    GRANT INSERT (from_id, to_id, amount, currency, reference) ON nexus_payments TO authenticated;
    GRANT UPDATE (status) ON nexus_payments TO authenticated;
    GRANT UPDATE (read_at) ON nexus_notifications TO authenticated;
    GRANT INSERT (client_id, vendor_id, invited_by_tenant_id, status) ON nexus_tenant_relationships
        TO authenticated;
    GRANT UPDATE (status) ON nexus_tenant_relationships TO authenticated;
    GRANT USAGE ON SEQUENCE nexus_cases_id_seq, nexus_case_messages_id_seq, nexus_payments_id_seq,
                            nexus_tenant_relationships_id_seq
        TO authenticated;

    GRANT SELECT (id, tenant_id, email, display_name, password_hash) ON nexus_users TO nexus_login;
    GRANT UPDATE (password_hash) ON nexus_users TO nexus_login;
"""

REVOKES = """
    REVOKE ALL ON nexus_tenants, nexus_users, nexus_cases, nexus_case_messages, nexus_payments,
                  nexus_notifications, nexus_tenant_relationships, nexus_notification_counts
        FROM authenticated, nexus_login;
    REVOKE ALL ON SEQUENCE nexus_cases_id_seq, nexus_case_messages_id_seq, nexus_payments_id_seq,
                           nexus_tenant_relationships_id_seq
        FROM authenticated;
"""


def upgrade() -> None:
    op.execute("""
        DO $$
        BEGIN
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'authenticated') THEN
                CREATE ROLE authenticated NOLOGIN;
            END IF;
            IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nexus_login') THEN
                CREATE ROLE nexus_login NOLOGIN;
            END IF;
        END
        $$;
        -- The application's connections switch to these roles: the migrating
        -- role (which the application uses unless told otherwise) may.
        GRANT authenticated, nexus_login TO CURRENT_USER;
    """)

    # Read the claims that the application put in request.jwt.claims (the name
    # PostgREST and Supabase use). Missing or empty claims read as NULL, and
    # NULL matches no row.
    op.execute("""
        CREATE FUNCTION public.jwt_nexus_claim(name text) RETURNS text
        LANGUAGE sql STABLE
        AS $$
            SELECT NULLIF(current_setting('request.jwt.claims', true), '')::jsonb
                   -> 'app_metadata' ->> name
        $$;
        CREATE FUNCTION public.jwt_nexus_user_id() RETURNS text
        LANGUAGE sql STABLE
        AS $$ SELECT public.jwt_nexus_claim('user_id') $$;
        CREATE FUNCTION public.jwt_nexus_tenant_id() RETURNS text
        LANGUAGE sql STABLE
        AS $$ SELECT public.jwt_nexus_claim('tenant_id') $$;
    """)

    for table in TABLES:
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY, FORCE ROW LEVEL SECURITY")
    op.execute(POLICIES)
    op.execute(GRANTS)


def downgrade() -> None:
    op.execute(REVOKES)
    for name, table in re.findall(r"CREATE POLICY (\w+) ON (\w+)", POLICIES):
        op.execute(f"DROP POLICY {name} ON {table}")
    for table in TABLES:
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY, DISABLE ROW LEVEL SECURITY")
    op.execute("""
        DROP FUNCTION public.jwt_nexus_tenant_id(), public.jwt_nexus_user_id(),
                      public.jwt_nexus_claim(text);
    """)
