"""Invitations through the portal: to the inviter, inviting a tenant id looks the
same whether or not a tenant has it (issue 10, item 9).

Everywhere the inviter can look: the form's answer, the list page and its live
region, the relay's changes, and the rows the database shows the inviter's
``authenticated``. Then the invitee's side: it sees, accepts or declines, and
the relationship appears for both; a third tenant sees none of it. Real
PostgreSQL, the real relay and portal processes, a real WebSocket client. Each
test makes tenants and users of its own, and removes them.
"""

import asyncio
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import psycopg
import pytest
from argon2 import PasswordHasher

from relay.client import RelayClient
from tests.support import WAIT, PortalProcess, RelayProcess, as_user, csrf_of, signed_in

Conn = psycopg.Connection[Any]
PASSWORD = "invitations-test-pass"
HASH = PasswordHasher().hash(PASSWORD)
# What differs between two invitations of one inviter: the rest must not.
OWN_COLUMNS = ("id", "invitee_tenant_id", "created_at")
INVITATION_ROW = re.compile(r'<tr id="(INV-[A-Z0-9]+)">(.*?)</tr>', re.DOTALL)


@dataclass
class Tenant:
    id: str
    name: str
    user_id: str
    email: str


@pytest.fixture
def tenants(pdb: Conn) -> Iterator[Callable[[str], Tenant]]:
    """Make a tenant of the given kind with one user (password ``PASSWORD``)."""
    made: list[Tenant] = []

    def make(kind: str) -> Tenant:
        suffix = secrets.token_hex(4).upper()
        tenant = Tenant(
            f"TNT-P{suffix}",
            f"Invited {suffix} Ltd",
            f"USR-P{suffix}",
            f"p{suffix.lower()}@inv.test",
        )
        pdb.execute(
            "INSERT INTO nexus_tenants (id, name, kind) VALUES (%s, %s, %s)",
            (tenant.id, tenant.name, kind),
        )
        pdb.execute(
            "INSERT INTO nexus_users (id, tenant_id, email, display_name, password_hash)"
            " VALUES (%s, %s, %s, 'Invitations test', %s)",
            (tenant.user_id, tenant.id, tenant.email, HASH),
        )
        made.append(tenant)
        return tenant

    yield make
    ids = [tenant.id for tenant in made]
    pdb.execute(
        "DELETE FROM nexus_invitations WHERE inviter_tenant_id = ANY(%s)"
        " OR invitee_tenant_id = ANY(%s)",
        (ids, ids),
    )
    pdb.execute(
        "DELETE FROM nexus_tenant_relationships WHERE client_id = ANY(%s) OR vendor_id = ANY(%s)",
        (ids, ids),
    )
    pdb.execute("DELETE FROM nexus_users WHERE tenant_id = ANY(%s)", (ids,))
    pdb.execute("DELETE FROM nexus_tenants WHERE id = ANY(%s)", (ids,))


def no_tenant() -> str:
    """A well-formed tenant id that no tenant has."""
    return f"TNT-N{secrets.token_hex(4).upper()}"


class Person:
    """A signed-in user of a tenant: their portal session, CSRF token and relay token."""

    def __init__(self, portal: PortalProcess, tenant: Tenant) -> None:
        self.tenant = tenant
        self.http = signed_in(portal, tenant.email, PASSWORD)
        self.csrf = csrf_of(self.http, "/nexus/relationships")
        config = self.http.get("/nexus/api/realtime-config")
        assert config.status_code == 200, config.text
        self.relay_token = str(config.json()["token"])

    def post(self, path: str, data: dict[str, str] | None = None) -> httpx.Response:
        """A form post as htmx sends it."""
        headers = {"X-CSRF-Token": self.csrf, "HX-Request": "true"}
        return self.http.post(path, data=data or {}, headers=headers)

    def invite(self, tenant_id: str) -> httpx.Response:
        return self.post("/nexus/relationships", {"tenant_id": tenant_id})

    def listed(self) -> str:
        response = self.http.get("/nexus/relationships/list")
        assert response.status_code == 200
        return response.text

    def close(self) -> None:
        self.http.close()


@pytest.fixture
def person(portal: PortalProcess) -> Iterator[Callable[[Tenant], Person]]:
    people: list[Person] = []

    def sign_in(tenant: Tenant) -> Person:
        people.append(Person(portal, tenant))
        return people[-1]

    yield sign_in
    for someone in people:
        someone.close()


def invitation_rows(html: str) -> dict[str, tuple[str, str]]:
    """The invitations a page lists: tenant id shown -> (invitation id, row's HTML)."""
    rows: dict[str, tuple[str, str]] = {}
    for invitation_id, row in INVITATION_ROW.findall(html):
        for tenant_id in set(re.findall(r"TNT-[A-Z0-9]+", row)):
            assert tenant_id not in rows, f"{tenant_id} listed twice"
            rows[tenant_id] = (invitation_id, row)
    return rows


