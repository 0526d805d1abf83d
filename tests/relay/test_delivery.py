"""What each subscriber receives: policies, filters, select, leave, delete, history.

Real PostgreSQL, a real relay process, real WebSocket connections. Negative
checks ("Grace receives nothing") wait for a fence, not for time.
"""

import asyncio
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from relay.client import RelayClient
from tests.relay.conftest import Connect, changes_of, until_fence
from tests.support import ALICE, BOB, CAROL, GRACE, WAIT, RelayProcess, mint

Conn = psycopg.Connection[Any]


async def subscribed(
    connect: Connect, who: tuple[str, str], *tables: str, **options: Any
) -> RelayClient:
    """A client of ``who`` subscribed to its notifications (for fences) and to ``tables``."""
    client = await connect(who)
    await client.subscribe("nexus_notifications")
    for table in tables:
        await client.subscribe(table, **options)
    return client


def insert(db: Conn, sql: str, *params: Any) -> str:
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return str(row[0])


NEW_MESSAGE = (
    "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
    " VALUES ('CASE-AB000001', 'TNT-ALPHA001', 'USR-ALIC0001', %s) RETURNING id"
)
NEW_PAYMENT = (
    "INSERT INTO nexus_payments (from_id, to_id, amount, currency, status, reference)"
    " VALUES (%s, %s, %s, 'EUR', %s, %s) RETURNING id"
)
NEW_NOTIFICATION = (
    "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title, priority)"
    " VALUES (%s, %s, 'test', %s, 'normal') RETURNING id"
)


async def test_case_messages_reach_both_sides_of_the_case_only(connect: Connect, rdb: Conn) -> None:
    clients = {
        name: (await subscribed(connect, who, "nexus_case_messages"), who[1])
        for name, who in (("alice", ALICE), ("bob", BOB), ("grace", GRACE))
    }
    message_id = insert(rdb, NEW_MESSAGE, "hello Bob")
    seen = await until_fence(rdb, clients)
    for name in ("alice", "bob"):
        [change] = changes_of(seen[name], "nexus_case_messages")
        assert change["op"] == "INSERT"
        assert change["new"]["id"] == message_id
        assert change["new"]["body"] == "hello Bob"
    assert changes_of(seen["grace"], "nexus_case_messages") == []


async def test_payments_reach_payer_and_payee_only(connect: Connect, rdb: Conn) -> None:
    clients = {
        name: (await subscribed(connect, who, "nexus_payments"), who[1])
        for name, who in (("alice", ALICE), ("bob", BOB), ("grace", GRACE))
    }
    payment_id = insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 99.5, "pending", "live")
    rdb.execute("UPDATE nexus_payments SET status = 'approved' WHERE id = %s", (payment_id,))
    seen = await until_fence(rdb, clients)
    for name in ("alice", "bob"):
        insert_event, update_event = changes_of(seen[name], "nexus_payments")
        assert (insert_event["op"], update_event["op"]) == ("INSERT", "UPDATE")
        assert insert_event["new"]["amount"] == 99.5
        assert update_event["new"]["status"] == "approved"
        assert update_event["old"]["status"] == "pending"
    assert changes_of(seen["grace"], "nexus_payments") == []


async def test_notifications_reach_their_user_or_their_whole_tenant(
    connect: Connect, rdb: Conn
) -> None:
    clients = {
        name: (await subscribed(connect, who), who[1])
        for name, who in (("alice", ALICE), ("carol", CAROL), ("bob", BOB), ("grace", GRACE))
    }
    for_alice = insert(rdb, NEW_NOTIFICATION, "TNT-ALPHA001", "USR-ALIC0001", "for Alice")
    for_alpha = insert(rdb, NEW_NOTIFICATION, "TNT-ALPHA001", None, "for all of Alpha")
    seen = await until_fence(rdb, clients)

    def ids(name: str) -> set[str]:
        return {e["new"]["id"] for e in changes_of(seen[name], "nexus_notifications")}

    assert ids("alice") == {for_alice, for_alpha}
    assert ids("carol") == {for_alpha}
    assert ids("bob") == set()
    assert ids("grace") == set()


