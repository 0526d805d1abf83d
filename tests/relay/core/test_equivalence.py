"""Proof that the relay decides what PostgreSQL's RLS decides.

For random tenants, users, cases, rows, operations and claims, on a real
PostgreSQL: the write goes through the real trigger layer, the relay's core
decides what each subscriber receives, and PostgreSQL answers, as the role
``authenticated`` with the same claims, whether that user could SELECT the row
before and after the write. For every published table and every operation:

- INSERT is delivered  iff the new row is visible;
- DELETE is delivered  iff the old row was visible;
- UPDATE is delivered as UPDATE iff the new row is visible (carrying the old
  row iff that was visible too), as LEAVE iff only the old row was.

Claims include forged combinations (a user of one tenant with another tenant's
id) and tenants that do not exist; invitations go to tenants and to an id
that is no tenant.
"""

import itertools
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portal import migrations
from relay import catalog
from relay.core import policy, tables
from relay.core.changes import Change
from relay.core.fanout import Fanout
from relay.core.limits import Limits
from relay.core.tokens import TokenVerifier
from tests.support import JWT_SECRET, POLICY_FILE, LogTail, as_user, mint

POLICIES = policy.load(Path(POLICY_FILE))
VERIFIER = TokenVerifier(
    claims=POLICIES.claims, bypass_roles=POLICIES.bypass_roles, secret=JWT_SECRET
)
EXAMPLES = int(os.environ.get("EQUIVALENCE_EXAMPLES", "300"))
NO_TENANT = "TNT-NOBODY01"  # a well-formed tenant id that no tenant has

Conn = psycopg.Connection[Any]


@dataclass
class Database:
    db: Conn  # the owner: writes
    rls: Conn  # reads as `authenticated`
    log_tail: LogTail
    tables: dict[str, tables.Table]


@pytest.fixture(scope="module")
def database(new_database: Callable[[], str]) -> Iterator[Database]:
    url = new_database()
    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as db, psycopg.connect(url) as rls:
        log_tail = LogTail(url)
        rows = db.cursor(row_factory=psycopg.rows.dict_row).execute(catalog.PUBLISHED_TABLES)
        published = tables.from_rows(rows.fetchall())
        yield Database(db, rls, log_tail, published)
        log_tail.close()


_worlds = itertools.count(1)


@dataclass
class World:
    tenants: list[str]
    users: dict[str, list[str]]  # tenant -> its users
    cases: list[tuple[str, str, str]]  # (id, client, vendor)


@st.composite
def worlds(draw: st.DrawFn) -> World:
    n = next(_worlds)
    tenants = [f"TNT-W{n:05d}{i}" for i in range(draw(st.integers(2, 4)))]
    users = {
        t: [f"USR-W{n:05d}{i}{j}" for j in range(draw(st.integers(1, 2)))]
        for i, t in enumerate(tenants)
    }
    pairs = [(a, b) for a in tenants for b in tenants if a != b]
    chosen = draw(st.lists(st.sampled_from(pairs), min_size=1, max_size=3, unique=True))
    cases = [(f"CASE-W{n:05d}{i}", a, b) for i, (a, b) in enumerate(chosen)]
    return World(tenants, users, cases)


@dataclass
class Operation:
    table: str
    op: str
    row: dict[str, Any]  # the row inserted first (the new row for INSERT)
    update: dict[str, Any]  # the columns an UPDATE sets


@st.composite
def operations(draw: st.DrawFn, world: World) -> Operation:
    table = draw(
        st.sampled_from(
            [
                "nexus_notifications",
                "nexus_payments",
                "nexus_case_messages",
                "nexus_tenant_relationships",
                "nexus_invitations",
            ]
        )
    )
    op = draw(st.sampled_from(["INSERT", "UPDATE", "DELETE"]))
    tenant = st.sampled_from(world.tenants)

    def pair() -> tuple[str, str]:
        a = draw(tenant)
        b = draw(st.sampled_from([t for t in world.tenants if t != a]))
        return a, b

    def recipient(owner: str) -> str | None:
        return draw(st.one_of(st.none(), st.sampled_from(world.users[owner])))

    row: dict[str, Any]
    update: dict[str, Any]
    if table == "nexus_notifications":
        owner = draw(tenant)
        row = {
            "tenant_id": owner,
            "user_id": recipient(owner),
            "notification_type": "t",
            "title": "x",
        }
        moved = draw(tenant)
        update = draw(
            st.sampled_from(
                [
                    {"user_id": recipient(owner)},
                    {"tenant_id": moved, "user_id": recipient(moved)},
                    {"read_at": "2026-01-01T00:00:00Z"},
                ]
            )
        )
    elif table == "nexus_payments":
        a, b = pair()
        c, d = pair()
        row = {"from_id": a, "to_id": b, "amount": 10}
        update = draw(
            st.sampled_from(
                [
                    {"status": "paid"},
                    {"to_id": c} if c != a else {"status": "paid"},
                    {"from_id": c, "to_id": d},
                ]
            )
        )
    elif table == "nexus_case_messages":
        case_id, client, vendor = draw(st.sampled_from(world.cases))
        sender = draw(st.sampled_from([client, vendor]))
        row = {
            "case_id": case_id,
            "sender_tenant_id": sender,
            "sender_user_id": world.users[sender][0],
            "body": "b",
        }
        other = draw(st.sampled_from(world.cases))[0]
        update = draw(st.sampled_from([{"body": "edited"}, {"case_id": other}]))
    elif table == "nexus_tenant_relationships":
        a, b = pair()
        row = {"client_id": a, "vendor_id": b, "invited_by_tenant_id": a}
        update = {"status": draw(st.sampled_from(["active", "declined"]))}
    else:
        # To a tenant of the world or to an id that is no tenant (the forged
        # claims use it too); accepting needs a tenant, which the relationship
        # it makes references.
        a, b = pair()
        invitee = draw(st.sampled_from([b, NO_TENANT]))
        other = draw(st.sampled_from([t for t in [*world.tenants, NO_TENANT] if t != a]))
        row = {"inviter_tenant_id": a, "invitee_tenant_id": invitee}
        answers = ["declined"] if invitee == NO_TENANT else ["accepted", "declined"]
        update = draw(
            st.sampled_from([*({"status": s} for s in answers), {"invitee_tenant_id": other}])
        )
    return Operation(table, op, row, update)


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[World, Operation, list[tuple[str, str]]]:
    world = draw(worlds())
    operation = draw(operations(world))
    honest = [(u, t) for t, us in world.users.items() for u in us]
    forged = draw(
        st.lists(
            st.tuples(
                st.sampled_from([u for u, _ in honest]),
                st.sampled_from([*world.tenants, NO_TENANT]),
            ),
            max_size=3,
        )
    )
    return world, operation, list(dict.fromkeys(honest + forged))


