"""The relay's trigger layer: what a LISTEN connection receives for each write."""

import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from tests.support import WAIT, Listener, as_user

Conn = psycopg.Connection[Any]


def row_json(db: Conn, table: str, row_id: str) -> dict[str, Any]:
    row = db.execute(f"SELECT row_to_json(t) FROM {table} t WHERE id = %s", (row_id,)).fetchone()
    assert row is not None, f"{table} {row_id} not found"
    return dict(row[0])


def new_tenant(db: Conn, kind: str = "client") -> str:
    tenant_id = f"TNT-T{secrets.token_hex(4).upper()}"
    db.execute(
        "INSERT INTO nexus_tenants (id, name, kind) VALUES (%s, %s, %s)",
        (tenant_id, f"Test tenant {tenant_id}", kind),
    )
    return tenant_id


@dataclass
class Writes:
    """How to insert, update and delete one row of a published table."""

    table: str
    insert: Callable[[Conn], str]
    update: str
    parents: tuple[str, ...] = ()


WRITES = [
    Writes(
        "nexus_case_messages",
        lambda db: db.execute(
            "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
            " VALUES ('CASE-AB000001', 'TNT-ALPHA001', 'USR-ALIC0001', 'hello') RETURNING id"
        ).fetchone()[0],  # type: ignore[index]
        "UPDATE nexus_case_messages SET body = 'edited' WHERE id = %s",
        parents=("case",),
    ),
    Writes(
        "nexus_payments",
        lambda db: db.execute(
            "INSERT INTO nexus_payments (from_id, to_id, amount, currency, reference)"
            " VALUES ('TNT-ALPHA001', 'TNT-BETA0001', 10.50, 'EUR', 'test') RETURNING id"
        ).fetchone()[0],  # type: ignore[index]
        "UPDATE nexus_payments SET status = 'approved' WHERE id = %s",
    ),
    Writes(
        "nexus_notifications",
        lambda db: db.execute(
            "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title)"
            " VALUES ('TNT-ALPHA001', 'USR-ALIC0001', 'test', 'Test') RETURNING id"
        ).fetchone()[0],  # type: ignore[index]
        "UPDATE nexus_notifications SET read_at = now() WHERE id = %s",
    ),
    Writes(
        "nexus_tenant_relationships",
        lambda db: db.execute(
            "INSERT INTO nexus_tenant_relationships (client_id, vendor_id, invited_by_tenant_id)"
            " VALUES (%s, 'TNT-BETA0001', %s) RETURNING id",
            (tenant := new_tenant(db), tenant),
        ).fetchone()[0],  # type: ignore[index]
        "UPDATE nexus_tenant_relationships SET status = 'active' WHERE id = %s",
    ),
]


def test_published_tables_lists_the_four_seed_tables(db: Conn) -> None:
    rows = db.execute(
        "SELECT tablename, events, parents, primary_key, columns FROM relay.published_tables"
        " ORDER BY tablename"
    ).fetchall()
    assert [r[0] for r in rows] == [
        "nexus_case_messages",
        "nexus_notifications",
        "nexus_payments",
        "nexus_tenant_relationships",
    ]
    for _, events, _, primary_key, columns in rows:
        assert events == ["DELETE", "INSERT", "UPDATE"]
        assert primary_key == ["id"]
        assert columns[0] == {"name": "id", "type": "text", "category": "S"}
    assert rows[0][2] == {"case": "case_id"}


@pytest.mark.parametrize("writes", WRITES, ids=lambda w: w.table)
def test_insert_update_delete_are_notified_with_rows(
    db: Conn, listener: Listener, writes: Writes
) -> None:
    row_id = writes.insert(db)
    inserted = row_json(db, writes.table, row_id)
    db.execute(writes.update, (row_id,))
    updated = row_json(db, writes.table, row_id)
    db.execute(f"DELETE FROM {writes.table} WHERE id = %s", (row_id,))

    insert, update, delete = listener.take(3)
    assert insert["table"] == update["table"] == delete["table"] == f"public.{writes.table}"
    assert (insert["op"], update["op"], delete["op"]) == ("INSERT", "UPDATE", "DELETE")

    assert insert["new"] == inserted and "old" not in insert
    assert update["new"] == updated and update["old"] == inserted
    assert delete["old"] == updated and "new" not in delete

    for change in (insert, update, delete):
        assert change["v"] == 1
        assert int(change["xid"]) > 0
        assert change["ts"].startswith(inserted.get("created_at", change["ts"])[:4])
        if writes.parents:
            assert set(change["parents"]) == set(writes.parents)
        else:
            assert "parents" not in change
    assert len({insert["xid"], update["xid"], delete["xid"]}) == 3


