"""Publish the four seed tables to the relay, our
``ALTER PUBLICATION supabase_realtime ADD TABLE``.

All three events on each table. The seed published INSERT and UPDATE (only
INSERT for notifications); UPDATE of notifications is what lets a badge count
down when another tab marks one read, and DELETE costs nothing more than the
row trigger that is there anyway. Case messages carry their parent case, which
the relay needs to apply the messages' EXISTS policy without a query.

Revision ID: 0003
Revises: 0002
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PUBLISHED = {
    "nexus_case_messages": """'{"case": "case_id"}'""",
    "nexus_payments": "'{}'",
    "nexus_notifications": "'{}'",
    "nexus_tenant_relationships": "'{}'",
}


def upgrade() -> None:
    for table, parents in PUBLISHED.items():
        op.execute(
            f"SELECT relay.publish('public.{table}', ARRAY['INSERT', 'UPDATE', 'DELETE'], {parents})"
        )


def downgrade() -> None:
    for table in PUBLISHED:
        op.execute(f"SELECT relay.unpublish('public.{table}')")
