"""The relay's trigger layer, version 2: every change in a protected log.

Version 1 sent each change as a NOTIFY payload. Version 2 writes it to
``relay.changes`` in the writer's transaction, and NOTIFY only rings a bell
(docs/architecture.md, "The change log"). What is published stays published.
In one transaction: a write commits before this revision (and was notified)
or after it (and is logged).

Downgrading returns to version 1, keeping what is published; the log is lost.

Revision ID: 0006
Revises: 0005
"""

from collections.abc import Sequence

from alembic import op

from relay import sql

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def run_script(script: str) -> None:
    sql.run(op.get_bind().connection.driver_connection, script)


def upgrade() -> None:
    run_script(sql.upgrade_from_v1())


def downgrade() -> None:
    run_script("""
        CREATE TEMPORARY TABLE relay_publications_v2 ON COMMIT DROP AS
        SELECT rel::oid AS rel, events, parents FROM relay.publications;
    """)
    run_script(sql.uninstall())
    run_script(sql.read("v1_install"))
    run_script("""
        SELECT relay.publish(rel::regclass, events, parents) FROM relay_publications_v2;
    """)
