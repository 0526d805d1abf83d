"""Revocation with the portal: a user moved, deactivated or signed out loses the relay at once.

Real PostgreSQL, the real relay and portal processes, a real WebSocket client.
Each test makes a user of its own in Alpha, signs them in to the portal, and
subscribes with the portal's token; the database's triggers (migration 0007)
revoke, whoever writes. Negative checks ride on the log's order: a row written
after the one that must not arrive is waited for instead of sleeping.
"""

import asyncio
import concurrent.futures
import secrets
from collections.abc import Iterator
from typing import Any

import httpx
import jwt
import psycopg
import pytest
from argon2 import PasswordHasher

from relay.client import RelayClient, RelayClosed, RelayRequestError
from tests.support import JWT_SECRET, WAIT, PortalProcess, RelayProcess, client, csrf_of, eventually
from tests.support import signed_in as sign_in

Conn = psycopg.Connection[Any]
ALPHA, BETA = "TNT-ALPHA001", "TNT-BETA0001"
PASSWORD = "revocation-test-pass"
HASH = PasswordHasher().hash(PASSWORD)


class User:
    def __init__(self, user_id: str, email: str) -> None:
        self.id = user_id
        self.email = email


@pytest.fixture
def user(pdb: Conn) -> Iterator[User]:
    """A user of Alpha of this test's own."""
    suffix = secrets.token_hex(4).upper()
    made = User(f"USR-R{suffix}", f"r{suffix.lower()}@alpha.com")
    pdb.execute(
        "INSERT INTO nexus_users (id, tenant_id, email, display_name, password_hash)"
        " VALUES (%s, %s, %s, 'Revocation test', %s)",
        (made.id, ALPHA, made.email, HASH),
    )
    yield made
    pdb.execute("DELETE FROM nexus_users WHERE id = %s", (made.id,))


def token_of(http: httpx.Client) -> str:
    response = http.get("/nexus/api/realtime-config")
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def notify(db: Conn, tenant: str, title: str) -> None:
    """A notification for the whole tenant (every user of it may see it)."""
    db.execute(
        "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
        " VALUES (%s, 'test', %s)",
        (tenant, title),
    )


async def until_closed(relay_client: RelayClient) -> tuple[int | None, list[str]]:
    """The titles of the changes received until the connection closes, and its close code."""
    titles: list[str] = []
    while True:
        try:
            event = await relay_client.next_event(WAIT)
        except RelayClosed as closed:
            return closed.code, titles
        if event["type"] == "change":
            titles.append(event["new"]["title"])


async def next_title(relay_client: RelayClient) -> str:
    while True:
        event = await relay_client.next_event(WAIT)
        if event["type"] == "change":
            return str(event["new"]["title"])


async def refused(relay: RelayProcess, token: str) -> str:
    """How the relay refuses this token: its error code."""
    relay_client = await RelayClient.connect(relay.url, None, timeout=WAIT)
    try:
        with pytest.raises(RelayRequestError) as caught:
            await relay_client.request({"type": "auth", "token": token}, WAIT)
        closed = await relay_client.wait_closed(WAIT)
        assert closed.code == 4010, closed
        return caught.value.code
    finally:
        await relay_client.close()


def unique(text: str) -> str:
    return f"{text} {secrets.token_hex(3)}"


