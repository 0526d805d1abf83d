"""The seed's two-session scenarios, in a real browser: portal, relay and PostgreSQL all real.

Alice (Alpha, client) and Bob (Beta, vendor) share CASE-AB000001; Grace (Gamma)
shares nothing with them; Dave (Delta) invites Bob. Each person has a browser
context of their own. Waits are for what the page shows, with a timeout.
"""

import json
import secrets
from collections.abc import Callable
from typing import Any

import psycopg
from argon2 import PasswordHasher
from playwright.sync_api import expect

from tests.portal.conftest import DAVE, Session
from tests.support import WAIT, PortalProcess, RelayProcess, eventually

Conn = psycopg.Connection[Any]
Person = Callable[[str, str, str], Session]

CASE = "/nexus/cases/CASE-AB000001"


def alice(people: Person) -> Session:
    return people("alice", "alice@alpha.com", "alpha-demo-pass")


def bob(people: Person) -> Session:
    return people("bob", "bob@beta.com", "beta-demo-pass")


def grace(people: Person) -> Session:
    return people("grace", "grace@gamma.com", "gamma-demo-pass")


def unique(text: str) -> str:
    return f"{text} {secrets.token_hex(3)}"


def new_payment(db: Conn, reference: str, status: str = "pending") -> str:
    row = db.execute(
        "INSERT INTO nexus_payments (from_id, to_id, amount, currency, status, reference)"
        " VALUES ('TNT-ALPHA001', 'TNT-BETA0001', 321.50, 'EUR', %s, %s) RETURNING id",
        (status, reference),
    ).fetchone()
    assert row is not None
    return str(row[0])


def bob_writes(db: Conn, body: str) -> None:
    """Bob posts on CASE-AB000001, by plain SQL."""
    db.execute(
        "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
        " VALUES ('CASE-AB000001', 'TNT-BETA0001', 'USR-BOB00001', %s)",
        (body,),
    )


def notify(
    db: Conn, tenant: str, user: str | None, title: str, priority: str = "normal", body: str = ""
) -> None:
    db.execute(
        "INSERT INTO nexus_notifications"
        " (tenant_id, user_id, notification_type, title, body, priority)"
        " VALUES (%s, %s, 'test', %s, %s, %s)",
        (tenant, user, title, body, priority),
    )


