"""PostgreSQL's own row-level security, queried as the `authenticated` role."""

import json
import secrets
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
    "nexus_invitations",
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


# --- Invitations (migration 0008) ------------------------------------------------------


def new_tenant(conn: Conn, kind: str) -> tuple[str, str]:
    """A tenant of this test's own, and a user id in its claims (no user row needed)."""
    suffix = secrets.token_hex(4).upper()
    conn.execute(
        "INSERT INTO nexus_tenants (id, name, kind) VALUES (%s, %s, %s)",
        (f"TNT-I{suffix}", f"Invitations {suffix}", kind),
    )
    conn.commit()
    return (f"USR-I{suffix}", f"TNT-I{suffix}")


def no_tenant() -> str:
    return f"TNT-N{secrets.token_hex(4).upper()}"


def invite(conn: Conn, who: tuple[str, str], invitee: str) -> str:
    with as_user(conn, *who):
        row = conn.execute(
            "INSERT INTO nexus_invitations (inviter_tenant_id, invitee_tenant_id)"
            " VALUES (%s, %s) RETURNING id",
            (who[1], invitee),
        ).fetchone()
    assert row is not None
    return str(row[0])


def answer(conn: Conn, who: tuple[str, str], invitation: str, status: str) -> int:
    with as_user(conn, *who):
        return conn.execute(
            "UPDATE nexus_invitations SET status = %s WHERE id = %s", (status, invitation)
        ).rowcount


def as_seen(conn: Conn, who: tuple[str, str], invitation: str) -> dict[str, Any]:
    with as_user(conn, *who):
        cursor = conn.cursor(row_factory=psycopg.rows.dict_row)
        row = cursor.execute("SELECT * FROM nexus_invitations WHERE id = %s", (invitation,))
        return dict(row.fetchone() or {})


def test_an_invitation_to_an_id_that_is_no_tenant_looks_like_any_other(conn: Conn) -> None:
    inviter = new_tenant(conn, "client")
    _, existing = new_tenant(conn, "vendor")
    missing = no_tenant()
    real, unknown = invite(conn, inviter, existing), invite(conn, inviter, missing)

    def shape(row: dict[str, Any], invitee: str) -> dict[str, Any]:
        assert row["invitee_tenant_id"] == invitee and row["created_at"] is not None
        return {k: v for k, v in row.items() if k not in ("id", "invitee_tenant_id", "created_at")}

    seen = {"real": as_seen(conn, inviter, real), "unknown": as_seen(conn, inviter, unknown)}
    assert (
        shape(seen["real"], existing)
        == shape(seen["unknown"], missing)
        == {
            "inviter_tenant_id": inviter[1],
            "status": "invited",
            "answered_at": None,
        }
    )
    # The inviter learns nothing else: no tenant row, no user, no relationship.
    assert visible(conn, inviter, "nexus_tenants") == {inviter[1]}
    assert visible(conn, inviter, "nexus_tenant_relationships") == set()
    assert visible(conn, inviter, "nexus_invitations") == {real, unknown}


def test_the_invitee_answers_once_and_accepting_makes_the_relationship(conn: Conn) -> None:
    vendor = new_tenant(conn, "vendor")
    client = new_tenant(conn, "client")
    third = new_tenant(conn, "client")
    invitation = invite(conn, vendor, client[1])  # a vendor invites a client
    crossed = invite(conn, client, vendor[1])  # who invites it too
    assert visible(conn, client, "nexus_invitations") == {invitation, crossed}
    assert visible(conn, third, "nexus_invitations") == set()
    assert answer(conn, vendor, invitation, "accepted") == 0  # not the inviter
    assert answer(conn, third, invitation, "accepted") == 0  # nor a third tenant
    assert answer(conn, client, invitation, "accepted") == 1
    assert as_seen(conn, client, invitation)["answered_at"] is not None
    assert answer(conn, client, invitation, "declined") == 0  # answered already
    assert as_seen(conn, vendor, crossed)["status"] == "accepted"  # moot: answered with it

    # Client and vendor as the portal decided: the inviter's kind.
    for who in (vendor, client):
        with as_user(conn, *who):
            rows = conn.execute(
                "SELECT client_id, vendor_id, status, invited_by_tenant_id"
                " FROM nexus_tenant_relationships"
            ).fetchall()
        assert rows == [(client[1], vendor[1], "active", vendor[1])]
    assert visible(conn, third, "nexus_tenant_relationships") == set()
    assert visible(conn, third, "nexus_tenants") == {third[1]}
    assert client[1] in visible(conn, vendor, "nexus_tenants")

    # A client's accepted invitation: the inviter is the client.
    other = new_tenant(conn, "vendor")
    assert answer(conn, other, invite(conn, third, other[1]), "accepted") == 1
    with as_user(conn, *other):
        made = conn.execute("SELECT client_id, vendor_id FROM nexus_tenant_relationships")
        assert made.fetchall() == [(third[1], other[1])]


