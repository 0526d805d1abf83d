"""The relay's trigger layer (schema ``relay``), version 1.

The SQL ships with the relay package (``relay/sql``) so that any application
can apply it; this revision applies version 1.

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

from alembic import op

from relay import sql

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def run_script(script: str) -> None:
    sql.run(op.get_bind().connection.driver_connection, script)


def upgrade() -> None:
    run_script(sql.read("v1_install"))


def downgrade() -> None:
    run_script(sql.read("v1_uninstall"))
