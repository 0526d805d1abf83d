"""Migrations go up, all the way down, and up again, on a real PostgreSQL."""

import json
import threading
from collections.abc import Callable
from pathlib import Path

import psycopg

from portal import demo_data, migrations
from tests.support import WAIT, LogTail, eventually

ROOT = Path(__file__).resolve().parent.parent
NEXUS_TABLES = {
    "nexus_tenants",
    "nexus_users",
    "nexus_cases",
    "nexus_case_messages",
    "nexus_payments",
    "nexus_notifications",
    "nexus_tenant_relationships",
    "nexus_invitations",
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
        assert published == (5,)


def test_every_revision_downgrades_one_step(new_database: Callable[[], str]) -> None:
    url = new_database()
    migrations.upgrade(url)
    revisions = len(list((ROOT / "alembic" / "versions").glob("0*.py")))
    for _ in range(revisions):
        migrations.downgrade(url, "-1")
    assert public_tables(url) == {"alembic_version"}


def test_open_invitations_move_to_their_table_and_back(new_database: Callable[[], str]) -> None:
    """0008 moves relationships of status 'invited' to nexus_invitations and leaves
    the others; its downgrade moves the open invitations back, but for those to
    ids that are no tenant, which a relationship cannot hold."""
    url = new_database()
    migrations.upgrade(url, "0007")
    demo_data.load(url)
    relationships = (
        "SELECT client_id, vendor_id, status, invited_by_tenant_id FROM nexus_tenant_relationships"
    )
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(
            "INSERT INTO nexus_tenants (id, name, kind) VALUES ('TNT-DELTA001', 'Delta', 'vendor')"
        )
        # Gamma (a client) invited Beta; Delta (a vendor) invited Gamma.
        conn.execute(
            "INSERT INTO nexus_tenant_relationships (client_id, vendor_id, invited_by_tenant_id)"
            " VALUES ('TNT-GAMMA001', 'TNT-BETA0001', 'TNT-GAMMA001'),"
            " ('TNT-GAMMA001', 'TNT-DELTA001', 'TNT-DELTA001')"
        )
        before = set(conn.execute(relationships).fetchall())

    migrations.upgrade(url, "0008")
    with psycopg.connect(url, autocommit=True) as conn:
        assert set(conn.execute(relationships).fetchall()) == {
            ("TNT-ALPHA001", "TNT-BETA0001", "active", "TNT-ALPHA001")
        }
        invitations = (
            "SELECT inviter_tenant_id, invitee_tenant_id, status, answered_at"
            " FROM nexus_invitations"
        )
        assert set(conn.execute(invitations).fetchall()) == {
            ("TNT-GAMMA001", "TNT-BETA0001", "invited", None),
            ("TNT-DELTA001", "TNT-GAMMA001", "invited", None),
        }
        # One to an id that is no tenant, and one answered: neither goes back.
        conn.execute(
            "INSERT INTO nexus_invitations (inviter_tenant_id, invitee_tenant_id)"
            " VALUES ('TNT-GAMMA001', 'TNT-NOBODY01'), ('TNT-DELTA001', 'TNT-ALPHA001')"
        )
        conn.execute(
            "UPDATE nexus_invitations SET status = 'declined'"
            " WHERE invitee_tenant_id = 'TNT-ALPHA001'"
        )

    migrations.downgrade(url, "0007")
    with psycopg.connect(url, autocommit=True) as conn:
        assert set(conn.execute(relationships).fetchall()) == before
    assert "nexus_invitations" not in public_tables(url)
    migrations.upgrade(url)
    assert public_tables(url) >= NEXUS_TABLES


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


def test_upgrading_to_the_log_under_writes_loses_no_change(
    new_database: Callable[[], str],
) -> None:
    """0006 moves the trigger layer from NOTIFY payloads to the log while writers
    write: every committed change was either notified (before) or logged (after)."""
    url = new_database()
    migrations.upgrade(url, "0005")
    demo_data.load(url)
    notified = psycopg.connect(url, autocommit=True)
    notified.execute("LISTEN relay_changes")
    committed: list[str] = []
    failures: list[BaseException] = []
    stop = threading.Event()

    def write() -> None:
        with psycopg.connect(url, autocommit=True) as writer:
            while not stop.is_set():
                try:
                    row = writer.execute(
                        "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
                        " VALUES ('TNT-BETA0001', 'upgrade', 'during') RETURNING id"
                    ).fetchone()
                except psycopg.Error as exc:  # a writer must not fail because of the upgrade
                    failures.append(exc)
                    return
                assert row is not None
                committed.append(str(row[0]))

    writers = [threading.Thread(target=write) for _ in range(2)]
    for thread in writers:
        thread.start()
    try:
        eventually(lambda: len(committed) >= 50)
        migrations.upgrade(url)
        upgraded = len(committed)
        eventually(lambda: len(committed) >= upgraded + 50)
    finally:
        stop.set()
        for thread in writers:
            thread.join(WAIT)
    assert failures == []

    heard = {
        json.loads(n.payload)["new"]["id"]
        for n in notified.notifies(timeout=1, stop_after=len(committed))
        if n.payload.startswith('{"v":1') and '"new"' in n.payload
    }
    notified.close()
    tail = LogTail(url, from_tick=1)  # the tick the upgrade took: the log starts there
    logged = {change.new["id"] for change in tail.take() if change.table.endswith("notifications")}
    tail.close()
    assert not heard & logged, "a change both notified and logged"
    assert set(committed) == heard | logged, "a committed change neither notified nor logged"
    assert heard and logged


def test_0009_adds_relay_broadcast_to_a_database_without_it_and_takes_it_away(
    new_database: Callable[[], str],
) -> None:
    url = new_database()
    broadcast = "SELECT to_regprocedure('relay.broadcast(text, text, jsonb, boolean)')"
    public = (
        "SELECT has_function_privilege('public', 'relay.broadcast(text, text, jsonb, boolean)',"
        " 'EXECUTE')"
    )
    migrations.upgrade(url, "0008")
    with psycopg.connect(url) as conn:
        assert conn.execute(broadcast).fetchone() == (None,)
    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as conn:
        assert conn.execute(broadcast).fetchone() != (None,)
        assert conn.execute(public).fetchone() == (False,)  # never PUBLIC's
        conn.execute("SELECT relay.broadcast('room:x', 'e', '{}')")
    migrations.downgrade(url, "0008")
    with psycopg.connect(url) as conn:
        assert conn.execute(broadcast).fetchone() == (None,)