def unread(db: Conn) -> int:
    """Alice's unread notifications: her own and her tenant's."""
    row = db.execute(
        "SELECT count(*) FROM nexus_notifications WHERE read_at IS NULL"
        " AND tenant_id = 'TNT-ALPHA001' AND (user_id = 'USR-ALIC0001' OR user_id IS NULL)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def no_csp_violations(*sessions: Session) -> None:
    for session in sessions:
        violations = [e for e in session.console_errors if "Content Security Policy" in e]
        assert violations == [], f"{session.name}: {violations}"


# --- The seed's scenarios ------------------------------------------------------------


def test_1_alice_posts_a_message_and_bob_sees_it_without_reload(people: Person) -> None:
    a, b = alice(people), bob(people)
    a.open(CASE)
    b.open(CASE)
    text = unique("Belts are in stock, see you Tuesday")
    a.page.fill("#message-body", text)
    a.page.click("#message-form button[type=submit]")
    expect(b.page.locator("#case-thread")).to_contain_text(text)
    expect(a.page.locator("#case-thread")).to_contain_text(text)
    expect(a.page.locator("#message-body")).to_have_value("")  # the form was reset
    no_csp_violations(a, b)


def test_2_a_payment_status_change_shows_in_both_tenants_tables(people: Person, pdb: Conn) -> None:
    payment_id = new_payment(pdb, unique("Scenario 2"))
    a, b = alice(people), bob(people)
    a.open("/nexus/payments")
    b.open("/nexus/payments")
    alice_row = a.page.locator(f"#payments-list tr#{payment_id}")
    bob_row = b.page.locator(f"#payments-list tr#{payment_id}")
    expect(bob_row.locator("[data-status]")).to_have_text("pending")

    alice_row.get_by_role("button", name="Approve").click()  # in the UI
    expect(alice_row.locator("[data-status]")).to_have_text("approved")
    expect(bob_row.locator("[data-status]")).to_have_text("approved")

    pdb.execute(
        "UPDATE nexus_payments SET status = 'paid' WHERE id = %s", (payment_id,)
    )  # by plain SQL
    expect(alice_row.locator("[data-status]")).to_have_text("paid")
    expect(bob_row.locator("[data-status]")).to_have_text("paid")


def test_3_a_notification_for_alice_increments_her_badge(people: Person, pdb: Conn) -> None:
    a = alice(people)
    notify(pdb, "TNT-ALPHA001", "USR-ALIC0001", unique("Unread before the page loads"))
    before = unread(pdb)
    # The badge as the server wrote it, before the realtime client refreshes it.
    response = a.page.goto(f"{a.portal.url}/nexus/")
    assert response is not None
    served = a.page.evaluate(
        "html => new DOMParser().parseFromString(html, 'text/html')"
        ".querySelector('#notification-badge').textContent.trim()",
        response.text(),
    )
    assert served == str(before)
    a.wait_live()
    badge = a.page.locator("#notification-badge")
    expect(badge).to_have_text(str(before))
    notify(pdb, "TNT-ALPHA001", "USR-ALIC0001", unique("Scenario 3"))
    expect(badge).to_have_text(str(before + 1))
    expect(a.page.locator("#dashboard-counts")).to_contain_text(
        f"{before + 1} unread notifications"
    )


def test_4_a_high_priority_notification_shows_a_toast(people: Person, pdb: Conn) -> None:
    a = alice(people)
    a.open("/nexus/payments")
    title = unique("Payment PAY-AB000001 is overdue")
    notify(pdb, "TNT-ALPHA001", None, title, "high", "Please approve it today.")
    toast = a.page.locator("#toast-container .toast")
    badge = a.page.locator("#notification-badge")
    expect(toast).to_contain_text(title)
    expect(toast).to_contain_text("Please approve it today.")
    expect(badge).to_have_text(str(unread(pdb)))  # refreshed for the first one
    notify(pdb, "TNT-ALPHA001", None, unique("Just so you know"), "normal")
    expect(badge).to_have_text(str(unread(pdb)))  # the second one has arrived
    expect(toast).to_have_count(1)  # normal priority: badge only, no toast


def test_5_bob_accepts_an_invite_and_both_lists_update(people: Person, pdb: Conn) -> None:
    pdb.execute("DELETE FROM nexus_invitations WHERE inviter_tenant_id = 'TNT-DELTA001'")
    pdb.execute(
        "DELETE FROM nexus_tenant_relationships"
        " WHERE client_id = 'TNT-DELTA001' AND vendor_id = 'TNT-BETA0001'"
    )
    d = people("dave", DAVE[1], DAVE[3])
    b = bob(people)
    d.open("/nexus/relationships")
    b.open("/nexus/relationships")
    # Dave invites Beta, and an id that is no tenant, in the UI: the same to him.
    nobody = f"TNT-N{secrets.token_hex(4).upper()}"
    sent = d.page.locator("#invitations-sent tr")
    for tenant_id in ("TNT-BETA0001", nobody):
        d.page.fill("input[name=tenant_id]", tenant_id)
        d.page.click("form[hx-post='/nexus/relationships'] button[type=submit]")
        expect(d.page.locator("#invite-sent")).to_contain_text(f"Invitation sent to {tenant_id}")
        expect(sent.filter(has_text=tenant_id)).to_contain_text("waiting for them")
    rows = [sent.filter(has_text=t) for t in ("TNT-BETA0001", nobody)]
    assert rows[0].inner_html().replace("TNT-BETA0001", nobody) == rows[1].inner_html()
    bob_row = b.page.locator("#invitations-received tr", has_text="Delta Freight")
    expect(bob_row).to_contain_text("they invited you")
    bob_row.get_by_role("button", name="Accept").click()
    expect(
        b.page.locator("#relationships tr", has_text="Delta Freight").locator("[data-status]")
    ).to_have_text("active")
    expect(b.page.locator("#invitations-received")).to_have_count(0)
    # Dave's list, live: Beta is a relationship now, by name; the other still waits.
    expect(
        d.page.locator("#relationships tr", has_text="Beta Services").locator("[data-status]")
    ).to_have_text("active")
    expect(sent.filter(has_text="TNT-BETA0001")).to_have_count(0)
    expect(sent.filter(has_text=nobody)).to_contain_text("waiting for them")
    no_csp_violations(d, b)
    pdb.execute("DELETE FROM nexus_invitations WHERE inviter_tenant_id = 'TNT-DELTA001'")


def test_6_navigating_away_and_back_reconnects_with_no_stale_data(
    people: Person, pdb: Conn
) -> None:
    a = alice(people)
    a.open(CASE)
    a.open("/nexus/payments")
    while_away = unique("Written while Alice was on another page")
    bob_writes(pdb, while_away)
    a.page.go_back()
    a.wait_live()
    expect(a.page.locator("#case-thread")).to_contain_text(while_away)
    live_again = unique("And this one live")
    bob_writes(pdb, live_again)
    expect(a.page.locator("#case-thread")).to_contain_text(live_again)


def test_7_closing_the_tab_ends_its_connection_and_subscriptions(
    people: Person, relay: RelayProcess
) -> None:
    before = relay.metrics()
    a = alice(people)
    a.open(CASE)
    during = relay.metrics()
    assert during["relay_connections"] == before["relay_connections"] + 1
    # The case page subscribes to the case's messages and to notifications (badge).
    assert during["relay_subscriptions"] >= before["relay_subscriptions"] + 2
    a.page.close()
    eventually(lambda: relay.metrics()["relay_connections"] == before["relay_connections"])
    assert relay.metrics()["relay_subscriptions"] == before["relay_subscriptions"]


# --- Beyond the seed ------------------------------------------------------------------


def test_gamma_sees_none_of_alpha_or_betas_events(people: Person, pdb: Conn) -> None:
    a, g = alice(people), grace(people)
    g.open("/nexus/")
    a.open(CASE)
    a.page.fill("#message-body", unique("Alpha and Beta only"))
    a.page.click("#message-form button[type=submit]")
    payment_id = new_payment(pdb, unique("Alpha to Beta"))
    pdb.execute("UPDATE nexus_payments SET status = 'approved' WHERE id = %s", (payment_id,))
    notify(pdb, "TNT-ALPHA001", None, unique("For all of Alpha"), "high")
    notify(pdb, "TNT-BETA0001", None, unique("For all of Beta"), "high")
    fence = unique("For Grace")
    notify(pdb, "TNT-GAMMA001", "USR-GRAC0001", fence, "high")
    expect(g.page.locator("#toast-container")).to_contain_text(
        fence
    )  # everything before it has arrived
    changes = [json.loads(f) for f in g.frames_received if '"type":"change"' in f]
    assert [c["new"]["title"] for c in changes] == [fence]
    expect(g.page.locator("#toast-container .toast")).to_have_count(1)


def test_a_notification_title_with_html_renders_as_text(people: Person, pdb: Conn) -> None:
    a = alice(people)
    a.open("/nexus/notifications")
    title = "<img src=x onerror=alert(1)>"
    notify(pdb, "TNT-ALPHA001", "USR-ALIC0001", title, "high", "<script>alert(2)</script>")
    toast = a.page.locator("#toast-container .toast").last
    expect(toast).to_contain_text(title)
    expect(toast).to_contain_text("<script>alert(2)</script>")
    assert a.page.locator("#toast-container img").count() == 0
    expect(a.page.locator("#notifications-list")).to_contain_text(title)  # server-side: escaped too
    assert a.page.locator("#notifications-list img").count() == 0
    assert a.dialogs == []
    no_csp_violations(a)


def test_the_relay_restarts_mid_session_and_the_page_catches_up(
    people: Person, relay: RelayProcess, pdb: Conn
) -> None:
    a = alice(people)
    a.open(CASE)
    status = a.page.locator("#realtime-status")
    relay.stop()
    expect(status).to_have_attribute("data-state", "reconnecting")
    while_down = unique("Posted while the relay was down")
    bob_writes(pdb, while_down)
    relay.start()
    expect(status).to_have_attribute("data-state", "live", timeout=8 * WAIT * 1000)
    expect(a.page.locator("#case-thread")).to_contain_text(while_down)
    after = unique("And live again")
    bob_writes(pdb, after)
    expect(a.page.locator("#case-thread")).to_contain_text(after)


def test_signing_out_ends_live_updates(people: Person, portal: PortalProcess) -> None:
    a = alice(people)
    a.open("/nexus/")
    a.page.click("button:has-text('Sign out')")
    expect(a.page).to_have_url(f"{portal.url}/nexus/login")
    response = a.page.request.get(f"{portal.url}/nexus/api/realtime-config")
    assert response.status == 401


def new_alpha_user(db: Conn) -> tuple[str, str]:
    """A user of Alpha of the test's own (moving or deactivating them spares the demo's)."""
    suffix = secrets.token_hex(4).upper()
    user_id, email = f"USR-B{suffix}", f"b{suffix.lower()}@alpha.com"
    db.execute(
        "INSERT INTO nexus_users (id, tenant_id, email, display_name, password_hash)"
        " VALUES (%s, 'TNT-ALPHA001', %s, 'Browser test', %s)",
        (user_id, email, PasswordHasher().hash("browser-test-pass")),
    )
    return user_id, email


def test_a_revoked_token_is_replaced_and_the_page_stays_live(people: Person, pdb: Conn) -> None:
    user_id, email = new_alpha_user(pdb)
    try:
        u = people("moved", email, "browser-test-pass")
        u.open(CASE)
        with u.page.expect_websocket():  # closed with 4010, back with a new token
            pdb.execute("SELECT relay.revoke(%s, 'test')", (user_id,))
        u.wait_live()
        after = unique("After the revocation")
        bob_writes(pdb, after)
        expect(u.page.locator("#case-thread")).to_contain_text(after)
        closing = [json.loads(f) for f in u.frames_received if '"closing"' in f]
        assert [f["reason"] for f in closing] == ["token_revoked"]
    finally:
        pdb.execute("DELETE FROM nexus_users WHERE id = %s", (user_id,))


def test_a_user_moved_to_another_tenant_is_shown_signed_out(people: Person, pdb: Conn) -> None:
    user_id, email = new_alpha_user(pdb)
    try:
        u = people("moved", email, "browser-test-pass")
        u.open(CASE)
        pdb.execute("UPDATE nexus_users SET tenant_id = 'TNT-GAMMA001' WHERE id = %s", (user_id,))
        status = u.page.locator("#realtime-status")
        expect(status).to_have_attribute("data-state", "signed-out")
        expect(status).to_have_text("signed out")
        hidden = unique("Alpha's, after the move")
        bob_writes(pdb, hidden)
        assert hidden not in "".join(u.frames_received)
        no_csp_violations(u)
    finally:
        pdb.execute("DELETE FROM nexus_users WHERE id = %s", (user_id,))


def test_a_narrow_screen_shows_every_column(people: Person) -> None:
    a = alice(people)
    a.page.set_viewport_size({"width": 380, "height": 800})
    page = a.open("/nexus/payments")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 380  # nothing runs off the side
    expect(page.locator("#payments-list")).to_contain_text("PAY-AB000001")


def test_a_dropped_connection_resumes_and_replays_what_was_missed(
    people: Person, pdb: Conn
) -> None:
    a = alice(people)
    a.open(CASE)
    status = a.page.locator("#realtime-status")
    a.page.evaluate("window.NexusRealtime.socket.close(4000, 'test: network blip')")
    expect(status).to_have_attribute("data-state", "reconnecting")
    missed = unique("Written during the blip")
    bob_writes(pdb, missed)  # before the client is back: it must get it by replay
    expect(status).to_have_attribute("data-state", "live")
    expect(a.page.locator("#case-thread")).to_contain_text(missed)
    frames = [json.loads(f) for f in a.frames_received]
    replayed = [f for f in frames if f["type"] in ("replayed", "gap")]
    assert replayed and all(f["type"] == "replayed" for f in replayed), replayed
    acks = [f for f in frames if f["type"] == "subscribed"]
    assert any(f["resumed"] for f in acks)
