"""The Nexus schema: tenants, users, cases, messages, payments, notifications,
relationships, and the notification counts view.

Ids follow the seed (``TNT-*``, ``USR-*``, ``CASE-*``, ``NOTIF-*``); the other
tables use the same shape with their own prefix. Every column that a policy or a
relay filter reads has an index.

Revision ID: 0001
Revises:
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def id_column(prefix: str, sequence: str | None = None, digits: int = 8) -> str:
    """A text primary key ``PREFIX-A1B2``; generated from ``sequence`` when given."""
    default = (
        f"DEFAULT '{prefix}-' || lpad(nextval('{sequence}')::text, {digits}, '0')"
        if sequence
        else ""
    )
    return f"id text PRIMARY KEY {default} CHECK (id ~ '^{prefix}-[A-Z0-9]{{4,32}}$')"


TIMESTAMPS = """
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
"""


def upgrade() -> None:
    op.execute("""
        CREATE FUNCTION nexus_touch_updated_at() RETURNS trigger
        LANGUAGE plpgsql AS $$
        BEGIN
            NEW.updated_at := now();
            RETURN NEW;
        END $$;
    """)

    op.execute(f"""
        CREATE TABLE nexus_tenants (
            {id_column("TNT")},
            name text NOT NULL CHECK (length(btrim(name)) BETWEEN 1 AND 200),
            kind text NOT NULL CHECK (kind IN ('client', 'vendor')),
            created_at timestamptz NOT NULL DEFAULT now()
        );

        CREATE TABLE nexus_users (
            {id_column("USR")},
            tenant_id text NOT NULL REFERENCES nexus_tenants (id),
            email text NOT NULL UNIQUE
                CHECK (email = lower(email) AND email ~ '^[^@\\s]+@[^@\\s]+$' AND length(email) <= 254),
            display_name text NOT NULL CHECK (length(btrim(display_name)) BETWEEN 1 AND 200),
            password_hash text NOT NULL,
            auth_user_id uuid NOT NULL UNIQUE DEFAULT gen_random_uuid(),
            created_at timestamptz NOT NULL DEFAULT now(),
            -- Lets other tables require that a user belongs to a given tenant.
            UNIQUE (id, tenant_id)
        );
        CREATE INDEX nexus_users_tenant_id_idx ON nexus_users (tenant_id);

        CREATE SEQUENCE nexus_cases_id_seq;
        CREATE TABLE nexus_cases (
            {id_column("CASE", "nexus_cases_id_seq")},
            client_id text NOT NULL REFERENCES nexus_tenants (id),
            vendor_id text NOT NULL REFERENCES nexus_tenants (id),
            subject text NOT NULL CHECK (length(btrim(subject)) BETWEEN 1 AND 200),
            status text NOT NULL DEFAULT 'open'
                CHECK (status IN ('open', 'in_progress', 'resolved', 'closed')),
            {TIMESTAMPS},
            CHECK (client_id <> vendor_id)
        );
        ALTER SEQUENCE nexus_cases_id_seq OWNED BY nexus_cases.id;
        CREATE INDEX nexus_cases_client_id_idx ON nexus_cases (client_id);
        CREATE INDEX nexus_cases_vendor_id_idx ON nexus_cases (vendor_id);

        CREATE SEQUENCE nexus_case_messages_id_seq;
        CREATE TABLE nexus_case_messages (
            {id_column("MSG", "nexus_case_messages_id_seq", 10)},
            case_id text NOT NULL REFERENCES nexus_cases (id),
            sender_tenant_id text NOT NULL REFERENCES nexus_tenants (id),
            sender_user_id text NOT NULL,
            body text NOT NULL CHECK (length(btrim(body)) >= 1 AND length(body) <= 1048576),
            {TIMESTAMPS},
            FOREIGN KEY (sender_user_id, sender_tenant_id) REFERENCES nexus_users (id, tenant_id)
        );
        ALTER SEQUENCE nexus_case_messages_id_seq OWNED BY nexus_case_messages.id;
        CREATE INDEX nexus_case_messages_case_id_idx ON nexus_case_messages (case_id, created_at);
        CREATE INDEX nexus_case_messages_sender_tenant_id_idx ON nexus_case_messages (sender_tenant_id);
        CREATE INDEX nexus_case_messages_sender_user_id_idx ON nexus_case_messages (sender_user_id);

        CREATE SEQUENCE nexus_payments_id_seq;
        CREATE TABLE nexus_payments (
            {id_column("PAY", "nexus_payments_id_seq")},
            from_id text NOT NULL REFERENCES nexus_tenants (id),
            to_id text NOT NULL REFERENCES nexus_tenants (id),
            amount numeric(14, 2) NOT NULL CHECK (amount > 0),
            currency text NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{{3}}$'),
            status text NOT NULL DEFAULT 'pending'
                CHECK (status IN ('pending', 'approved', 'paid', 'rejected', 'cancelled')),
            reference text NOT NULL DEFAULT '' CHECK (length(reference) <= 200),
            {TIMESTAMPS},
            CHECK (from_id <> to_id)
        );
        ALTER SEQUENCE nexus_payments_id_seq OWNED BY nexus_payments.id;
        CREATE INDEX nexus_payments_from_id_idx ON nexus_payments (from_id);
        CREATE INDEX nexus_payments_to_id_idx ON nexus_payments (to_id);
        CREATE INDEX nexus_payments_status_idx ON nexus_payments (status);

        CREATE SEQUENCE nexus_notifications_id_seq;
        CREATE TABLE nexus_notifications (
            {id_column("NOTIF", "nexus_notifications_id_seq")},
            tenant_id text NOT NULL REFERENCES nexus_tenants (id),
            -- NULL: for every user of the tenant.
            user_id text,
            notification_type text NOT NULL CHECK (notification_type ~ '^[a-z][a-z0-9_]{{0,63}}$'),
            title text NOT NULL CHECK (length(btrim(title)) BETWEEN 1 AND 200),
            body text NOT NULL DEFAULT '' CHECK (length(body) <= 2000),
            priority text NOT NULL DEFAULT 'normal' CHECK (priority IN ('low', 'normal', 'high')),
            read_at timestamptz,
            created_at timestamptz NOT NULL DEFAULT now(),
            FOREIGN KEY (user_id, tenant_id) REFERENCES nexus_users (id, tenant_id)
        );
        ALTER SEQUENCE nexus_notifications_id_seq OWNED BY nexus_notifications.id;
        CREATE INDEX nexus_notifications_tenant_id_idx ON nexus_notifications (tenant_id);
        CREATE INDEX nexus_notifications_user_id_idx ON nexus_notifications (user_id);

        CREATE SEQUENCE nexus_tenant_relationships_id_seq;
        CREATE TABLE nexus_tenant_relationships (
            {id_column("REL", "nexus_tenant_relationships_id_seq")},
            client_id text NOT NULL REFERENCES nexus_tenants (id),
            vendor_id text NOT NULL REFERENCES nexus_tenants (id),
            status text NOT NULL DEFAULT 'invited'
                CHECK (status IN ('invited', 'active', 'declined')),
            invited_by_tenant_id text NOT NULL REFERENCES nexus_tenants (id),
            {TIMESTAMPS},
            UNIQUE (client_id, vendor_id),
            CHECK (client_id <> vendor_id),
            CHECK (invited_by_tenant_id IN (client_id, vendor_id))
        );
        ALTER SEQUENCE nexus_tenant_relationships_id_seq OWNED BY nexus_tenant_relationships.id;
        CREATE INDEX nexus_tenant_relationships_vendor_id_idx ON nexus_tenant_relationships (vendor_id);
    """)

    for table in (
        "nexus_cases",
        "nexus_case_messages",
        "nexus_payments",
        "nexus_tenant_relationships",
    ):
        op.execute(f"""
            CREATE TRIGGER {table}_touch BEFORE UPDATE ON {table}
            FOR EACH ROW EXECUTE FUNCTION nexus_touch_updated_at();
        """)

    # The seed's view, plus tenant_id. security_invoker: the view runs under the
    # caller's RLS, not its owner's (PostgreSQL 15+).
    op.execute("""
        CREATE VIEW nexus_notification_counts WITH (security_invoker = true) AS
        SELECT
            tenant_id,
            user_id,
            count(*) FILTER (WHERE read_at IS NULL) AS unread_count,
            count(*) FILTER (WHERE read_at IS NULL AND priority = 'high') AS high_priority_count,
            max(created_at) AS latest_notification
        FROM nexus_notifications
        GROUP BY tenant_id, user_id;
    """)


def downgrade() -> None:
    op.execute("""
        DROP VIEW nexus_notification_counts;
        DROP TABLE nexus_tenant_relationships, nexus_notifications, nexus_payments,
                   nexus_case_messages, nexus_cases, nexus_users, nexus_tenants;
        DROP FUNCTION nexus_touch_updated_at();
    """)
