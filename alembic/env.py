"""Alembic environment: migrations run against DATABASE_URL.

The URL comes from ``config.attributes["database_url"]`` when a program calls
Alembic (the demo, the tests), else from the ``DATABASE_URL`` environment
variable. Plain ``postgresql://`` URLs are run with the psycopg 3 driver.
"""

import os

from alembic import context
from sqlalchemy import create_engine, pool

from portal.database_url import for_sqlalchemy

config = context.config


def database_url() -> str:
    url = config.attributes.get("database_url") or os.environ.get("DATABASE_URL")
    if not url:
        raise SystemExit("DATABASE_URL is not set: say which PostgreSQL to migrate.")
    return for_sqlalchemy(url).render_as_string(hide_password=False)


def run_migrations_offline() -> None:
    context.configure(url=database_url(), literal_binds=True, transaction_per_migration=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = create_engine(database_url(), poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Each revision in its own transaction: a failed one leaves the
        # database at the previous revision, not half-way through.
        context.configure(connection=connection, transaction_per_migration=True)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