async def test_relationships_reach_both_tenants_only(connect: Connect, rdb: Conn) -> None:
    rdb.execute(
        "INSERT INTO nexus_tenants (id, name, kind) VALUES ('TNT-NEWV0001', 'New Vendor', 'vendor')"
        " ON CONFLICT DO NOTHING"
    )
    clients = {
        name: (await subscribed(connect, who, "nexus_tenant_relationships"), who[1])
        for name, who in (("alice", ALICE), ("bob", BOB), ("grace", GRACE))
    }
    rdb.execute(
        "INSERT INTO nexus_tenant_relationships (client_id, vendor_id, invited_by_tenant_id,"
        " status) VALUES ('TNT-ALPHA001', 'TNT-NEWV0001', 'TNT-ALPHA001', 'declined')"
        " ON CONFLICT (client_id, vendor_id) DO UPDATE SET status = 'declined'"
    )
    seen = await until_fence(rdb, clients)
    assert len(changes_of(seen["alice"], "nexus_tenant_relationships")) == 1
    assert changes_of(seen["bob"], "nexus_tenant_relationships") == []
    assert changes_of(seen["grace"], "nexus_tenant_relationships") == []


async def test_a_service_role_sees_every_row(connect: Connect, rdb: Conn) -> None:
    service = await connect(token=mint("service-batch", None, role="service_role"))
    await service.subscribe("nexus_notifications", filter="notification_type=eq.audit")
    grace_only = insert(
        rdb, NEW_NOTIFICATION.replace("'test'", "'audit'"), "TNT-GAMMA001", "USR-GRAC0001", "x"
    )
    event = await service.next_event(WAIT)
    assert event["new"]["id"] == grace_only


async def test_a_change_committed_right_after_the_ack_is_delivered(
    connect: Connect, rdb: Conn
) -> None:
    # Supabase's users lose the first writes after SUBSCRIBED; here the ack means live.
    for attempt in range(20):
        client = await connect(BOB)
        ack = await client.subscribe("nexus_case_messages")
        assert ack["type"] == "subscribed"
        message_id = insert(rdb, NEW_MESSAGE, f"right after the ack {attempt}")
        event = await client.next_event(WAIT)
        assert event["new"]["id"] == message_id
        await client.close()


@pytest.mark.parametrize(
    ("row_filter", "matches"),
    [
        ("status=eq.pending", {"p1"}),
        ("status=neq.pending", {"p2", "p3"}),
        ("amount=gt.100", {"p2", "p3"}),
        ("amount=gte.150", {"p2", "p3"}),
        ("amount=lt.150", {"p1"}),
        ("amount=lte.150", {"p1", "p2"}),
        ("status=in.(pending,paid)", {"p1", "p3"}),
        ("status=not.in.(pending,paid)", {"p2"}),
        ("reference=like.inv-%", {"p1", "p2"}),
        ("reference=ilike.INV-*", {"p1", "p2"}),
        ("reference=not.like.inv-%", {"p3"}),
        # Read with the column's collation (C.UTF-8 here: code point order), by the reader.
        ("reference=gt.inv-1", {"p2", "p3"}),
        ("amount=lt.Infinity", {"p1", "p2", "p3"}),
        ("created_at=lt.infinity", {"p1", "p2", "p3"}),
        ("status=is.null", set()),
        ("status=not.is.null", {"p1", "p2", "p3"}),
        ("status=eq.paid&amount=gt.1000", {"p3"}),
        ("or=(status.eq.pending,amount.gt.1000)", {"p1", "p3"}),
        ("or=(status.eq.approved,and(status.eq.paid,reference.eq.other))", {"p2", "p3"}),
        ("not.or=(status.eq.pending,status.eq.paid)", {"p2"}),
    ],
)
async def test_filters_narrow_what_a_subscription_receives(
    connect: Connect, rdb: Conn, row_filter: str, matches: set[str]
) -> None:
    client = await subscribed(connect, BOB)
    await client.subscribe("nexus_payments", events=["INSERT"], filter=row_filter)
    rows = {
        "p1": ("pending", 100, "inv-1"),
        "p2": ("approved", 150, "inv-2"),
        "p3": ("paid", 2000, "other"),
    }
    ids = {
        insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", amount, status, reference): name
        for name, (status, amount, reference) in rows.items()
    }
    seen = await until_fence(rdb, {"bob": (client, "TNT-BETA0001")})
    assert {ids[e["new"]["id"]] for e in changes_of(seen["bob"], "nexus_payments")} == matches


async def test_select_sends_the_chosen_columns_and_the_primary_key(
    connect: Connect, rdb: Conn
) -> None:
    client = await connect(BOB)
    await client.subscribe("nexus_payments", select=["status", "amount"])
    payment_id = insert(
        rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 12, "pending", "secret-ref"
    )
    event = await client.next_event(WAIT)
    assert event["new"] == {"id": payment_id, "status": "pending", "amount": 12}