async def changes_until(client: RelayClient, fence: str) -> list[dict[str, Any]]:
    """The changes received before the one of row ``fence``, which a test wrote last:
    the log's order makes "nothing else came" a fact, without waiting for nothing."""
    received: list[dict[str, Any]] = []
    while True:
        event = await client.next_event(WAIT)
        if event["type"] != "change":
            continue
        if (event.get("new") or {}).get("id") == fence:
            return received
        received.append(event)


def fence(db: Conn, tenant: Tenant) -> str:
    """An invitation from ``tenant``, written as the owner: the last change it sees."""
    row = db.execute(
        "INSERT INTO nexus_invitations (inviter_tenant_id, invitee_tenant_id)"
        " VALUES (%s, %s) RETURNING id",
        (tenant.id, no_tenant()),
    ).fetchone()
    assert row is not None
    return str(row[0])


def without(text: str, *ids: str) -> str:
    for n, value in enumerate(ids):
        text = text.replace(value, f"<id{n}>")
    return text


def test_inviting_an_existing_or_unknown_id_looks_the_same_everywhere(
    tenants: Callable[[str], Tenant],
    person: Callable[[Tenant], Person],
    relay: RelayProcess,
    pdb: Conn,
) -> None:
    inviter = person(tenants("client"))
    existing, missing = tenants("vendor"), no_tenant()

    async def live() -> tuple[list[httpx.Response], list[dict[str, Any]]]:
        async with await RelayClient.connect(relay.url, inviter.relay_token, timeout=WAIT) as rc:
            await rc.subscribe("nexus_invitations", timeout=WAIT)
            await rc.subscribe("nexus_tenant_relationships", timeout=WAIT)
            answers = [
                await asyncio.to_thread(inviter.invite, tenant_id)
                # The second time while open: the same answer, and no new row.
                for tenant_id in (existing.id, missing, existing.id, missing)
            ]
            return answers, await changes_until(rc, fence(pdb, inviter.tenant))

    answers, changes = asyncio.run(live())

    # The form: the same answer, four times.
    assert [a.status_code for a in answers] == [200] * 4
    texts = [without(a.text, existing.id, missing) for a in answers]
    assert texts[0].replace("<id0>", "<id1>") == texts[1] == texts[3].replace("<id0>", "<id1>")
    assert texts[0] == texts[2]

    # The relay: one INSERT each, the same frame but for ids and times.
    assert [(c["table"], c["op"]) for c in changes] == [("public.nexus_invitations", "INSERT")] * 2
    real, unknown = changes
    assert real["new"]["invitee_tenant_id"] == existing.id
    assert unknown["new"]["invitee_tenant_id"] == missing

    def neutral(change: dict[str, Any]) -> dict[str, Any]:
        new = {k: v for k, v in change["new"].items() if k not in OWN_COLUMNS}
        return {
            **{k: v for k, v in change.items() if k not in ("position", "commit_timestamp")},
            "new": new,
        }

    assert neutral(real) == neutral(unknown)
    assert set(real["new"]) == {
        "id",
        "inviter_tenant_id",
        "invitee_tenant_id",
        "status",
        "created_at",
        "answered_at",
    }

    # The list, as its live region and as the page: one row each, the same HTML.
    for html in (inviter.listed(), inviter.http.get("/nexus/relationships").text):
        rows = invitation_rows(html)
        (real_id, real_row), (unknown_id, unknown_row) = rows[existing.id], rows[missing]
        assert {real_id, unknown_id} == {real["new"]["id"], unknown["new"]["id"]}
        assert without(real_row, existing.id) == without(unknown_row, missing)
        assert "waiting for them" in real_row
        assert existing.name not in html

    # The database, as the inviter's authenticated: the same row but for ids and time.
    with as_user(pdb, inviter.tenant.user_id, inviter.tenant.id):
        cursor = pdb.cursor(row_factory=psycopg.rows.dict_row)
        seen = cursor.execute(
            "SELECT * FROM nexus_invitations WHERE invitee_tenant_id = ANY(%s)",
            ([existing.id, missing],),
        ).fetchall()
        tenants_seen = {row[0] for row in pdb.execute("SELECT id FROM nexus_tenants")}
    assert len(seen) == 2
    assert len({tuple((k, v) for k, v in row.items() if k not in OWN_COLUMNS) for row in seen}) == 1
    assert tenants_seen == {inviter.tenant.id}


