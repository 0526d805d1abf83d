"""PostgreSQL's own row-level security, queried as the `authenticated` role."""

import json
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from tests.support import ALICE, BOB, CAROL, GRACE, as_user

Conn = psycopg.Connection[Any]

NEXUS_TABLES = (
    "nexus_tenants",
    "nexus_users",
    "nexus_cases",
    "nexus_case_messages",
    "nexus_payments",
    "nexus_notifications",
    "nexus_tenant_relationships",
    "nexus_sessions",
)


@pytest.fixture
def conn(database_url: str) -> Iterator[Conn]:
    with psycopg.connect(database_url) as connection:
        yield connection


def visible(
    conn: Conn, who: tuple[str | None, str | None], table: str, column: str = "id"
) -> set[Any]:
    with as_user(conn, *who):
        return {row[0] for row in conn.execute(f"SELECT {column} FROM {table}")}


def demo_ids(conn: Conn, table: str, where: str) -> set[str]:
    return {row[0] for row in conn.execute(f"SELECT id FROM {table} WHERE {where}")}


def test_rls_is_enabled_and_forced_on_every_nexus_table(conn: Conn) -> None:
    rows = conn.execute(
        "SELECT relname, relrowsecurity, relforcerowsecurity FROM pg_class WHERE relname = ANY(%s)",
        (list(NEXUS_TABLES),),
    ).fetchall()
    assert sorted(rows) == sorted((t, True, True) for t in NEXUS_TABLES)


def test_no_policy_is_using_true(conn: Conn) -> None:
    policies = conn.execute(
        "SELECT policyname, qual, with_check FROM pg_policies WHERE schemaname = 'public'"
    ).fetchall()
    assert len(policies) >= 15
    for name, qual, with_check in policies:
        assert qual is None or qual.strip("() ").lower() != "true", name
        assert with_check is None or with_check.strip("() ").lower() != "true", name


def test_alice_sees_alpha_rows_only(conn: Conn) -> None:
    assert visible(conn, ALICE, "nexus_tenants") == {"TNT-ALPHA001", "TNT-BETA0001"}
    assert visible(conn, ALICE, "nexus_cases") == demo_ids(
        conn, "nexus_cases", "'TNT-ALPHA001' IN (client_id, vendor_id)"
    )
    assert "CASE-AB000001" in visible(conn, ALICE, "nexus_cases")
    assert visible(conn, ALICE, "nexus_case_messages") == demo_ids(
        conn,
        "nexus_case_messages m",
        "EXISTS (SELECT 1 FROM nexus_cases c WHERE c.id = m.case_id"
        " AND 'TNT-ALPHA001' IN (c.client_id, c.vendor_id))",
    )
    assert visible(conn, ALICE, "nexus_payments") == demo_ids(
        conn, "nexus_payments", "'TNT-ALPHA001' IN (from_id, to_id)"
    )
    assert visible(conn, ALICE, "nexus_notifications") == demo_ids(
        conn,
        "nexus_notifications",
        "tenant_id = 'TNT-ALPHA001' AND (user_id = 'USR-ALIC0001' OR user_id IS NULL)",
    )
    assert {"NOTIF-AL000001", "NOTIF-AL000002"} <= visible(conn, ALICE, "nexus_notifications")
    assert "NOTIF-BE000001" not in visible(conn, ALICE, "nexus_notifications")


def test_bob_sees_what_beta_shares_with_alpha(conn: Conn) -> None:
    assert "CASE-AB000001" in visible(conn, BOB, "nexus_cases")
    assert {"MSG-AB00000001", "MSG-AB00000002", "MSG-AB00000003"} <= visible(
        conn, BOB, "nexus_case_messages"
    )
    assert {"PAY-AB000001", "PAY-AB000002"} <= visible(conn, BOB, "nexus_payments")
    assert "REL-AB000001" in visible(conn, BOB, "nexus_tenant_relationships")
    assert visible(conn, BOB, "nexus_tenants") >= {"TNT-ALPHA001", "TNT-BETA0001"}
    bob_notifications = visible(conn, BOB, "nexus_notifications")
    assert "NOTIF-BE000001" in bob_notifications
    assert not bob_notifications & {"NOTIF-AL000001", "NOTIF-AL000002"}