def test_case_message_carries_its_parent_case(db: Conn, listener: Listener) -> None:
    WRITES[0].insert(db)
    change = listener.take_one()
    assert change["parents"]["case"] == row_json(db, "nexus_cases", "CASE-AB000001")
    assert "old_parents" not in change


def test_update_that_moves_a_message_to_another_case_sends_both_parents(
    db: Conn, listener: Listener
) -> None:
    other_case = db.execute(
        "INSERT INTO nexus_cases (client_id, vendor_id, subject)"
        " VALUES ('TNT-ALPHA001', 'TNT-BETA0001', 'Second case') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    message_id = WRITES[0].insert(db)
    listener.take_one()

    db.execute(
        "UPDATE nexus_case_messages SET case_id = %s WHERE id = %s", (other_case, message_id)
    )
    change = listener.take_one()
    assert change["parents"]["case"]["id"] == other_case
    assert change["old_parents"]["case"]["id"] == "CASE-AB000001"


def test_one_transaction_keeps_its_order_and_xid(db: Conn, listener: Listener) -> None:
    with db.transaction():
        ids = [WRITES[2].insert(db) for _ in range(5)]
        db.execute("UPDATE nexus_notifications SET read_at = now() WHERE id = %s", (ids[0],))
    changes = listener.take(6)
    assert [c["op"] for c in changes] == ["INSERT"] * 5 + ["UPDATE"]
    assert [c["new"]["id"] for c in changes[:5]] == ids
    assert len({c["xid"] for c in changes}) == 1


def test_rolled_back_writes_are_not_notified(db: Conn, listener: Listener) -> None:
    with pytest.raises(psycopg.errors.RaiseException), db.transaction():
        WRITES[1].insert(db)
        db.execute("DO $$ BEGIN RAISE EXCEPTION 'roll back'; END $$")
    listener.assert_silent()


def test_a_row_over_the_notify_limit_is_sent_by_reference(db: Conn, listener: Listener) -> None:
    body = "é" * (1024 * 1024 // 2)  # 1 MiB of UTF-8, in 512 Ki characters
    message_id = db.execute(
        "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
        " VALUES ('CASE-AB000001', 'TNT-ALPHA001', 'USR-ALIC0001', %s) RETURNING id",
        (body,),
    ).fetchone()[0]  # type: ignore[index]

    notice = listener.take_one()
    assert set(notice) == {"v", "table", "ref"}
    assert notice["table"] == "public.nexus_case_messages"
    stored = db.execute(
        "SELECT payload FROM relay.large_changes WHERE id = %s", (notice["ref"],)
    ).fetchone()
    assert stored is not None
    change = json.loads(stored[0])
    assert change["op"] == "INSERT"
    assert change["new"]["id"] == message_id
    assert change["new"]["body"] == body
    assert change["parents"]["case"]["id"] == "CASE-AB000001"


def test_a_user_writing_a_large_row_cannot_read_the_stored_changes(
    database_url: str, listener: Listener
) -> None:
    with psycopg.connect(database_url) as conn:
        with as_user(conn, "USR-ALIC0001", "TNT-ALPHA001"):
            conn.execute(
                "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
                " VALUES ('CASE-AB000001', 'TNT-ALPHA001', 'USR-ALIC0001', %s)",
                ("x" * 20_000,),
            )
        assert "ref" in listener.take_one()
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            as_user(conn, "USR-ALIC0001", "TNT-ALPHA001"),
        ):
            conn.execute("SELECT payload FROM relay.large_changes")


def test_bulk_insert_of_10000_rows_is_notified_row_by_row(db: Conn, listener: Listener) -> None:
    db.execute(
        "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title)"
        " SELECT 'TNT-BETA0001', 'USR-BOB00001', 'bulk', 'Bulk ' || g"
        " FROM generate_series(1, 10000) AS g"
    )
    changes = listener.take(10_000, timeout=4 * WAIT)
    assert len(changes) == 10_000
    assert len({c["new"]["id"] for c in changes}) == 10_000
    assert [c["new"]["title"] for c in changes[:3]] == ["Bulk 1", "Bulk 2", "Bulk 3"]
    assert len({c["xid"] for c in changes}) == 1


def test_writes_succeed_with_nobody_listening(db: Conn) -> None:
    listening = db.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'LISTEN%%'"
    ).fetchone()
    before = db.execute("SELECT count(*) FROM nexus_payments").fetchone()
    for _ in range(100):
        WRITES[1].insert(db)
    after = db.execute("SELECT count(*) FROM nexus_payments").fetchone()
    assert listening == (0,)
    assert before is not None and after is not None
    assert after[0] - before[0] == 100