def test_an_invitation_can_only_be_answered(conn: Conn) -> None:
    inviter = new_tenant(conn, "client")
    invitee = new_tenant(conn, "vendor")
    invitation = invite(conn, inviter, invitee[1])
    # Back to 'invited', or any other status: the policy's check refuses it.
    for status in ("invited", "withdrawn"):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *invitee):
            conn.execute(
                "UPDATE nexus_invitations SET status = %s WHERE id = %s", (status, invitation)
            )
    for column, value in (("invitee_tenant_id", no_tenant()), ("answered_at", "2026-01-01")):
        with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *invitee):
            conn.execute(
                f"UPDATE nexus_invitations SET {column} = %s WHERE id = %s", (value, invitation)
            )
    assert answer(conn, invitee, invitation, "declined") == 1
    # Final, even for a role around RLS.
    with pytest.raises(psycopg.errors.CheckViolation), conn.transaction():
        conn.execute(
            "UPDATE nexus_invitations SET status = 'accepted' WHERE id = %s", (invitation,)
        )
    assert visible(conn, invitee, "nexus_tenant_relationships") == set()


def test_an_invitation_is_sent_as_ones_own_tenant_and_open(conn: Conn) -> None:
    inviter = new_tenant(conn, "client")
    _, other = new_tenant(conn, "client")
    insert = "INSERT INTO nexus_invitations (inviter_tenant_id, invitee_tenant_id) VALUES (%s, %s)"
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *inviter):
        conn.execute(insert, (other, inviter[1]))  # as another tenant
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *inviter):
        conn.execute(
            "INSERT INTO nexus_invitations (inviter_tenant_id, invitee_tenant_id, status)"
            " VALUES (%s, %s, 'accepted')",
            (inviter[1], other),
        )
    with pytest.raises(psycopg.errors.CheckViolation), as_user(conn, *inviter):
        conn.execute(insert, (inviter[1], "not-a-tenant-id"))
    with pytest.raises(psycopg.errors.CheckViolation), as_user(conn, *inviter):
        conn.execute(insert, (inviter[1], inviter[1]))
    # One open invitation per pair: the portal inserts ON CONFLICT DO NOTHING.
    first = invite(conn, inviter, other)
    with as_user(conn, *inviter):
        again = conn.execute(
            insert + " ON CONFLICT (inviter_tenant_id, invitee_tenant_id)"
            " WHERE status = 'invited' DO NOTHING",
            (inviter[1], other),
        ).rowcount
    assert again == 0
    assert visible(conn, inviter, "nexus_invitations") == {first}


def test_users_write_no_relationship_but_by_accepting(conn: Conn) -> None:
    client = new_tenant(conn, "client")
    _, vendor = new_tenant(conn, "vendor")
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *client):
        conn.execute(
            "INSERT INTO nexus_tenant_relationships (client_id, vendor_id, invited_by_tenant_id,"
            " status) VALUES (%s, %s, %s, 'active')",
            (client[1], vendor, client[1]),
        )
    with pytest.raises(psycopg.errors.InsufficientPrivilege), as_user(conn, *BOB):
        conn.execute("UPDATE nexus_tenant_relationships SET status = 'declined'")


def test_an_invitation_shows_the_invitee_who_invites_and_nothing_more(conn: Conn) -> None:
    inviter = new_tenant(conn, "client")
    invitee = new_tenant(conn, "vendor")
    invitation = invite(conn, inviter, invitee[1])
    # The inviter learns nothing of the invitee; the invitee sees who invites,
    # and none of their people.
    assert visible(conn, inviter, "nexus_tenants") == {inviter[1]}
    assert visible(conn, invitee, "nexus_tenants") == {inviter[1], invitee[1]}
    assert answer(conn, invitee, invitation, "declined") == 1
    assert visible(conn, invitee, "nexus_tenants") == {invitee[1]}  # declined: gone again


def test_the_accepting_trigger_runs_as_its_owner_and_nobody_calls_it(conn: Conn) -> None:
    for function in ("nexus_accept_invitation", "nexus_invitation_answered"):
        row = conn.execute(
            "SELECT prosecdef, proconfig, has_function_privilege('authenticated', oid, 'EXECUTE')"
            " FROM pg_proc WHERE proname = %s",
            (function,),
        ).fetchone()
        assert row is not None
        definer, config, executable = row
        assert definer == (function == "nexus_accept_invitation")
        assert config == ["search_path=pg_catalog, pg_temp"]
        assert not executable