def test_a_moved_user_gets_nothing_more_of_their_old_tenant_by_any_path(
    user: User, portal: PortalProcess, relay: RelayProcess, pdb: Conn
) -> None:
    http = sign_in(portal, user.email, PASSWORD)
    old_token = token_of(http)

    async def scenario() -> None:
        async with await RelayClient.connect(relay.url, old_token, timeout=WAIT) as before:
            subscription = await before.subscribe("nexus_notifications", timeout=WAIT)
            seen = unique("Alpha, before the move")
            notify(pdb, ALPHA, seen)
            assert await next_title(before) == seen
            since, resume_token = before.resume_point(subscription["id"])

            pdb.execute("UPDATE nexus_users SET tenant_id = %s WHERE id = %s", (BETA, user.id))
            after_move = unique("Alpha, after the move")
            notify(pdb, ALPHA, after_move)

            # (1) The open connection: closed with 4010, nothing of Alpha after the move.
            code, titles = await until_closed(before)
            assert code == 4010
            assert after_move not in titles

        # (2) A new connection with the old token is refused.
        assert await refused(relay, old_token) == "token_revoked"

        # The old session is over: the portal gives it no token, nor any page.
        assert http.get("/nexus/api/realtime-config").status_code == 401
        assert http.get("/nexus/").status_code == 303

        # (4) Signed in again, the user is of Beta: a fresh token works at once.
        again = sign_in(portal, user.email, PASSWORD)
        new_token = token_of(again)
        claims = jwt.decode(new_token, JWT_SECRET, algorithms=["HS256"], audience="nexus-relay")
        assert claims["app_metadata"]["tenant_id"] == BETA
        again.close()

        # (3) A resume with the old resume token: refused, nothing of Alpha replayed.
        async with await RelayClient.connect(relay.url, new_token, timeout=WAIT) as resumed:
            await resumed.subscribe(
                "nexus_notifications", since=since, resume_token=resume_token, timeout=WAIT
            )
            gap = await resumed.next_event(WAIT)
            assert (gap["type"], gap["reason"]) == ("gap", "resume_refused")
            notify(pdb, ALPHA, unique("Alpha, to a Beta user"))
            beta = unique("Beta, after the move")
            notify(pdb, BETA, beta)
            assert await next_title(resumed) == beta  # Alpha's, written first, never came

        async with await RelayClient.connect(relay.url, new_token, timeout=WAIT) as fresh:
            await fresh.subscribe("nexus_notifications", timeout=WAIT)
            notify(pdb, ALPHA, unique("Alpha, again"))
            beta = unique("Beta, to a fresh subscription")
            notify(pdb, BETA, beta)
            assert await next_title(fresh) == beta

    try:
        asyncio.run(scenario())
    finally:
        http.close()