async def test_delete_is_authorized_against_the_old_row(connect: Connect, rdb: Conn) -> None:
    clients = {
        name: (await subscribed(connect, who, "nexus_payments"), who[1])
        for name, who in (("alice", ALICE), ("bob", BOB), ("grace", GRACE))
    }
    alpha_gamma = insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-GAMMA001", 5, "pending", "a-g")
    rdb.execute("DELETE FROM nexus_payments WHERE id = %s", (alpha_gamma,))
    seen = await until_fence(rdb, clients)
    assert [e["op"] for e in changes_of(seen["alice"], "nexus_payments")] == ["INSERT", "DELETE"]
    delete = changes_of(seen["alice"], "nexus_payments")[1]
    assert delete["old"]["id"] == alpha_gamma and "new" not in delete
    assert [e["op"] for e in changes_of(seen["grace"], "nexus_payments")] == ["INSERT", "DELETE"]
    # Bob never saw the row: not even its primary key reaches him.
    assert changes_of(seen["bob"], "nexus_payments") == []


async def test_an_update_that_moves_a_row_out_of_view_tells_it_left(
    connect: Connect, rdb: Conn
) -> None:
    clients = {
        name: (await subscribed(connect, who, "nexus_payments"), who[1])
        for name, who in (("alice", ALICE), ("bob", BOB), ("grace", GRACE))
    }
    payment_id = insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 7, "pending", "moving")
    rdb.execute("UPDATE nexus_payments SET to_id = 'TNT-GAMMA001' WHERE id = %s", (payment_id,))
    seen = await until_fence(rdb, clients)

    bob = changes_of(seen["bob"], "nexus_payments")
    assert [e["op"] for e in bob] == ["INSERT", "LEAVE"]
    assert bob[1]["old"]["to_id"] == "TNT-BETA0001"
    assert "new" not in bob[1]  # where it went is not Bob's business

    grace = changes_of(seen["grace"], "nexus_payments")
    assert [e["op"] for e in grace] == ["UPDATE"]
    assert grace[0]["new"]["to_id"] == "TNT-GAMMA001"
    assert "old" not in grace[0]  # what it was before is not Grace's business

    alice = changes_of(seen["alice"], "nexus_payments")
    assert [e["op"] for e in alice] == ["INSERT", "UPDATE"]
    assert alice[1]["old"]["to_id"] == "TNT-BETA0001"


async def test_an_update_out_of_the_filter_tells_it_left(connect: Connect, rdb: Conn) -> None:
    client = await subscribed(connect, BOB)
    await client.subscribe("nexus_payments", filter="status=eq.pending")
    payment_id = insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 8, "pending", "filter")
    rdb.execute("UPDATE nexus_payments SET status = 'paid' WHERE id = %s", (payment_id,))
    seen = await until_fence(rdb, {"bob": (client, "TNT-BETA0001")})
    assert [e["op"] for e in changes_of(seen["bob"], "nexus_payments")] == ["INSERT", "LEAVE"]


async def test_a_one_megabyte_row_is_delivered_where_the_limits_allow_it(
    relay_database: str, rdb: Conn
) -> None:
    large = RelayProcess(
        relay_database,
        RELAY_MAX_CHANGE_BYTES=str(2 * 1024 * 1024),
        RELAY_MAX_SEND_BUFFER_BYTES=str(4 * 1024 * 1024),
    ).start()
    try:
        client = await RelayClient.connect(large.url, mint(*ALICE), timeout=WAIT)
        await client.subscribe("nexus_case_messages")
        body = "ü" * (1024 * 1024 // 2)
        message_id = insert(rdb, NEW_MESSAGE, body)
        event = await client.next_event(2 * WAIT)
        assert event["new"]["id"] == message_id
        assert event["new"]["body"] == body
        await client.close()
    finally:
        large.stop()


async def test_a_one_megabyte_row_comes_as_its_key_by_default(connect: Connect, rdb: Conn) -> None:
    client = await connect(ALICE)
    await client.subscribe("nexus_case_messages")
    message_id = insert(rdb, NEW_MESSAGE, "ü" * (1024 * 1024 // 2))
    event = await client.next_event(2 * WAIT)
    assert event["too_large"] is True and event["key"] == {"id": message_id}
    assert "new" not in event


async def test_events_filter_by_operation(connect: Connect, rdb: Conn) -> None:
    client = await subscribed(connect, BOB)
    await client.subscribe("nexus_payments", events=["UPDATE"])
    payment_id = insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 3, "pending", "ops")
    rdb.execute("UPDATE nexus_payments SET status = 'approved' WHERE id = %s", (payment_id,))
    rdb.execute("DELETE FROM nexus_payments WHERE id = %s", (payment_id,))
    seen = await until_fence(rdb, {"bob": (client, "TNT-BETA0001")})
    assert [e["op"] for e in changes_of(seen["bob"], "nexus_payments")] == ["UPDATE"]


async def test_two_subscriptions_matching_one_change_get_one_frame(
    connect: Connect, rdb: Conn
) -> None:
    client = await connect(BOB)
    first = await client.subscribe("nexus_payments")
    second = await client.subscribe("nexus_payments", filter="status=eq.pending")
    insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 4, "pending", "both")
    event = await client.next_event(WAIT)
    assert sorted(event["subscriptions"]) == sorted([first["id"], second["id"]])


async def test_unsubscribed_means_no_more_events(connect: Connect, rdb: Conn) -> None:
    client = await subscribed(connect, BOB)
    ack = await client.subscribe("nexus_payments")
    await client.unsubscribe(ack["id"])
    insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 6, "pending", "after")
    seen = await until_fence(rdb, {"bob": (client, "TNT-BETA0001")})
    assert changes_of(seen["bob"], "nexus_payments") == []


