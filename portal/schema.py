"""The Nexus tables, for SQLAlchemy Core queries (the migrations own the DDL)."""

from sqlalchemy import Column, DateTime, MetaData, Numeric, String, Table, Text

metadata = MetaData()

tenants = Table(
    "nexus_tenants",
    metadata,
    Column("id", String, primary_key=True),
    Column("name", Text),
    Column("kind", String),
)

users = Table(
    "nexus_users",
    metadata,
    Column("id", String, primary_key=True),
    Column("tenant_id", String),
    Column("email", String),
    Column("display_name", Text),
    Column("password_hash", Text),
    Column("deactivated_at", DateTime(timezone=True)),
)

cases = Table(
    "nexus_cases",
    metadata,
    Column("id", String, primary_key=True),
    Column("client_id", String),
    Column("vendor_id", String),
    Column("subject", Text),
    Column("status", String),
    Column("created_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
)

case_messages = Table(
    "nexus_case_messages",
    metadata,
    Column("id", String, primary_key=True),
    Column("case_id", String),
    Column("sender_tenant_id", String),
    Column("sender_user_id", String),
    Column("body", Text),
    Column("created_at", DateTime(timezone=True)),
)

payments = Table(
    "nexus_payments",
    metadata,
    Column("id", String, primary_key=True),
    Column("from_id", String),
    Column("to_id", String),
    Column("amount", Numeric(14, 2)),
    Column("currency", String),
    Column("status", String),
    Column("reference", Text),
    Column("created_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
)

notifications = Table(
    "nexus_notifications",
    metadata,
    Column("id", String, primary_key=True),
    Column("tenant_id", String),
    Column("user_id", String),
    Column("notification_type", String),
    Column("title", Text),
    Column("body", Text),
    Column("priority", String),
    Column("read_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True)),
)

relationships = Table(
    "nexus_tenant_relationships",
    metadata,
    Column("id", String, primary_key=True),
    Column("client_id", String),
    Column("vendor_id", String),
    Column("status", String),
    Column("invited_by_tenant_id", String),
    Column("created_at", DateTime(timezone=True)),
    Column("updated_at", DateTime(timezone=True)),
)

invitations = Table(
    "nexus_invitations",
    metadata,
    Column("id", String, primary_key=True),
    Column("inviter_tenant_id", String),
    Column("invitee_tenant_id", String),
    Column("status", String),
    Column("created_at", DateTime(timezone=True)),
    Column("answered_at", DateTime(timezone=True)),
)

sessions = Table(
    "nexus_sessions",
    metadata,
    Column("id_hash", String, primary_key=True),
    Column("user_id", String),
    Column("tenant_id", String),
    Column("created_at", DateTime(timezone=True)),
    Column("expires_at", DateTime(timezone=True)),
    Column("revoked_at", DateTime(timezone=True)),
)
