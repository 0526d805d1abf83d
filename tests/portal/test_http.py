"""The portal over HTTP: sign-in, sessions, CSRF, tenancy, input, headers, the realtime config."""

import asyncio
import re
import secrets
import statistics
import time
import urllib.parse
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest

from tests.support import JWT_SECRET, WAIT, PortalProcess, client, csrf_of, signed_in


@pytest.fixture
def alice(portal: PortalProcess) -> Iterator[httpx.Client]:
    http = signed_in(portal, "alice@alpha.com", "alpha-demo-pass")
    yield http
    http.close()


@pytest.fixture
def grace(portal: PortalProcess) -> Iterator[httpx.Client]:
    http = signed_in(portal, "grace@gamma.com", "gamma-demo-pass")
    yield http
    http.close()


def test_signed_out_pages_lead_to_the_login(portal: PortalProcess) -> None:
    with client(portal) as http:
        response = http.get("/nexus/cases")
        assert response.status_code == 303
        assert response.headers["location"] == "/nexus/login?next=%2Fnexus%2Fcases"
        partial = http.get("/nexus/payments/list", headers={"HX-Request": "true"})
        assert (partial.status_code, partial.headers["HX-Redirect"]) == (401, "/nexus/login")
        config = http.get("/nexus/api/realtime-config")
        assert config.status_code == 401
        assert config.json() == {"error": "not signed in"}


def test_sign_in_sets_a_safe_session_cookie(portal: PortalProcess) -> None:
    with client(portal) as http:
        token = csrf_of(http)
        wrong = http.post(
            "/nexus/login",
            data={"email": "alice@alpha.com", "password": "nope", "csrf_token": token},
        )
        assert wrong.status_code == 401
        assert "Wrong email or password." in wrong.text
        unknown = http.post(
            "/nexus/login", data={"email": "who@nowhere.test", "password": "x", "csrf_token": token}
        )
        assert unknown.status_code == 401
        assert "Wrong email or password." in unknown.text  # the same answer: no email enumeration
        right = http.post(
            "/nexus/login",
            data={"email": "Alice@Alpha.com ", "password": "alpha-demo-pass", "csrf_token": token},
        )
        assert (right.status_code, right.headers["location"]) == (303, "/nexus/")
        cookie = right.headers["set-cookie"].lower()
        assert "httponly" in cookie
        assert "samesite=lax" in cookie
        assert http.get("/nexus/").status_code == 200


def test_sign_in_never_redirects_elsewhere(portal: PortalProcess) -> None:
    with client(portal) as http:
        token = csrf_of(http)
        for next_path in ("https://evil.example/", "//evil.example/", "/nexus/cases"):
            response = http.post(
                "/nexus/login",
                data={
                    "email": "bob@beta.com",
                    "password": "beta-demo-pass",
                    "csrf_token": token,
                    "next": next_path,
                },
            )
            expected = "/nexus/cases" if next_path == "/nexus/cases" else "/nexus/"
            assert response.headers["location"] == expected
            token = csrf_of(http, "/nexus/")


def test_repeated_failed_logins_are_slowed_down(portal: PortalProcess) -> None:
    with client(portal, "203.0.113.7") as http:
        token = csrf_of(http)
        for _ in range(5):
            failed = http.post(
                "/nexus/login",
                data={"email": "carol@alpha.com", "password": "x", "csrf_token": token},
            )
            assert failed.status_code == 401
        # Even the right password now waits: per account...
        slowed = http.post(
            "/nexus/login",
            data={"email": "carol@alpha.com", "password": "alpha-demo-pass", "csrf_token": token},
        )
        assert slowed.status_code == 429
        assert int(slowed.headers["Retry-After"]) >= 1
        assert "Too many failed sign-ins" in slowed.text
    # ...and per address: another account from the same address waits too.
    with client(portal, "203.0.113.7") as http:
        token = csrf_of(http)
        other = http.post(
            "/nexus/login",
            data={"email": "bob@beta.com", "password": "beta-demo-pass", "csrf_token": token},
        )
        assert other.status_code == 429
    # Another account from another address is not affected.
    with client(portal, "198.51.100.9") as http:
        token = csrf_of(http)
        fine = http.post(
            "/nexus/login",
            data={"email": "bob@beta.com", "password": "beta-demo-pass", "csrf_token": token},
        )
        assert fine.status_code == 303


