"""Broadcast from the database: ``relay.broadcast(topic, event, payload, private)``.

Like Supabase's ``realtime.send``: a marker in the change log, in the caller's
transaction, which every relay delivers to its own members of the topic after
the commit, in the log's order (relay/sql/v2_broadcast.sql). Only the owner of
schema ``relay`` may call it, and whoever they grant it to.

Revision ID: 0009
Revises: 0008
"""

from collections.abc import Sequence

from alembic import op

from relay import sql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def run_script(script: str) -> None:
    sql.run(op.get_bind().connection.driver_connection, script)


def upgrade() -> None:
    run_script(sql.add_broadcast())


def downgrade() -> None:
    run_script(sql.remove_broadcast())
