"""``relay.core.explain``: the relay's decisions for one row, step by step, and
the same verdict as the fan-out's for a change of that row."""

from pathlib import Path
from typing import Any

import orjson
import pytest

from relay.core import explain, policy
from relay.core.changes import Change
from relay.core.errors import AuthError
from relay.core.fanout import Fanout
from relay.core.limits import Limits
from relay.core.positions import Position
from relay.core.revocations import Revocation, Revocations
from relay.core.tables import Column, Table
from relay.core.tokens import Identity, TokenVerifier
from relay.core.types import Parents, Row
from tests.support import ALICE, BOB, GRACE, JWT_SECRET, POLICY_FILE, mint

POLICIES = policy.load(Path(POLICY_FILE))
VERIFIER = TokenVerifier(
    claims=POLICIES.claims, bypass_roles=POLICIES.bypass_roles, secret=JWT_SECRET
)


def table(name: str, columns: str, parents: dict[str, str] | None = None) -> Table:
    return Table(
        name=f"public.{name}",
        events=frozenset({"INSERT", "UPDATE", "DELETE"}),
        primary_key=("id",),
        columns={c: Column(c, "text", "S") for c in columns.split()},
        parents=parents or {},
    )


TABLES = {
    t.name: t
    for t in (
        table("nexus_payments", "id from_id to_id status"),
        table("nexus_notifications", "id tenant_id user_id title"),
        table("nexus_case_messages", "id case_id body", {"case": "case_id"}),
        table("open_secrets", "id"),
    )
}
PAYMENT = {"id": "PAY-1", "from_id": "TNT-ALPHA001", "to_id": "TNT-BETA0001", "status": "open"}
MESSAGE = {"id": "MSG-1", "case_id": "CASE-1", "body": "hi"}
CASE = {"id": "CASE-1", "client_id": "TNT-ALPHA001", "vendor_id": "TNT-BETA0001"}


def identity(token: str) -> Identity | AuthError:
    try:
        return VERIFIER.verify(token)
    except AuthError as exc:
        return exc


def run(
    token: str,
    name: str,
    row: Row | None,
    parents: Parents | None = None,
    row_filter: str | None = None,
    tables: dict[str, Table] = TABLES,
) -> explain.Explanation:
    return explain.explain(
        policies=POLICIES,
        tables=tables,
        identity=identity(token),
        table=name,
        row=row,
        parents=parents or {},
        row_filter=row_filter,
    )


def fanout_delivers(
    token: str, name: str, row: Row, parents: Parents, row_filter: str | None
) -> bool:
    """Whether the fan-out sends an INSERT of ``row`` to a subscriber with this token."""
    fanout = Fanout(POLICIES, VERIFIER, Limits(), 10)
    fanout.set_tables(TABLES)
    session = fanout.open_session(0)
    session.receive(orjson.dumps({"type": "auth", "token": token}).decode(), 0)
    frame: dict[str, Any] = {"type": "subscribe", "table": name}
    if row_filter is not None:
        frame["filter"] = row_filter
    session.receive(orjson.dumps(frame).decode(), 0)
    session.data_to_send()
    fanout.ingest(
        Change(f"public.{name}", "INSERT", row, None, parents, None, "1", "t"), Position(2, 1)
    )
    fanout.take_dirty()
    return any(orjson.loads(f)["type"] == "change" for f in session.data_to_send())


CASES = [
    # (who, table, row, parents, filter, reason)
    (BOB, "nexus_payments", PAYMENT, {}, None, "delivered"),
    (GRACE, "nexus_payments", PAYMENT, {}, None, "policy_denied"),
    (BOB, "nexus_payments", PAYMENT, {}, "status=eq.paid", "filter_mismatch"),
    (BOB, "nexus_payments", PAYMENT, {}, "status=eq.open", "delivered"),
    (ALICE, "nexus_case_messages", MESSAGE, {"case": CASE}, None, "delivered"),
    (GRACE, "nexus_case_messages", MESSAGE, {"case": CASE}, None, "policy_denied"),
    # A message whose case the writer could not read: unknown, so not visible (as RLS).
    (ALICE, "nexus_case_messages", MESSAGE, {"case": None}, None, "policy_denied"),
]