def test_gamma_sees_none_of_alpha_or_beta(conn: Conn) -> None:
    assert visible(conn, GRACE, "nexus_tenants") == {"TNT-GAMMA001"}
    assert visible(conn, GRACE, "nexus_users") == {"USR-GRAC0001"}
    assert visible(conn, GRACE, "nexus_cases") == set()
    assert visible(conn, GRACE, "nexus_case_messages") == set()
    assert visible(conn, GRACE, "nexus_payments") == set()
    assert visible(conn, GRACE, "nexus_tenant_relationships") == set()
    assert visible(conn, GRACE, "nexus_notifications") == {"NOTIF-GA000001"}


def test_a_tenant_wide_notification_reaches_every_user_of_its_tenant_only(conn: Conn) -> None:
    notification_id = conn.execute(
        "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title)"
        " VALUES ('TNT-ALPHA001', NULL, 'announcement', 'For all of Alpha') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    conn.commit()
    assert notification_id in visible(conn, ALICE, "nexus_notifications")
    assert notification_id in visible(conn, CAROL, "nexus_notifications")
    assert notification_id not in visible(conn, BOB, "nexus_notifications")
    assert notification_id not in visible(conn, GRACE, "nexus_notifications")
    # A user's own notification is not for the rest of the tenant.
    assert "NOTIF-AL000001" not in visible(conn, CAROL, "nexus_notifications")


def test_without_claims_nothing_is_visible(conn: Conn) -> None:
    for table in NEXUS_TABLES:
        assert visible(conn, (None, None), table, "count(*)") == {0}, table
    with conn.transaction():
        conn.execute("SET LOCAL ROLE authenticated")
        assert conn.execute("SELECT count(*) FROM nexus_cases").fetchone() == (0,)


def test_claims_of_another_shape_see_nothing(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL ROLE authenticated")
        # Top-level claims, as Supabase's auth.uid() habits would put them, do not count.
        conn.execute(
            "SELECT set_config('request.jwt.claims', %s, true)",
            (json.dumps({"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"}),),
        )
        assert conn.execute("SELECT count(*) FROM nexus_cases").fetchone() == (0,)


def test_the_password_hash_is_not_readable_as_a_user(conn: Conn) -> None:
    assert visible(conn, ALICE, "nexus_users", "email") >= {"alice@alpha.com", "bob@beta.com"}
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *ALICE):
        conn.execute("SELECT password_hash FROM nexus_users")


def test_the_notification_counts_view_runs_under_the_callers_rls(conn: Conn) -> None:
    with as_user(conn, *GRACE):
        rows = conn.execute("SELECT tenant_id FROM nexus_notification_counts").fetchall()
    assert {row[0] for row in rows} == {"TNT-GAMMA001"}


def test_a_user_posts_as_themselves_on_their_own_cases_only(conn: Conn) -> None:
    post = (
        "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
        " VALUES (%s, %s, %s, 'hi')"
    )
    with as_user(conn, *BOB):
        conn.execute(post, ("CASE-AB000001", "TNT-BETA0001", "USR-BOB00001"))
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *BOB):
        conn.execute(post, ("CASE-AB000001", "TNT-ALPHA001", "USR-ALIC0001"))  # as Alice
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *GRACE):
        conn.execute(post, ("CASE-AB000001", "TNT-GAMMA001", "USR-GRAC0001"))  # not her case


def test_a_user_cannot_change_another_tenants_payment(conn: Conn) -> None:
    with as_user(conn, *GRACE):
        updated = conn.execute(
            "UPDATE nexus_payments SET status = 'cancelled' WHERE id = 'PAY-AB000001'"
        ).rowcount
    assert updated == 0