# --- History -----------------------------------------------------------------------


async def test_a_client_that_reconnects_receives_what_it_missed(
    connect: Connect, rdb: Conn
) -> None:
    token = mint(*BOB)  # reconnecting, a client keeps its token (docs/protocol.md, "Resuming")
    client = await connect(token=token)
    subscription = await client.subscribe("nexus_payments")
    insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 1, "pending", "seen")
    seen = await client.next_event(WAIT)
    since, resume_token = client.resume_point(subscription["id"])
    assert since == seen["position"]
    await client.close()

    missed = [
        insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", n, "pending", f"missed {n}")
        for n in (2, 3, 4)
    ]
    insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-GAMMA001", 5, "pending", "not for Bob")

    again = await connect(token=token)
    ack = await again.subscribe("nexus_payments", since=since, resume_token=resume_token)
    assert ack["resumed"] is True
    live = insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 6, "pending", "live")
    received = [await again.next_event(WAIT) for _ in range(5)]
    # In order, nothing twice, nothing of Gamma's, the replay's end among them
    # (what the relay had not read yet when the client resumed comes live after it).
    assert sorted(e["type"] for e in received) == ["change"] * 4 + ["replayed"]
    assert [e["new"]["id"] for e in received if e["type"] == "change"] == [*missed, live]
    assert received[-1]["type"] == "change"
    assert again.resume_point(ack["id"])[0] == received[-1]["position"]


async def test_a_resume_without_proof_replays_nothing(connect: Connect, rdb: Conn) -> None:
    # Anyone may name a position; only a subscriber who was there gets what followed it.
    first = await connect(BOB)
    ack = await first.subscribe("nexus_payments")
    insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 1, "pending", "before")
    await first.next_event(WAIT)
    curious = await connect(CAROL)
    refused = await curious.subscribe(
        "nexus_payments", since=ack["position"], resume_token=ack["resume_token"]
    )
    assert refused["resumed"] is False
    gap = await curious.next_event(WAIT)
    assert (gap["type"], gap["reason"]) == ("gap", "resume_refused")


async def test_a_resume_from_another_log_is_a_gap(connect: Connect) -> None:
    client = await connect(BOB)
    ack = await client.subscribe(
        "nexus_payments", since="0000dead:5.0", resume_token="5.0.1.whatever"
    )
    assert ack["resumed"] is False
    gap = await client.next_event(WAIT)
    assert gap == {
        "type": "gap",
        "subscriptions": [ack["id"]],
        "reason": "log_changed",
        "position": ack["position"],
    }


async def test_a_resume_beyond_memory_is_replayed_from_the_log(
    relay_database: str, rdb: Conn, connect: Connect
) -> None:
    small = RelayProcess(relay_database, RELAY_HISTORY_SIZE="3").start()
    try:
        watcher = await connect(ALICE, target=small)
        await watcher.subscribe("nexus_payments")
        token = mint(*BOB)
        client = await connect(token=token, target=small)
        subscription = await client.subscribe("nexus_payments")
        insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 1, "pending", "h")
        await client.next_event(WAIT)
        since, resume_token = client.resume_point(subscription["id"])
        await client.close()
        missed = [
            insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", n + 2, "pending", "h")
            for n in range(5)
        ]
        for _ in range(5):  # the relay has read them all: its memory moved on
            await watcher.next_event(WAIT)
        again = await connect(token=token, target=small)
        ack = await again.subscribe("nexus_payments", since=since, resume_token=resume_token)
        assert ack["resumed"] is True
        received = [await again.next_event(WAIT) for _ in range(6)]
        assert [e["type"] for e in received] == ["change"] * 5 + ["replayed"]
        assert [e["new"]["id"] for e in received[:5]] == missed
        metrics = small.metrics()
        assert metrics['relay_replays_total{source="log"}'] == 1
    finally:
        # Off the event loop: the clients must answer the relay's closing handshake.
        await asyncio.get_running_loop().run_in_executor(None, small.stop)