@pytest.mark.parametrize(("who", "name", "row", "parents", "row_filter", "reason"), CASES)
def test_the_verdict_is_the_fanouts(
    who: tuple[str, str],
    name: str,
    row: Row,
    parents: Parents,
    row_filter: str | None,
    reason: str,
) -> None:
    token = mint(*who)
    explanation = run(token, name, row, parents, row_filter)
    assert explanation.reason == reason
    assert explanation.delivered is (reason == "delivered")
    assert fanout_delivers(token, name, row, parents, row_filter) is explanation.delivered
    assert explanation.steps[-1].text == (
        "DELIVERED" if explanation.delivered else f"NOT DELIVERED ({reason})"
    )


def test_each_condition_says_what_it_compared() -> None:
    explanation = run(mint(*GRACE), "nexus_payments", PAYMENT)
    conditions = [s for s in explanation.steps if s.check == "condition"]
    assert [(s.passed, s.text) for s in conditions] == [
        (False, "false: from_id = claims.tenant_id  ('TNT-ALPHA001' = 'TNT-GAMMA001')"),
        (False, "false: to_id = claims.tenant_id  ('TNT-BETA0001' = 'TNT-GAMMA001')"),
    ]
    [claims] = [s for s in explanation.steps if s.check == "claims"]
    assert claims.values == {"tenant_id": "TNT-GAMMA001"}


def test_a_refused_token_stops_at_the_token() -> None:
    forged = mint(*BOB, secret="another-secret-of-at-least-32-bytes!!")
    explanation = run(forged, "nexus_payments", PAYMENT)
    assert explanation.reason == "invalid_token"
    assert [s.check for s in explanation.steps] == ["token", "verdict"]
    assert explanation.steps[0].values == {"reason": "signature"}
    expired = run(mint(*BOB, expires_in=-3600), "nexus_payments", PAYMENT)
    assert expired.reason == "token_expired"


def test_a_revoked_token() -> None:
    token = mint(*BOB)
    issued = identity(token)
    assert isinstance(issued, Identity) and issued.issued_at is not None
    revocations = Revocations()
    revocations.add(Revocation(issued.subject, issued.issued_at + 1, "moved"))
    explanation = explain.explain(
        policies=POLICIES,
        tables=TABLES,
        identity=issued,
        table="nexus_payments",
        row=PAYMENT,
        parents={},
        revocations=revocations,
    )
    assert explanation.reason == "token_revoked"
    assert [s.check for s in explanation.steps] == ["token", "verdict"]


def test_an_unpublished_table_a_table_without_policy_and_a_broken_one() -> None:
    token = mint(*BOB)
    assert run(token, "nexus_cases", CASE).reason == "table_unknown"
    no_policy = run(token, "open_secrets", {"id": "1"})
    assert no_policy.reason == "table_not_allowed"
    assert "has no policy" in no_policy.steps[-2].text
    broken = {**TABLES, "public.nexus_payments": table("nexus_payments", "id payer_id to_id")}
    explanation = run(token, "nexus_payments", PAYMENT, tables=broken)
    assert explanation.reason == "table_not_allowed"
    step = explanation.steps[-2]
    assert "no column 'from_id'" in step.text
    assert step.values["problems"][0]["column"] == "from_id"


def test_a_missing_row_and_a_bad_filter() -> None:
    token = mint(*BOB)
    assert run(token, "nexus_payments", None).reason == "row_not_found"
    assert run(token, "nexus_payments", PAYMENT, row_filter="nope=eq.1").reason == "invalid_filter"


def test_the_service_role_sees_every_row() -> None:
    explanation = run(mint(None, None, role="service_role"), "nexus_payments", PAYMENT)
    assert explanation.delivered
    assert "bypass" in explanation.steps[0].text
    assert not [s for s in explanation.steps if s.check == "condition"]


def test_as_json() -> None:
    data = run(mint(*GRACE), "nexus_payments", PAYMENT).as_json()
    assert (data["delivered"], data["reason"]) == (False, "policy_denied")
    assert orjson.loads(orjson.dumps(data)) == data