def test_only_the_invitee_answers_an_invitation(conn: Conn) -> None:
    conn.execute(
        "INSERT INTO nexus_tenants (id, name, kind) VALUES ('TNT-DELTA001', 'Delta', 'client')"
    )
    conn.commit()
    with as_user(conn, "USR-NONE0001", "TNT-DELTA001"):
        invite = conn.execute(
            "INSERT INTO nexus_tenant_relationships (client_id, vendor_id, invited_by_tenant_id)"
            " VALUES ('TNT-DELTA001', 'TNT-BETA0001', 'TNT-DELTA001') RETURNING id"
        ).fetchone()[0]  # type: ignore[index]
    with as_user(conn, "USR-NONE0001", "TNT-DELTA001"):
        assert (
            conn.execute(
                "UPDATE nexus_tenant_relationships SET status = 'active' WHERE id = %s", (invite,)
            ).rowcount
            == 0
        )
    with as_user(conn, *BOB):
        assert (
            conn.execute(
                "UPDATE nexus_tenant_relationships SET status = 'active' WHERE id = %s", (invite,)
            ).rowcount
            == 1
        )
    assert "TNT-DELTA001" in visible(conn, BOB, "nexus_tenants")
    assert "TNT-DELTA001" not in visible(conn, ALICE, "nexus_tenants")


def test_the_login_role_sees_only_the_user_whose_email_it_checks(conn: Conn) -> None:
    with conn.transaction():
        conn.execute("SET LOCAL ROLE nexus_login")
        conn.execute("SELECT set_config('nexus.login_email', 'bob@beta.com', true)")
        rows = conn.execute("SELECT id, password_hash FROM nexus_users").fetchall()
        assert [r[0] for r in rows] == ["USR-BOB00001"]
        assert rows[0][1].startswith("$argon2")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), conn.transaction():
        conn.execute("SET LOCAL ROLE nexus_login")
        conn.execute("SELECT count(*) FROM nexus_cases")


def test_an_invitation_reveals_nobody_behind_the_invited_tenant(conn: Conn) -> None:
    with as_user(conn, *GRACE):
        conn.execute(
            "INSERT INTO nexus_tenant_relationships (client_id, vendor_id, invited_by_tenant_id)"
            " VALUES ('TNT-GAMMA001', 'TNT-BETA0001', 'TNT-GAMMA001')"
        )
    # Grace, who invited, learns nothing of Beta: not its name, not its people.
    assert visible(conn, GRACE, "nexus_tenants") == {"TNT-GAMMA001"}
    assert visible(conn, GRACE, "nexus_users") == {"USR-GRAC0001"}
    # Bob, invited, sees who invites him, and none of their people yet.
    assert "TNT-GAMMA001" in visible(conn, BOB, "nexus_tenants")
    assert "USR-GRAC0001" not in visible(conn, BOB, "nexus_users")
    with as_user(conn, *BOB):
        conn.execute(
            "UPDATE nexus_tenant_relationships SET status = 'declined'"
            " WHERE client_id = 'TNT-GAMMA001' AND vendor_id = 'TNT-BETA0001'"
        )
    assert "TNT-GAMMA001" not in visible(conn, BOB, "nexus_tenants")  # declined: gone again


def test_cases_and_payments_need_an_active_relationship(conn: Conn) -> None:
    payment = "INSERT INTO nexus_payments (from_id, to_id, amount) VALUES (%s, %s, 5)"
    case = "INSERT INTO nexus_cases (client_id, vendor_id, subject) VALUES (%s, %s, 'x')"
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *GRACE):
        conn.execute(payment, ("TNT-GAMMA001", "TNT-ALPHA001"))
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *GRACE):
        conn.execute(case, ("TNT-GAMMA001", "TNT-BETA0001"))
    with as_user(conn, *ALICE):
        conn.execute(payment, ("TNT-ALPHA001", "TNT-BETA0001"))
        conn.execute(case, ("TNT-ALPHA001", "TNT-BETA0001"))