@pytest.mark.parametrize("since", ["12", "log:1", "log:1.x", "log:²1.1", "log:1.1.1"])
async def test_a_malformed_position_is_refused(connect: Connect, since: str) -> None:
    client = await connect(BOB)
    with pytest.raises(Exception, match="invalid_position"):
        await client.subscribe("nexus_payments", since=since)


async def test_a_resume_from_before_what_the_log_keeps_is_a_gap(
    new_demo_database: Callable[[], str], connect: Connect
) -> None:
    url = new_demo_database()  # its own: pruning here must not cut others' resumes
    relay = RelayProcess(url, RELAY_HISTORY_SIZE="1").start()
    try:
        token = mint(*BOB)
        watcher = await connect(ALICE, target=relay)
        await watcher.subscribe("nexus_payments")
        client = await connect(token=token, target=relay)
        subscription = await client.subscribe("nexus_payments")
        with psycopg.connect(url, autocommit=True) as db:
            insert(db, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 1, "pending", "kept")
            await client.next_event(WAIT)
            since, resume_token = client.resume_point(subscription["id"])
            await client.close()
            for n in range(3):
                insert(db, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", n + 2, "pending", "x")
            # Two hours pass; the log keeps one.
            db.execute("UPDATE relay.ticks SET at = at - interval '2 hours'")
            insert(db, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", 9, "pending", "new")
            db.execute("SELECT relay.tick()")
            while db.execute("SELECT relay.prune('1 hour', 1073741824)").fetchone() != (0,):
                pass
        for _ in range(5):  # the relay has read them all: what it holds in memory moved on
            await watcher.next_event(WAIT)
        again = await connect(token=token, target=relay)
        ack = await again.subscribe("nexus_payments", since=since, resume_token=resume_token)
        event = await again.next_event(WAIT)
        assert (ack["resumed"], event["type"], event.get("reason")) == (
            True,
            "gap",
            "history_exceeded",
        )
    finally:
        await asyncio.get_running_loop().run_in_executor(None, relay.stop)


async def test_a_position_of_trigger_layer_1_is_a_gap_not_an_error(connect: Connect) -> None:
    client = await connect(BOB)  # kept by a page across the upgrade to the change log
    ack = await client.subscribe("nexus_payments", since="8f3a2c1d:1042", resume_token="1042.x")
    assert ack["resumed"] is False
    gap = await client.next_event(WAIT)
    assert (gap["type"], gap["reason"]) == ("gap", "log_changed")


async def test_a_change_too_large_to_send_comes_as_its_key(relay_database: str, rdb: Conn) -> None:
    small = RelayProcess(relay_database, RELAY_MAX_CHANGE_BYTES="2048").start()
    try:
        token = mint(*BOB)  # kept for the resume: issued before its resume token
        client = await RelayClient.connect(small.url, token, timeout=WAIT)
        subscribed = await client.subscribe("nexus_notifications")
        large = insert(
            rdb,
            "INSERT INTO nexus_notifications (tenant_id, notification_type, title, body)"
            " VALUES ('TNT-BETA0001', 'test', 'large', repeat('x', 2000)) RETURNING id",
        )
        after = insert(
            rdb,
            "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
            " VALUES ('TNT-BETA0001', 'test', 'after the large one') RETURNING id",
        )
        notice = await client.next_event(WAIT)
        assert notice["too_large"] is True and notice["key"] == {"id": large}
        assert notice["op"] == "INSERT" and "new" not in notice and notice["size"] > 2048
        assert (await client.next_event(WAIT))["new"]["id"] == after  # still connected

        # A resume over it replays the notice, not the row.
        position, resume_token = client.resume_point(subscribed["id"])
        again = await RelayClient.connect(small.url, token, timeout=WAIT)
        await again.subscribe(
            "nexus_notifications", since=subscribed["position"], resume_token=resume_token
        )
        replayed = [await again.next_event(WAIT) for _ in range(3)]
        assert [e["type"] for e in replayed] == ["change", "change", "replayed"]
        assert replayed[0]["too_large"] is True and replayed[1]["new"]["id"] == after
        assert position == replayed[1]["position"]
        await client.close()
        await again.close()
    finally:
        small.stop()