def test_writes_do_not_wait_for_a_listener_that_never_reads(database_url: str, db: Conn) -> None:
    stalled = Listener(database_url)  # listens, never reads
    in_transaction = psycopg.connect(database_url)
    in_transaction.execute("LISTEN relay_changes")  # and stays in an open transaction
    try:
        db.execute("SELECT set_config('statement_timeout', %s, false)", (f"{int(WAIT * 1000)}ms",))
        for _ in range(500):
            WRITES[2].insert(db)
        db.execute(
            "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
            " SELECT 'TNT-ALPHA001', 'bulk', 'Bulk ' || g FROM generate_series(1, 5000) AS g"
        )
        # The stalled listener still gets everything once it reads.
        assert len(stalled.take(5500, timeout=2 * WAIT)) == 5500
    finally:
        in_transaction.close()
        stalled.close()


def test_truncate_is_notified(db: Conn, listener: Listener) -> None:
    db.execute("CREATE TABLE scratch_truncated (id int PRIMARY KEY)")
    try:
        db.execute("SELECT relay.publish('scratch_truncated')")
        db.execute("TRUNCATE scratch_truncated")
        assert listener.take_one() == {
            "v": 1,
            "table": "public.scratch_truncated",
            "op": "TRUNCATE",
        }
    finally:
        db.execute("DROP TABLE scratch_truncated")


def test_over_the_queue_high_water_mark_a_transaction_sends_one_marker(
    db: Conn, listener: Listener
) -> None:
    with db.transaction():
        db.execute("SET LOCAL relay.queue_high_water = 0")
        for _ in range(3):
            WRITES[1].insert(db)
    assert listener.take_one() == {"v": 1, "table": "public.nexus_payments", "op": "OVERFLOW"}
    listener.assert_silent()


def test_publish_and_unpublish(database_url: str, db: Conn, listener: Listener) -> None:
    control = Listener(database_url, "relay_control")
    db.execute("CREATE TABLE scratch_items (id int PRIMARY KEY, note text)")
    try:
        db.execute("SELECT relay.publish('scratch_items', ARRAY['insert'])")
        assert control.take_one() == {"op": "publish", "table": "public.scratch_items"}
        assert db.execute(
            "SELECT events FROM relay.published_tables WHERE tablename = 'scratch_items'"
        ).fetchone() == (["INSERT"],)

        db.execute("INSERT INTO scratch_items VALUES (1, 'one')")
        assert listener.take_one()["new"] == {"id": 1, "note": "one"}
        db.execute("UPDATE scratch_items SET note = 'uno'")
        listener.assert_silent()

        db.execute("SELECT relay.publish('scratch_items')")  # again: all events
        db.execute("UPDATE scratch_items SET note = 'eins'")
        assert listener.take_one()["old"] == {"id": 1, "note": "uno"}

        db.execute("SELECT relay.unpublish('scratch_items')")
        assert control.take(2)[1] == {"op": "unpublish", "table": "public.scratch_items"}
        db.execute("INSERT INTO scratch_items VALUES (2, 'two')")
        listener.assert_silent()
        assert db.execute(
            "SELECT count(*) FROM relay.published_tables WHERE tablename = 'scratch_items'"
        ).fetchone() == (0,)
    finally:
        db.execute("DROP TABLE scratch_items")
        control.close()