POSTS = [
    "/nexus/logout",
    "/nexus/cases/CASE-AB000001/messages",
    "/nexus/payments/PAY-AB000001/status",
    "/nexus/notifications/read",
    "/nexus/notifications/NOTIF-AL000001/read",
    "/nexus/relationships",
    "/nexus/invitations/INV-00000001/accept",
]


@pytest.mark.parametrize("path", POSTS)
def test_every_post_needs_the_csrf_token(alice: httpx.Client, path: str) -> None:
    assert alice.post(path, data={"body": "x", "status": "approved"}).status_code == 403
    assert alice.post(path, data={"csrf_token": "forged"}).status_code == 403
    assert (
        alice.post(path, headers={"X-CSRF-Token": "forged", "HX-Request": "true"}).status_code
        == 403
    )


def test_the_login_form_needs_the_csrf_token(portal: PortalProcess) -> None:
    with client(portal) as http:
        response = http.post(
            "/nexus/login", data={"email": "alice@alpha.com", "password": "alpha-demo-pass"}
        )
        assert response.status_code == 403


def test_another_tenants_things_are_not_found(
    grace: httpx.Client, pdb: psycopg.Connection[Any]
) -> None:
    invitation = pdb.execute(
        "INSERT INTO nexus_invitations (inviter_tenant_id, invitee_tenant_id)"
        " VALUES ('TNT-ALPHA001', 'TNT-NOSUCH99') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    token = csrf_of(grace, "/nexus/")
    htmx = {"X-CSRF-Token": token, "HX-Request": "true"}
    assert grace.get("/nexus/cases/CASE-AB000001").status_code == 404
    assert grace.get("/nexus/cases/CASE-AB000001/thread").status_code == 404
    assert (
        grace.post(
            "/nexus/cases/CASE-AB000001/messages", data={"body": "hi"}, headers=htmx
        ).status_code
        == 404
    )
    assert (
        grace.post(
            "/nexus/payments/PAY-AB000001/status", data={"status": "approved"}, headers=htmx
        ).status_code
        == 404
    )
    for invitation_id in (invitation, "INV-NOSUCH01"):
        answer = grace.post(f"/nexus/invitations/{invitation_id}/accept", headers=htmx)
        assert answer.status_code == 404
    pdb.execute("DELETE FROM nexus_invitations WHERE id = %s", (invitation,))
    assert (
        grace.get("/nexus/cases/CASE-NOSUCH01").status_code == 404
    )  # the same answer as "not yours"
    assert "CASE-AB000001" not in grace.get("/nexus/cases").text
    assert "PAY-AB000001" not in grace.get("/nexus/payments/list").text


def test_only_the_payer_changes_a_payments_status(portal: PortalProcess) -> None:
    bob = signed_in(portal, "bob@beta.com", "beta-demo-pass")
    token = csrf_of(bob, "/nexus/")
    response = bob.post(
        "/nexus/payments/PAY-AB000001/status", data={"status": "approved", "csrf_token": token}
    )
    bob.close()
    assert response.status_code == 409
    assert "not possible" in response.text


def test_invalid_input_answers_with_a_message(alice: httpx.Client) -> None:
    token = csrf_of(alice, "/nexus/")
    htmx = {"X-CSRF-Token": token, "HX-Request": "true"}
    empty = alice.post("/nexus/cases/CASE-AB000001/messages", data={"body": "   "}, headers=htmx)
    assert empty.status_code == 422
    assert empty.headers["HX-Retarget"] == "#message-error"
    assert "Write a message first." in empty.text
    long = alice.post(
        "/nexus/cases/CASE-AB000001/messages", data={"body": "x" * 10_001}, headers=htmx
    )
    assert long.status_code == 422
    plain = alice.post(
        "/nexus/cases/CASE-AB000001/messages", data={"body": "", "csrf_token": token}
    )
    assert plain.status_code == 422
    assert "Traceback" not in plain.text and "Write a message first." in plain.text
    for tenant_id, message in (
        ("ALPHA", "A tenant id looks like TNT-ACME0001."),
        ("TNT-ALPHA001", "That is your own tenant."),
        ("TNT-BETA0001", "You already have a relationship with that tenant."),
    ):
        response = alice.post("/nexus/relationships", data={"tenant_id": tenant_id}, headers=htmx)
        assert (response.status_code, response.headers["HX-Retarget"]) == (422, "#invite-error")
        assert message in response.text
    bad_status = alice.post(
        "/nexus/payments/PAY-AB000001/status", data={"status": "stolen"}, headers=htmx
    )
    assert bad_status.status_code == 409


def test_an_invitation_answers_the_same_whether_the_tenant_exists_or_not(
    alice: httpx.Client, pdb: psycopg.Connection[Any]
) -> None:
    """No oracle of tenant ids: same status, same body (but for the id), about the same time."""
    token = csrf_of(alice, "/nexus/relationships")
    htmx = {"X-CSRF-Token": token, "HX-Request": "true"}
    made: list[str] = []

    def new_vendor() -> str:
        tenant_id = f"TNT-V{secrets.token_hex(4).upper()}"
        pdb.execute(
            "INSERT INTO nexus_tenants (id, name, kind) VALUES (%s, 'Invited Ltd', 'vendor')",
            (tenant_id,),
        )
        made.append(tenant_id)
        return tenant_id

    def invite(tenant_id: str, headers: dict[str, str]) -> tuple[httpx.Response, float]:
        started = time.perf_counter()
        response = alice.post(
            "/nexus/relationships",
            data={"tenant_id": tenant_id, "csrf_token": token},
            headers=headers,
        )
        return response, time.perf_counter() - started

    try:
        existing, missing = new_vendor(), f"TNT-N{secrets.token_hex(4).upper()}"
        real, _ = invite(existing, htmx)
        unknown, _ = invite(missing, htmx)
        assert real.status_code == unknown.status_code == 200
        assert real.text.replace(existing, "ID") == unknown.text.replace(missing, "ID")
        assert "HX-Retarget" not in real.headers and "HX-Retarget" not in unknown.headers
        # Both invited, alike (tests/portal/test_invitations.py compares the rest).
        rows = pdb.execute(
            "SELECT invitee_tenant_id, status FROM nexus_invitations"
            " WHERE inviter_tenant_id = 'TNT-ALPHA001' AND invitee_tenant_id = ANY(%s)",
            ([existing, missing],),
        ).fetchall()
        assert sorted(rows) == sorted([(existing, "invited"), (missing, "invited")])
        # Without htmx: both sent back to the page.
        plain = [invite(tenant_id, {})[0] for tenant_id in (new_vendor(), missing)]
        assert [(r.status_code, r.headers["location"]) for r in plain] == [
            (303, "/nexus/relationships")
        ] * 2
        # About the same time: no extra query, no wait, on either side.
        times: dict[str, list[float]] = {"existing": [], "missing": []}
        for _ in range(10):
            times["existing"].append(invite(new_vendor(), htmx)[1])
            times["missing"].append(invite(f"TNT-N{secrets.token_hex(4).upper()}", htmx)[1])
        medians = {side: statistics.median(values) for side, values in times.items()}
        assert abs(medians["existing"] - medians["missing"]) < WAIT / 200, medians
    finally:
        pdb.execute("DELETE FROM nexus_invitations WHERE inviter_tenant_id = 'TNT-ALPHA001'")
        pdb.execute("DELETE FROM nexus_tenants WHERE id = ANY(%s)", (made,))


def test_the_realtime_config_gives_a_short_lived_token_and_no_secret(
    alice: httpx.Client, portal: PortalProcess
) -> None:
    response = alice.get("/nexus/api/realtime-config")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    config = response.json()
    assert config["url"] == portal.env["NEXUS_RELAY_URL"]
    claims = jwt.decode(config["token"], JWT_SECRET, algorithms=["HS256"], audience="nexus-relay")
    assert claims["sub"] == "USR-ALIC0001"
    assert claims["role"] == "authenticated"
    assert claims["app_metadata"] == {"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"}
    assert claims["exp"] - int(claims["iat"]) == 300  # minutes, not days
    # What supabase-js needs: the relay as a project URL, and an anon key that
    # opens a socket but reads no row (role anon, no user).
    supabase = config["supabase"]
    relay = urllib.parse.urlsplit(portal.env["NEXUS_RELAY_URL"])
    assert supabase["url"] == f"http://{relay.netloc}"
    assert supabase["realtime_url"] == f"ws://{relay.netloc}/realtime/v1"
    key = jwt.decode(supabase["anon_key"], JWT_SECRET, algorithms=["HS256"])
    assert key["role"] == "anon" and "sub" not in key and "app_metadata" not in key
    for secret in (JWT_SECRET, portal.env["NEXUS_SESSION_SECRET"]):
        assert secret not in response.text


def test_pages_carry_a_strict_csp_and_no_inline_script(
    alice: httpx.Client, portal: PortalProcess
) -> None:
    for path in ("/nexus/", "/nexus/cases/CASE-AB000001", "/nexus/payments", "/nexus/login"):
        response = alice.get(path)
        csp = response.headers["content-security-policy"]
        assert (
            "script-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
        )
        relay_origin = portal.env["NEXUS_RELAY_URL"].rstrip("/")
        assert f"connect-src 'self' {relay_origin}" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        for script in re.findall(r"<script[^>]*>", response.text):
            assert re.search(r'src="/static/[^"]+"', script), (
                script
            )  # local files only, no inline code
        assert " style=" not in response.text and "<style" not in response.text
        assert "esm.sh" not in response.text and "cdn" not in response.text.lower()


def test_htmx_is_served_locally(alice: httpx.Client) -> None:
    response = alice.get("/static/vendor/htmx.min.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "htmx" in response.text[:2000]


def test_the_relay_client_is_served_locally_as_a_module(alice: httpx.Client) -> None:
    """@nexus-relay/client (clients/js), which realtime-client.js imports."""
    response = alice.get("/static/vendor/nexus-relay-client.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    assert "export class RelayClient" in response.text
    page = alice.get("/nexus/").text
    assert '<script type="module" src="/static/realtime-client.js"></script>' in page


def test_logout_ends_the_session(alice: httpx.Client) -> None:
    token = csrf_of(alice, "/nexus/")
    assert alice.get("/nexus/logout").status_code == 405
    response = alice.post("/nexus/logout", data={"csrf_token": token})
    assert (response.status_code, response.headers["location"]) == (303, "/nexus/login")
    assert alice.get("/nexus/").status_code == 303
    assert alice.get("/nexus/api/realtime-config").status_code == 401


def test_health(portal: PortalProcess) -> None:
    with client(portal) as http:
        assert http.get("/healthz").json() == {"ok": True}


def test_a_copied_cookie_is_worthless_after_sign_out(portal: PortalProcess) -> None:
    original = signed_in(portal, "carol@alpha.com", "alpha-demo-pass")
    copy = client(portal)
    copy.cookies.update(original.cookies)
    assert copy.get("/nexus/payments/list").status_code == 200
    token = csrf_of(original, "/nexus/")
    assert original.post("/nexus/logout", data={"csrf_token": token}).status_code == 303
    # Pages, partials and the realtime config all refuse the copy now.
    assert copy.get("/nexus/").status_code == 303
    assert copy.get("/nexus/payments/list", headers={"HX-Request": "true"}).status_code == 401
    assert (
        copy.get("/nexus/cases/CASE-AB000001/thread", headers={"HX-Request": "true"}).status_code
        == 401
    )
    assert copy.get("/nexus/api/realtime-config").status_code == 401
    original.close()
    copy.close()


def test_a_deleted_or_moved_user_is_signed_out_everywhere(portal: PortalProcess, pdb: Any) -> None:
    pdb.execute(
        "INSERT INTO nexus_users (id, tenant_id, email, display_name, password_hash)"
        " SELECT 'USR-TEMP0001', 'TNT-ALPHA001', 'temp@alpha.com', 'Temp', password_hash"
        " FROM nexus_users WHERE id = 'USR-CARO0001' ON CONFLICT DO NOTHING"
    )
    moved = signed_in(portal, "temp@alpha.com", "alpha-demo-pass")
    assert moved.get("/nexus/api/realtime-config").status_code == 200
    pdb.execute("UPDATE nexus_users SET tenant_id = 'TNT-BETA0001' WHERE id = 'USR-TEMP0001'")
    # Moved to another tenant: the session was for Alpha; it is not valid any more.
    assert moved.get("/nexus/api/realtime-config").status_code == 401
    assert moved.get("/nexus/payments/list", headers={"HX-Request": "true"}).status_code == 401
    pdb.execute("UPDATE nexus_users SET tenant_id = 'TNT-ALPHA001' WHERE id = 'USR-TEMP0001'")
    deleted = signed_in(portal, "temp@alpha.com", "alpha-demo-pass")
    pdb.execute("DELETE FROM nexus_users WHERE id = 'USR-TEMP0001'")
    assert deleted.get("/nexus/api/realtime-config").status_code == 401
    assert deleted.get("/nexus/").status_code == 303
    moved.close()
    deleted.close()


async def test_concurrent_guesses_cannot_outrun_the_slowdown(portal: PortalProcess) -> None:
    headers = {"X-Forwarded-For": "203.0.113.99"}
    async with httpx.AsyncClient(base_url=portal.url, timeout=4 * WAIT, headers=headers) as http:
        page = await http.get("/nexus/login")
        token = re.search(r'name="nexus-csrf-token" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]

        async def guess(n: int) -> int:
            data = {"email": "bob@beta.com", "password": f"guess-{n}", "csrf_token": token}
            return (await http.post("/nexus/login", data=data)).status_code

        statuses = await asyncio.gather(*(guess(n) for n in range(30)))
    assert statuses.count(401) <= 5  # checked against the hash: no more than the free failures
    assert statuses.count(429) >= 25


def test_an_oversized_request_is_refused(alice: httpx.Client) -> None:
    token = csrf_of(alice, "/nexus/")
    response = alice.post(
        "/nexus/cases/CASE-AB000001/messages", data={"body": "x" * 70_000, "csrf_token": token}
    )
    assert response.status_code == 413


def test_ones_own_messages_and_payments_show_as_such_on_pages_and_partials(
    alice: httpx.Client,
) -> None:
    thread = "/nexus/cases/CASE-AB000001"
    for path in (thread, f"{thread}/thread"):
        text = alice.get(path).text
        assert 'class="message mine" id="MSG-AB00000001"' in text, path
        assert 'class="message " id="MSG-AB00000002"' in text, path  # Bob's
    assert 'maxlength="10000"' in alice.get(thread).text  # the message form's limit
    htmx = {"X-CSRF-Token": csrf_of(alice, "/nexus/"), "HX-Request": "true"}
    posted = alice.post(f"{thread}/messages", data={"body": "Mine, again"}, headers=htmx)
    assert 'class="message mine" id="MSG-AB00000001"' in posted.text
    for path in ("/nexus/payments", "/nexus/payments/list"):  # Alice's tenant is the payer
        assert "/nexus/payments/PAY-AB000001/status" in alice.get(path).text, path