def test_a_deactivated_user_is_disconnected_and_signed_out(
    user: User, portal: PortalProcess, relay: RelayProcess, pdb: Conn, portal_database: str
) -> None:
    http = sign_in(portal, user.email, PASSWORD)
    token = token_of(http)

    async def scenario() -> None:
        async with await RelayClient.connect(relay.url, token, timeout=WAIT) as live:
            await live.subscribe("nexus_notifications", timeout=WAIT)
            pdb.execute("UPDATE nexus_users SET deactivated_at = now() WHERE id = %s", (user.id,))
            after = unique("Alpha, after the deactivation")
            notify(pdb, ALPHA, after)
            code, titles = await until_closed(live)
            assert code == 4010
            assert after not in titles
        assert await refused(relay, token) == "token_revoked"
        reason = pdb.execute(
            "SELECT reason FROM relay.revocations WHERE subject = %s", (user.id,)
        ).fetchone()
        assert reason == ("deactivated",)

    try:
        asyncio.run(scenario())
        assert http.get("/nexus/api/realtime-config").status_code == 401
        assert http.get("/nexus/").status_code == 303
    finally:
        http.close()
    row = pdb.execute(
        "SELECT count(*) FROM nexus_sessions WHERE user_id = %s AND revoked_at IS NULL",
        (user.id,),
    ).fetchone()
    assert row == (0,)  # its sessions ended with it

    # Signing in again is refused, with the answer of a wrong password.
    with client(portal) as anonymous:
        response = anonymous.post(
            "/nexus/login",
            data={"email": user.email, "password": PASSWORD, "csrf_token": csrf_of(anonymous)},
        )
        assert response.status_code == 401
        assert "Wrong email or password." in response.text
    # Nor can a session be made for them behind the portal's back.
    with (
        psycopg.connect(portal_database) as login,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        login.execute("SET ROLE nexus_login")
        login.execute("SELECT set_config('nexus.login_email', %s, false)", (user.email,))
        login.execute(
            "INSERT INTO nexus_sessions (id_hash, user_id, tenant_id, expires_at)"
            " VALUES (repeat('a', 64), %s, %s, now() + interval '1 hour')",
            (user.id, ALPHA),
        )


def test_signing_out_revokes_and_another_session_reconnects_at_once(
    user: User, portal: PortalProcess, relay: RelayProcess, pdb: Conn
) -> None:
    leaving = sign_in(portal, user.email, PASSWORD)
    staying = sign_in(portal, user.email, PASSWORD)
    token = token_of(leaving)

    async def scenario() -> None:
        async with await RelayClient.connect(relay.url, token, timeout=WAIT) as live:
            await live.subscribe("nexus_notifications", timeout=WAIT)
            response = leaving.post(
                "/nexus/logout", data={"csrf_token": csrf_of(leaving, "/nexus/")}
            )
            assert response.status_code == 303
            code, _ = await until_closed(live)
            assert code == 4010
        assert await refused(relay, token) == "token_revoked"
        assert leaving.get("/nexus/api/realtime-config").status_code == 401

        # The user's other session gets a token issued after the revocation,
        # within the same second as like as not: it is accepted at once.
        async with await RelayClient.connect(relay.url, token_of(staying), timeout=WAIT) as back:
            await back.subscribe("nexus_notifications", timeout=WAIT)
            title = unique("Alpha, to the session that stayed")
            notify(pdb, ALPHA, title)
            assert await next_title(back) == title

    try:
        asyncio.run(scenario())
    finally:
        leaving.close()
        staying.close()


def test_a_token_issued_right_after_a_revocation_is_accepted(
    user: User, portal: PortalProcess, relay: RelayProcess, pdb: Conn
) -> None:
    """``iat`` has microseconds: a token issued after a revocation, in its second, passes."""
    http = sign_in(portal, user.email, PASSWORD)

    async def scenario() -> None:
        for _ in range(5):
            pdb.execute("SELECT relay.revoke(%s, 'test')", (user.id,))
            revoked_at = pdb.execute(
                "SELECT extract(epoch FROM revoked_at) FROM relay.revocations WHERE subject = %s",
                (user.id,),
            ).fetchone()
            assert revoked_at is not None
            token = token_of(http)
            claims = jwt.decode(token, JWT_SECRET, algorithms=["HS256"], audience="nexus-relay")
            assert claims["iat"] > float(revoked_at[0])
            assert isinstance(claims["iat"], float)
            async with await RelayClient.connect(relay.url, token, timeout=WAIT) as accepted:
                assert accepted.ready["type"] == "ready"

    try:
        asyncio.run(scenario())
    finally:
        http.close()


def test_a_token_request_during_an_uncommitted_move_waits_for_it(
    user: User, portal: PortalProcess, pdb: Conn, portal_database: str
) -> None:
    """The portal checks the session holding it: a move being committed is waited for, then
    seen, so that no token is made from the tenant the move is leaving."""
    http = sign_in(portal, user.email, PASSWORD)
    mover = psycopg.connect(portal_database)
    try:
        mover.execute("UPDATE nexus_users SET tenant_id = %s WHERE id = %s", (BETA, user.id))
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            answer = pool.submit(http.get, "/nexus/api/realtime-config")

            def waiting() -> bool:
                row = pdb.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%FOR SHARE OF nexus_sessions%%'"
                ).fetchone()
                return row is not None and row[0] > 0

            eventually(waiting)
            assert not answer.done()
            mover.commit()
            assert answer.result(WAIT).status_code == 401
    finally:
        mover.close()
        http.close()


def test_a_clean_up_of_ended_sessions_revokes_nothing(user: User, pdb: Conn) -> None:
    pdb.execute(
        "INSERT INTO nexus_sessions (id_hash, user_id, tenant_id, expires_at, revoked_at)"
        " VALUES (repeat('b', 64), %s, %s, now() + interval '1 hour', now()),"
        "        (repeat('c', 64), %s, %s, now() - interval '1 hour', NULL)",
        (user.id, ALPHA, user.id, ALPHA),
    )
    pdb.execute("DELETE FROM nexus_sessions WHERE user_id = %s", (user.id,))
    revoked = pdb.execute(
        "SELECT count(*) FROM relay.revocations WHERE subject = %s", (user.id,)
    ).fetchone()
    assert revoked == (0,)


def test_deleting_a_user_revokes_with_the_reason_deleted(user: User, pdb: Conn) -> None:
    pdb.execute(
        "INSERT INTO nexus_sessions (id_hash, user_id, tenant_id, expires_at)"
        " VALUES (repeat('d', 64), %s, %s, now() + interval '1 hour')",
        (user.id, ALPHA),
    )
    pdb.execute("DELETE FROM nexus_users WHERE id = %s", (user.id,))
    reason = pdb.execute(
        "SELECT reason FROM relay.revocations WHERE subject = %s", (user.id,)
    ).fetchone()
    assert reason == ("deleted",)