@pytest.mark.parametrize(
    ("setup", "call", "message"),
    [
        ("CREATE TABLE scratch_bad (id int)", "relay.publish('scratch_bad')", "has no primary key"),
        (
            "CREATE TABLE scratch_bad (id int PRIMARY KEY)",
            "relay.publish('scratch_bad', ARRAY['SELECT'])",
            "events must be some of",
        ),
        (
            "CREATE TABLE scratch_bad (id int PRIMARY KEY)",
            "relay.publish('scratch_bad', ARRAY[]::text[])",
            "events must be some of",
        ),
        (
            "CREATE TABLE scratch_bad (id int PRIMARY KEY, other int)",
            """relay.publish('scratch_bad', ARRAY['INSERT'], '{"x": "other"}')""",
            "is not a single-column foreign key",
        ),
        (
            "CREATE TABLE scratch_bad (id int PRIMARY KEY)",
            """relay.publish('scratch_bad', ARRAY['INSERT'], '["id"]')""",
            "parents must be a JSON object",
        ),
        (
            "CREATE VIEW scratch_bad AS SELECT 1 AS id",
            "relay.publish('scratch_bad')",
            "is not a table",
        ),
    ],
)
def test_publish_refuses_what_it_cannot_serve(
    db: Conn, setup: str, call: str, message: str
) -> None:
    with pytest.raises(psycopg.Error, match=message), db.transaction():
        db.execute(setup)
        db.execute(f"SELECT {call}")


def test_a_case_cannot_change_hands_while_a_message_to_it_is_being_written(
    database_url: str, db: Conn, listener: Listener
) -> None:
    # The parent is read FOR SHARE: the case the relay authorizes the message by
    # is the one its transaction commits with, as RLS sees it at that moment.
    writer = psycopg.connect(database_url)
    try:
        with as_user(writer, "USR-ALIC0001", "TNT-ALPHA001"):
            writer.execute(
                "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
                " VALUES ('CASE-AB000001', 'TNT-ALPHA001', 'USR-ALIC0001', 'in flight')"
            )
            with pytest.raises(psycopg.errors.LockNotAvailable), db.transaction():
                db.execute("SET LOCAL lock_timeout = '200ms'")
                db.execute(
                    "UPDATE nexus_cases SET vendor_id = 'TNT-GAMMA001' WHERE id = 'CASE-AB000001'"
                )
        change = listener.take_one()
        assert change["parents"]["case"]["vendor_id"] == "TNT-BETA0001"
    finally:
        writer.close()


def test_a_writer_that_may_not_read_the_parent_still_writes(db: Conn, listener: Listener) -> None:
    db.execute("DROP ROLE IF EXISTS relay_test_importer")
    db.execute("CREATE ROLE relay_test_importer NOLOGIN BYPASSRLS")
    db.execute("GRANT INSERT ON nexus_case_messages TO relay_test_importer")
    db.execute("GRANT USAGE ON SEQUENCE nexus_case_messages_id_seq TO relay_test_importer")
    try:
        with db.transaction():
            db.execute("SET LOCAL ROLE relay_test_importer")
            db.execute(
                "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
                " VALUES ('CASE-AB000001', 'TNT-BETA0001', 'USR-BOB00001', 'imported')"
            )
        change = listener.take_one()
        assert change["new"]["body"] == "imported"
        assert change["parents"] == {"case": None}  # visible to nobody: deny, not fail
    finally:
        db.execute("REVOKE ALL ON nexus_case_messages FROM relay_test_importer")
        db.execute("REVOKE ALL ON SEQUENCE nexus_case_messages_id_seq FROM relay_test_importer")
        db.execute("DROP ROLE relay_test_importer")


def test_large_changes_are_stored_by_the_trigger_only(database_url: str) -> None:
    with (
        psycopg.connect(database_url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege, match="capture trigger only"),
        as_user(conn, "USR-GRAC0001", "TNT-GAMMA001"),
    ):
        conn.execute("SELECT relay.spill(repeat('x', 100000))")


@pytest.mark.parametrize("setting", ["abc", "-1", "2", "0.5; DROP TABLE x", ""])
def test_an_odd_high_water_setting_never_fails_a_write(
    db: Conn, listener: Listener, setting: str
) -> None:
    with db.transaction():
        db.execute("SELECT set_config('relay.queue_high_water', %s, true)", (setting,))
        WRITES[1].insert(db)
    assert listener.take_one()["op"] == "INSERT"