def test_the_invitee_accepts_and_the_relationship_shows_for_both_only(
    tenants: Callable[[str], Tenant],
    person: Callable[[Tenant], Person],
    relay: RelayProcess,
    pdb: Conn,
) -> None:
    inviter = person(tenants("vendor"))
    invitee = person(tenants("client"))
    third = person(tenants("client"))
    assert inviter.invite(invitee.tenant.id).status_code == 200

    received = invitation_rows(invitee.listed())
    invitation, row = received[inviter.tenant.id]
    assert inviter.tenant.name in row and "they invited you" in row
    assert f"/nexus/invitations/{invitation}/accept" in row
    assert invitation not in third.listed()

    # Who may not answer it: a third tenant does not see it (404), the inviter
    # sees it but may not (409); a forged form (403); no such answer (404).
    assert third.post(f"/nexus/invitations/{invitation}/accept").status_code == 404
    assert third.post("/nexus/invitations/INV-NOSUCH01/accept").status_code == 404
    assert inviter.post(f"/nexus/invitations/{invitation}/accept").status_code == 409
    forged = invitee.http.post(
        f"/nexus/invitations/{invitation}/accept", headers={"X-CSRF-Token": "forged"}
    )
    assert forged.status_code == 403
    assert invitee.post(f"/nexus/invitations/{invitation}/maybe").status_code == 404

    async def accept() -> dict[str, list[dict[str, Any]]]:
        clients: dict[str, RelayClient] = {}
        for name, who in (("inviter", inviter), ("invitee", invitee), ("third", third)):
            clients[name] = await RelayClient.connect(relay.url, who.relay_token, timeout=WAIT)
            await clients[name].subscribe("nexus_invitations", timeout=WAIT)
            await clients[name].subscribe("nexus_tenant_relationships", timeout=WAIT)
        try:
            answer = await asyncio.to_thread(
                invitee.post, f"/nexus/invitations/{invitation}/accept"
            )
            assert answer.status_code == 200, answer.text
            assert "Your relationships" in answer.text and inviter.tenant.name in answer.text
            fences = {
                name: fence(pdb, who.tenant)
                for name, who in (("inviter", inviter), ("invitee", invitee), ("third", third))
            }
            return {
                name: await changes_until(client, fences[name]) for name, client in clients.items()
            }
        finally:
            for client in clients.values():
                await client.close()

    seen = asyncio.run(accept())
    for name in ("inviter", "invitee"):
        assert sorted((c["table"], c["op"]) for c in seen[name]) == [
            ("public.nexus_invitations", "UPDATE"),
            ("public.nexus_tenant_relationships", "INSERT"),
        ], name
        [made] = [c["new"] for c in seen[name] if c["table"].endswith("relationships")]
        # The inviter is a vendor: the invitee is the client.
        assert (made["client_id"], made["vendor_id"], made["status"]) == (
            invitee.tenant.id,
            inviter.tenant.id,
            "active",
        )
    assert seen["third"] == []

    again = invitee.post(f"/nexus/invitations/{invitation}/accept")
    assert again.status_code == 409  # answered already
    for who, other in ((inviter, invitee), (invitee, inviter)):
        html = who.listed()
        assert invitation not in html  # accepted: a relationship now
        assert re.search(
            rf'<tr id="REL-[A-Z0-9]+">\s*<td>{re.escape(other.tenant.name)}.*?active',
            html,
            re.DOTALL,
        ), html
    html = third.listed()
    assert inviter.tenant.id not in html and invitee.tenant.id not in html
    assert 'id="REL-' not in html


def test_a_declined_invitation_shows_as_declined_and_makes_nothing(
    tenants: Callable[[str], Tenant], person: Callable[[Tenant], Person], pdb: Conn
) -> None:
    inviter = person(tenants("client"))
    invitee = person(tenants("vendor"))
    inviter.invite(invitee.tenant.id)
    invitation, _ = invitation_rows(invitee.listed())[inviter.tenant.id]
    declined = invitee.post(f"/nexus/invitations/{invitation}/decline")
    assert declined.status_code == 200
    assert invitation not in declined.text
    _, row = invitation_rows(inviter.listed())[invitee.tenant.id]
    assert "declined" in row and "waiting for them" not in row
    assert invitee.post(f"/nexus/invitations/{invitation}/accept").status_code == 409
    related = pdb.execute(
        "SELECT count(*) FROM nexus_tenant_relationships WHERE %s IN (client_id, vendor_id)",
        (inviter.tenant.id,),
    ).fetchone()
    assert related == (0,)
    # Declined, a new invitation may follow.
    assert inviter.invite(invitee.tenant.id).status_code == 200
    assert inviter.tenant.id in invitation_rows(invitee.listed())
