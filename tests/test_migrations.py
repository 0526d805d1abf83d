"""Migrations go up, all the way down, and up again, on a real PostgreSQL."""

from collections.abc import Callable

import psycopg

from portal import demo_data, migrations

NEXUS_TABLES = {
    "nexus_tenants",
    "nexus_users",
    "nexus_cases",
    "nexus_case_messages",
    "nexus_payments",
    "nexus_notifications",
    "nexus_tenant_relationships",
    "nexus_sessions",
}


def public_tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        return {
            row[0]
            for row in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        }


def relay_schema_exists(url: str) -> bool:
    with psycopg.connect(url) as conn:
        return bool(conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'relay'").fetchone())


def test_upgrade_downgrade_upgrade(new_database: Callable[[], str]) -> None:
    url = new_database()

    migrations.upgrade(url)
    assert public_tables(url) >= NEXUS_TABLES
    assert relay_schema_exists(url)
    demo_data.load(url)

    migrations.downgrade(url, "base")
    assert public_tables(url) == {"alembic_version"}
    assert not relay_schema_exists(url)
    with psycopg.connect(url) as conn:
        functions = conn.execute(
            "SELECT proname FROM pg_proc WHERE pronamespace = 'public'::regnamespace"
        ).fetchall()
        assert functions == []
        views = conn.execute("SELECT viewname FROM pg_views WHERE schemaname = 'public'").fetchall()
        assert views == []

    migrations.upgrade(url)
    assert public_tables(url) >= NEXUS_TABLES
    demo_data.load(url)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        assert row is not None
        published = conn.execute("SELECT count(*) FROM relay.published_tables").fetchone()
        assert published == (4,)


def test_every_revision_downgrades_one_step(new_database: Callable[[], str]) -> None:
    url = new_database()
    migrations.upgrade(url)
    for _ in range(5):
        migrations.downgrade(url, "-1")
    assert public_tables(url) == {"alembic_version"}


def test_demo_data_is_idempotent(database_url: str) -> None:
    def counts() -> tuple[object, ...]:
        with psycopg.connect(database_url) as conn:
            return tuple(
                conn.execute(f"SELECT count(*) FROM {table}").fetchone()
                for table in sorted(NEXUS_TABLES)
            )

    before = counts()
    demo_data.load(database_url)
    assert counts() == before