def create(db: Conn, world: World) -> None:
    for tenant in world.tenants:
        db.execute(
            "INSERT INTO nexus_tenants (id, name, kind) VALUES (%s, 'w', 'client')", (tenant,)
        )
        for user in world.users[tenant]:
            db.execute(
                "INSERT INTO nexus_users (id, tenant_id, email, display_name, password_hash)"
                " VALUES (%s, %s, %s, 'w', 'x')",
                (user, tenant, f"{user.lower()}@example.com"),
            )
    for case_id, client, vendor in world.cases:
        db.execute(
            "INSERT INTO nexus_cases (id, client_id, vendor_id, subject) VALUES (%s, %s, %s, 's')",
            (case_id, client, vendor),
        )


def visible(
    database: Database, table: str, row_id: str, who: list[tuple[str, str]]
) -> dict[tuple[str, str], bool]:
    """What PostgreSQL's RLS lets each of ``who`` SELECT of the row, now."""
    result = {}
    for user, tenant in who:
        with as_user(database.rls, user, tenant) as conn:
            row = conn.execute(f"SELECT count(*) FROM {table} WHERE id = %s", (row_id,)).fetchone()
        result[(user, tenant)] = bool(row and row[0])
    return result


def captured(database: Database, table: str, op: str, row_id: str) -> Change:
    """The change the log holds of this write, read as a relay reads it."""
    for change in database.log_tail.take():
        if isinstance(change, Change) and change.table == f"public.{table}" and change.op == op:
            row = change.new if change.new is not None else change.old
            if row is not None and row["id"] == row_id:
                return change
    raise AssertionError(f"no {op} of {table} {row_id} in the log")


def expected(op: str, before: bool, after: bool) -> tuple[str, bool] | None:
    if op == "INSERT":
        return ("INSERT", False) if after else None
    if op == "DELETE":
        return ("DELETE", True) if before else None
    if after:
        return ("UPDATE", before)
    return ("LEAVE", True) if before else None


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=scenarios())
def test_the_relay_decides_what_rls_decides(database: Database, scenario: Any) -> None:
    world, operation, who = scenario
    db, table = database.db, operation.table
    create(db, world)

    columns = ", ".join(operation.row)
    placeholders = ", ".join(["%s"] * len(operation.row))
    insert = f"INSERT INTO {table} ({columns}) VALUES ({placeholders}) RETURNING id"
    row_id = db.execute(insert, list(operation.row.values())).fetchone()[0]  # type: ignore[index]
    before = {w: False for w in who}
    if operation.op != "INSERT":
        captured(database, table, "INSERT", row_id)
        before = visible(database, table, row_id, who)
        if operation.op == "UPDATE":
            assignments = ", ".join(f"{c} = %s" for c in operation.update)
            db.execute(
                f"UPDATE {table} SET {assignments} WHERE id = %s",
                [*operation.update.values(), row_id],
            )
        else:
            db.execute(f"DELETE FROM {table} WHERE id = %s", (row_id,))
    change = captured(database, table, operation.op, row_id)
    after = (
        visible(database, table, row_id, who)
        if operation.op != "DELETE"
        else {w: False for w in who}
    )

    fanout = Fanout(POLICIES, VERIFIER, Limits(max_connections_per_user=100), 0)
    assert fanout.set_tables(database.tables) == []
    for user, tenant in who:
        session = fanout.open_session(0)
        session.receive(json.dumps({"type": "auth", "token": mint(user, tenant)}), 0)
        session.receive(json.dumps({"type": "subscribe", "table": table}), 0)
        [subscription] = session.subscriptions.values()
        assert session.identity is not None
        decision = subscription.receives(session.identity, change, {})
        relay = None if decision is None else (decision[0], decision[2])
        assert relay == expected(operation.op, before[(user, tenant)], after[(user, tenant)]), (
            f"{operation} as {user}/{tenant}: relay {relay}, "
            f"RLS before={before[(user, tenant)]} after={after[(user, tenant)]}"
        )
        assert subscription in fanout.index.candidates(change) or relay is None
