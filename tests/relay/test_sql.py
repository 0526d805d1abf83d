"""The relay's trigger layer, version 2: what the change log holds for each write.

Read as a relay reads it (tests.support.LogTail: relay.log's query, then the
core's net changes), and guarded as a security reviewer would try it: with a
role that has nothing but LOGIN.
"""

import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest

from relay.core.changes import Change, LoggedBroadcast, TableReset
from tests.support import WAIT, LogTail, as_user

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
        "UPDATE nexus_tenant_relationships SET status = 'declined' WHERE id = %s",
    ),
    Writes(
        "nexus_invitations",
        lambda db: db.execute(
            "INSERT INTO nexus_invitations (inviter_tenant_id, invitee_tenant_id)"
            " VALUES ('TNT-ALPHA001', %s) RETURNING id",
            (f"TNT-N{secrets.token_hex(4).upper()}",),
        ).fetchone()[0],  # type: ignore[index]
        "UPDATE nexus_invitations SET status = 'declined' WHERE id = %s",
    ),
]


def test_published_tables_lists_the_nexus_tables(db: Conn) -> None:
    rows = db.execute(
        "SELECT tablename, events, parents, primary_key, columns, relid::regclass::text"
        " FROM relay.published_tables ORDER BY tablename"
    ).fetchall()
    assert [r[0] for r in rows] == [
        "nexus_case_messages",
        "nexus_invitations",
        "nexus_notifications",
        "nexus_payments",
        "nexus_tenant_relationships",
    ]
    for name, events, _, primary_key, columns, relid in rows:
        assert events == ["DELETE", "INSERT", "UPDATE"]
        assert primary_key == ["id"]
        assert columns[0] == {"name": "id", "type": "text", "category": "S"}
        assert relid == name
    assert rows[0][2] == {"case": "case_id"}


@pytest.mark.parametrize("writes", WRITES, ids=lambda w: w.table)
def test_insert_update_delete_are_logged_with_rows(
    db: Conn, log_tail: LogTail, writes: Writes
) -> None:
    row_id = writes.insert(db)
    inserted = row_json(db, writes.table, row_id)
    db.execute(writes.update, (row_id,))
    updated = row_json(db, writes.table, row_id)
    db.execute(f"DELETE FROM {writes.table} WHERE id = %s", (row_id,))

    insert, update, delete = log_tail.take()
    assert insert.table == update.table == delete.table == f"public.{writes.table}"
    assert (insert.op, update.op, delete.op) == ("INSERT", "UPDATE", "DELETE")
    assert (insert.new, insert.old) == (inserted, None)
    assert (update.new, update.old) == (updated, inserted)
    assert (delete.new, delete.old) == (None, updated)
    for change in (insert, update, delete):
        assert int(change.xid) > 0
        assert change.timestamp[:4] == inserted.get("created_at", change.timestamp)[:4]
        assert set(change.parents) == set(writes.parents)
    assert len({insert.xid, update.xid, delete.xid}) == 3


def test_case_message_carries_its_parent_case(db: Conn, log_tail: LogTail) -> None:
    WRITES[0].insert(db)
    change = log_tail.take_one()
    assert change.parents["case"] == row_json(db, "nexus_cases", "CASE-AB000001")
    assert change.old_parents is None


def test_update_that_moves_a_message_to_another_case_logs_both_parents(
    db: Conn, log_tail: LogTail
) -> None:
    other_case = db.execute(
        "INSERT INTO nexus_cases (client_id, vendor_id, subject)"
        " VALUES ('TNT-ALPHA001', 'TNT-BETA0001', 'Second case') RETURNING id"
    ).fetchone()[0]  # type: ignore[index]
    message_id = WRITES[0].insert(db)
    log_tail.take_one()

    db.execute(
        "UPDATE nexus_case_messages SET case_id = %s WHERE id = %s", (other_case, message_id)
    )
    change = log_tail.take_one()
    assert change.parents["case"]["id"] == other_case
    assert change.old_parents["case"]["id"] == "CASE-AB000001"


def test_one_transaction_keeps_its_order_and_xid(db: Conn, log_tail: LogTail) -> None:
    with db.transaction():
        ids = [WRITES[2].insert(db) for _ in range(5)]
        other = WRITES[1].insert(db)
    changes = log_tail.take()
    assert [c.new["id"] for c in changes] == [*ids, other]
    assert len({c.xid for c in changes}) == 1


def test_rolled_back_writes_are_not_logged(db: Conn, log_tail: LogTail) -> None:
    with pytest.raises(psycopg.errors.RaiseException), db.transaction():
        WRITES[1].insert(db)
        db.execute("DO $$ BEGIN RAISE EXCEPTION 'roll back'; END $$")
    with db.transaction():
        kept = WRITES[1].insert(db)
        with pytest.raises(psycopg.errors.RaiseException), db.transaction():  # a savepoint
            WRITES[1].insert(db)
            db.execute("DO $$ BEGIN RAISE EXCEPTION 'roll back the savepoint'; END $$")
    assert [c.new["id"] for c in log_tail.take()] == [kept]


def test_a_row_of_a_megabyte_is_logged_whole(db: Conn, log_tail: LogTail) -> None:
    body = "é" * (1024 * 1024 // 2)  # 1 MiB of UTF-8, in 512 Ki characters
    db.execute(
        "INSERT INTO nexus_case_messages (case_id, sender_tenant_id, sender_user_id, body)"
        " VALUES ('CASE-AB000001', 'TNT-ALPHA001', 'USR-ALIC0001', %s)",
        (body,),
    )
    assert log_tail.take_one().new["body"] == body


# --- Net change per transaction -------------------------------------------------------


def payment_row(db: Conn, payment_id: str, to_id: str = "TNT-BETA0001") -> None:
    db.execute(
        "INSERT INTO nexus_payments (id, from_id, to_id, amount)"
        " VALUES (%s, 'TNT-ALPHA001', %s, 1)",
        (payment_id, to_id),
    )


def test_insert_then_updates_is_one_insert_of_the_final_row(db: Conn, log_tail: LogTail) -> None:
    other = new_tenant(db, "vendor")
    with db.transaction():
        payment_row(db, "PAY-NET00001")  # a draft to Beta...
        db.execute("UPDATE nexus_payments SET to_id = %s WHERE id = 'PAY-NET00001'", (other,))
        db.execute("UPDATE nexus_payments SET amount = 3 WHERE id = 'PAY-NET00001'")
    change = log_tail.take_one()  # ...that nobody else ever saw
    assert (change.op, change.new["to_id"], change.new["amount"], change.old) == (
        "INSERT",
        other,
        3,
        None,
    )


def test_insert_then_delete_is_nothing(db: Conn, log_tail: LogTail) -> None:
    with db.transaction():
        payment_row(db, "PAY-NET00002")
        db.execute("DELETE FROM nexus_payments WHERE id = 'PAY-NET00002'")
    log_tail.assert_silent()


def test_updates_are_one_update_from_the_first_old_row(db: Conn, log_tail: LogTail) -> None:
    notification = WRITES[2].insert(db)
    before = row_json(db, "nexus_notifications", notification)
    log_tail.take_one()
    with db.transaction():  # a private notification made public, then private again
        db.execute("UPDATE nexus_notifications SET user_id = NULL WHERE id = %s", (notification,))
        db.execute(
            "UPDATE nexus_notifications SET user_id = 'USR-ALIC0001', title = 'Again'"
            " WHERE id = %s",
            (notification,),
        )
    change = log_tail.take_one()
    assert (change.op, change.old, change.new["user_id"], change.new["title"]) == (
        "UPDATE",
        before,
        "USR-ALIC0001",
        "Again",
    )


def test_updates_then_delete_is_a_delete_of_the_first_old_row(db: Conn, log_tail: LogTail) -> None:
    payment_row(db, "PAY-NET00003")
    before = row_json(db, "nexus_payments", "PAY-NET00003")
    log_tail.take_one()
    with db.transaction():
        db.execute("UPDATE nexus_payments SET status = 'approved' WHERE id = 'PAY-NET00003'")
        db.execute("DELETE FROM nexus_payments WHERE id = 'PAY-NET00003'")
    change = log_tail.take_one()
    assert (change.op, change.old, change.new) == ("DELETE", before, None)


def test_delete_then_insert_of_the_same_key_is_an_update(db: Conn, log_tail: LogTail) -> None:
    payment_row(db, "PAY-NET00004")
    before = row_json(db, "nexus_payments", "PAY-NET00004")
    log_tail.take_one()
    other = new_tenant(db, "vendor")
    with db.transaction():
        db.execute("DELETE FROM nexus_payments WHERE id = 'PAY-NET00004'")
        payment_row(db, "PAY-NET00004", other)
    change = log_tail.take_one()
    assert (change.op, change.old, change.new["to_id"]) == ("UPDATE", before, other)


def test_a_changed_primary_key_is_a_delete_and_an_insert(db: Conn, log_tail: LogTail) -> None:
    payment_row(db, "PAY-NET00005")
    before = row_json(db, "nexus_payments", "PAY-NET00005")
    log_tail.take_one()
    db.execute("UPDATE nexus_payments SET id = 'PAY-NET00006' WHERE id = 'PAY-NET00005'")
    deleted, inserted = log_tail.take()
    assert (deleted.op, deleted.old) == ("DELETE", before)
    assert (inserted.op, inserted.new["id"], inserted.old) == ("INSERT", "PAY-NET00006", None)
    with db.transaction():  # made and renamed in one transaction: one INSERT of the final row
        payment_row(db, "PAY-NET00007")
        db.execute("UPDATE nexus_payments SET id = 'PAY-NET00008' WHERE id = 'PAY-NET00007'")
    change = log_tail.take_one()
    assert (change.op, change.new["id"]) == ("INSERT", "PAY-NET00008")


def test_bulk_insert_of_10000_rows_is_logged_row_by_row(db: Conn, log_tail: LogTail) -> None:
    db.execute(
        "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
        " SELECT 'TNT-BETA0001', 'bulk', 'bulk ' || n FROM generate_series(1, 10000) AS n"
    )
    changes = log_tail.take()
    assert len(changes) == 10_000
    assert [c.new["title"] for c in changes[:3]] == ["bulk 1", "bulk 2", "bulk 3"]


def test_truncate_is_logged_as_a_reset(db: Conn, log_tail: LogTail) -> None:
    db.execute("CREATE TABLE scratch_truncated (id int PRIMARY KEY)")
    try:
        db.execute("SELECT relay.publish('scratch_truncated')")
        db.execute("INSERT INTO scratch_truncated VALUES (1)")
        db.execute("TRUNCATE scratch_truncated")
        insert, reset = log_tail.take()
        assert isinstance(insert, Change)
        assert reset == TableReset("public.scratch_truncated", "truncate")
    finally:
        db.execute("SELECT relay.unpublish('scratch_truncated')")
        db.execute("DROP TABLE scratch_truncated")


# --- Ticks: every committed change once, in order, none held back ---------------------


def test_a_transaction_open_across_ticks_comes_in_the_tick_after_its_commit(
    database_url: str, db: Conn, log_tail: LogTail
) -> None:
    long_running = psycopg.connect(database_url)
    try:
        long_running.execute(
            "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
            " VALUES ('TNT-BETA0001', 'batch', 'long')"
        )
        short = WRITES[1].insert(db)  # commits while the long one is open
        [(first, change)] = log_tail.entries()
        assert change.new["id"] == short  # not held back behind the open transaction
        long_running.commit()
        [(second, change)] = log_tail.entries()
        assert change.new["title"] == "long"
        assert second > first  # the later commit, the later position, whatever its xid
        log_tail.assert_silent()
    finally:
        long_running.close()


def test_a_tick_is_taken_only_when_the_log_may_have_news(db: Conn) -> None:
    tick = db.execute("SELECT relay.tick()").fetchone()
    assert db.execute("SELECT relay.tick()").fetchone() == tick  # nothing new: no tick
    WRITES[1].insert(db)
    assert db.execute("SELECT relay.tick()").fetchone() == (tick[0] + 1,)  # type: ignore[index]


def test_a_case_cannot_change_hands_while_a_message_to_it_is_being_written(
    database_url: str, db: Conn, log_tail: LogTail
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
        assert log_tail.take_one().parents["case"]["vendor_id"] == "TNT-BETA0001"
    finally:
        writer.close()


# --- Publishing ------------------------------------------------------------------------


def test_publish_and_unpublish(database_url: str, db: Conn, log_tail: LogTail) -> None:
    control = psycopg.connect(database_url, autocommit=True)
    control.execute("LISTEN relay_control")
    db.execute("CREATE TABLE scratch_items (id int PRIMARY KEY, note text)")
    try:
        db.execute("SELECT relay.publish('scratch_items', ARRAY['insert'])")
        [notice] = control.notifies(timeout=WAIT, stop_after=1)
        assert notice.payload == '{"op" : "publish", "table" : "public.scratch_items"}'
        assert db.execute(
            "SELECT events FROM relay.published_tables WHERE tablename = 'scratch_items'"
        ).fetchone() == (["INSERT"],)

        db.execute("INSERT INTO scratch_items VALUES (1, 'one')")
        assert log_tail.take_one().new == {"id": 1, "note": "one"}
        db.execute("UPDATE scratch_items SET note = 'uno'")
        log_tail.assert_silent()

        db.execute("SELECT relay.publish('scratch_items')")  # again: all events
        db.execute("UPDATE scratch_items SET note = 'eins'")
        assert log_tail.take_one().old == {"id": 1, "note": "uno"}

        db.execute("SELECT relay.unpublish('scratch_items')")
        db.execute("INSERT INTO scratch_items VALUES (2, 'two')")
        log_tail.assert_silent()
        assert db.execute(  # its capture function is gone with it
            "SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
            " WHERE n.nspname = 'relay'"
            " AND p.proname = 'capture_' || 'scratch_items'::regclass::oid"
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


def test_a_composite_primary_key_is_logged_and_netted(db: Conn, log_tail: LogTail) -> None:
    db.execute("CREATE TABLE scratch_pairs (a int, b text, note text, PRIMARY KEY (a, b))")
    try:
        db.execute("SELECT relay.publish('scratch_pairs')")
        with db.transaction():
            db.execute("INSERT INTO scratch_pairs VALUES (1, 'x', 'first'), (1, 'y', 'other')")
            db.execute("UPDATE scratch_pairs SET note = 'final' WHERE a = 1 AND b = 'x'")
        changes = log_tail.take()
        assert [(c.op, c.new["b"], c.new["note"]) for c in changes] == [
            ("INSERT", "x", "final"),
            ("INSERT", "y", "other"),
        ]
    finally:
        db.execute("SELECT relay.unpublish('scratch_pairs')")
        db.execute("DROP TABLE scratch_pairs")


def test_publish_refuses_a_parent_its_owner_cannot_lock(db: Conn) -> None:
    db.execute("CREATE TABLE scratch_parents (id int PRIMARY KEY)")
    db.execute(
        "CREATE TABLE scratch_children (id int PRIMARY KEY, p int REFERENCES scratch_parents)"
    )
    db.execute("DROP ROLE IF EXISTS relay_test_owner")
    db.execute("CREATE ROLE relay_test_owner NOLOGIN")
    try:
        # Schema relay owned by a role without rights on the parent: no capture
        # that would fail every write, or log parents as null, is made.
        with db.transaction():
            db.execute("ALTER SCHEMA relay OWNER TO relay_test_owner")
            with (
                pytest.raises(psycopg.errors.InsufficientPrivilege, match="cannot read every row"),
                db.transaction(),
            ):
                db.execute(
                    """SELECT relay.publish('scratch_children', ARRAY['INSERT'], '{"p": "p"}')"""
                )
            db.execute("ALTER SCHEMA relay OWNER TO CURRENT_USER")
    finally:
        db.execute("DROP TABLE scratch_children, scratch_parents")
        db.execute("DROP ROLE relay_test_owner")


# --- Nobody reads or writes the log but through the capture --------------------------


@pytest.fixture
def outsider(db: Conn, database_url: str) -> Iterator[Conn]:
    """A role with nothing but LOGIN (and CREATE on a schema of its own)."""
    db.execute("DROP SCHEMA IF EXISTS outsider CASCADE")
    db.execute("DROP ROLE IF EXISTS relay_test_outsider")
    db.execute("CREATE ROLE relay_test_outsider LOGIN")
    db.execute("CREATE SCHEMA outsider AUTHORIZATION relay_test_outsider")
    conn = psycopg.connect(database_url, autocommit=True)
    conn.execute("SET ROLE relay_test_outsider")
    try:
        yield conn
    finally:
        conn.close()
        db.execute("DROP SCHEMA outsider CASCADE")
        db.execute("DROP ROLE relay_test_outsider")


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM relay.changes",
        "SELECT * FROM relay.ticks",
        "INSERT INTO relay.changes (rel, op, key, new)"
        " VALUES ('nexus_payments'::regclass, 'INSERT', 'PAY-FORGED01', '{}')",
        "DELETE FROM relay.changes",
        "SELECT relay.tick()",
        "SELECT relay.prune('0 s', 0)",
        "SELECT relay.publish('outsider.t')",
        "SELECT * FROM relay.published_tables",
        "SELECT relay.broadcast('room:x', 'forged', '{}')",
    ],
)
def test_a_login_alone_can_neither_read_nor_write_the_log(outsider: Conn, statement: str) -> None:
    outsider.execute("CREATE TABLE IF NOT EXISTS outsider.t (id int PRIMARY KEY)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        outsider.execute(statement)


def test_a_login_cannot_attach_the_capture_to_its_own_table(
    db: Conn, outsider: Conn, log_tail: LogTail
) -> None:
    capture = db.execute(
        "SELECT 'relay.' || quote_ident('capture_' || 'nexus_payments'::regclass::oid)"
    ).fetchone()[0]  # type: ignore[index]
    outsider.execute("CREATE TABLE outsider.fake (id text PRIMARY KEY)")
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        outsider.execute(
            f"CREATE TRIGGER forge AFTER INSERT ON outsider.fake"
            f" FOR EACH ROW EXECUTE FUNCTION {capture}()"
        )
    log_tail.assert_silent()


def test_a_listener_hears_doorbells_without_data(
    database_url: str, db: Conn, outsider: Conn
) -> None:
    outsider.execute("LISTEN relay_wake")
    WRITES[2].insert(db)
    [bell] = outsider.notifies(timeout=WAIT, stop_after=1)
    assert (bell.channel, bell.payload) == ("relay_wake", "")


def test_writers_need_no_right_on_the_log(database_url: str, log_tail: LogTail) -> None:
    with psycopg.connect(database_url) as conn:
        with as_user(conn, "USR-ALIC0001", "TNT-ALPHA001"):
            conn.execute(
                "INSERT INTO nexus_payments (from_id, to_id, amount) VALUES"
                " ('TNT-ALPHA001', 'TNT-BETA0001', 2)"
            )
        with (
            pytest.raises(psycopg.errors.InsufficientPrivilege),
            as_user(conn, "USR-ALIC0001", "TNT-ALPHA001"),
        ):
            conn.execute("SELECT count(*) FROM relay.changes")
    assert log_tail.take_one().new["amount"] == 2


# --- The doorbell and writers ----------------------------------------------------------


def test_writes_succeed_and_are_logged_with_nobody_listening(db: Conn, log_tail: LogTail) -> None:
    payment = WRITES[1].insert(db)  # the log is in the database: no reader is needed
    assert log_tail.take_one().new["id"] == payment


def test_writes_do_not_wait_for_a_listener_that_never_reads(database_url: str, db: Conn) -> None:
    stalled = psycopg.connect(database_url, autocommit=True)
    stalled.execute("LISTEN relay_wake")  # listens, never reads
    try:
        with psycopg.connect(database_url, autocommit=True) as writer:
            writer.execute("SET statement_timeout = '5s'")
            for _ in range(200):
                WRITES[2].insert(writer)
    finally:
        stalled.close()


def test_the_doorbell_can_be_turned_off(database_url: str) -> None:
    with (
        psycopg.connect(database_url, autocommit=True) as bell,
        psycopg.connect(database_url, autocommit=True) as writer,
    ):
        bell.execute("LISTEN relay_wake")
        writer.execute("SET relay.doorbell = 'off'")
        WRITES[2].insert(writer)
        assert list(bell.notifies(timeout=0.5, stop_after=1)) == []
        writer.execute("RESET relay.doorbell")
        WRITES[2].insert(writer)
        assert len(list(bell.notifies(timeout=WAIT, stop_after=1))) == 1


def test_a_busy_reader_silences_the_bell_and_one_writer_rings_for_many(
    database_url: str,
) -> None:
    with (
        psycopg.connect(database_url, autocommit=True) as bell,
        psycopg.connect(database_url, autocommit=True) as reader,
        psycopg.connect(database_url) as first,
        psycopg.connect(database_url, autocommit=True) as second,
    ):
        bell.execute("LISTEN relay_wake")
        reader.execute("SELECT pg_advisory_lock_shared(1380273242, 0)")  # reading anyway
        WRITES[2].insert(second)
        assert list(bell.notifies(timeout=0.5, stop_after=1)) == []
        reader.execute("SELECT pg_advisory_unlock_shared(1380273242, 0)")  # idle again
        WRITES[2].insert(first)  # rings (at commit), and holds the bell meanwhile...
        WRITES[2].insert(second)  # ...so this one does not
        first.commit()
        assert len(list(bell.notifies(timeout=WAIT, stop_after=1))) == 1
        assert list(bell.notifies(timeout=0.5, stop_after=1)) == []


# --- Retention ---------------------------------------------------------------------------


def test_prune_keeps_what_is_recent_and_deletes_what_the_log_no_longer_keeps(
    db: Conn, log_tail: LogTail
) -> None:
    WRITES[1].insert(db)
    log_tail.take()
    assert db.execute("SELECT relay.prune('1 hour', 1073741824)").fetchone() == (0,)
    newest = db.execute("SELECT max(id) FROM relay.ticks").fetchone()
    db.execute("UPDATE relay.ticks SET at = at - interval '2 hours'")  # as if two hours passed
    WRITES[1].insert(db)
    log_tail.take()
    deleted = 0
    while pruned := db.execute("SELECT relay.prune('1 hour', 1073741824, 1000)").fetchone()[0]:  # type: ignore[index]
        deleted += pruned
    assert deleted > 0
    # The newest of the old ticks stays: the batch of the tick after it starts there.
    assert db.execute("SELECT min(id) FROM relay.ticks").fetchone() == newest
    assert db.execute("SELECT count(*) FROM relay.changes").fetchone() == (1,)  # the new one


# --- relay.broadcast: broadcast from the database --------------------------------------


def test_a_broadcast_is_logged_at_commit_in_order_with_the_changes(
    db: Conn, log_tail: LogTail
) -> None:
    with db.transaction():
        db.execute("SELECT relay.broadcast('room:sql', 'lost', '{\"n\": 0}')")
        raise psycopg.Rollback
    with db.transaction():
        db.execute("SAVEPOINT s")
        db.execute("SELECT relay.broadcast('room:sql', 'lost', '{\"n\": 0}')")
        db.execute("ROLLBACK TO SAVEPOINT s")
    log_tail.assert_silent()
    with db.transaction():
        row_id = WRITES[2].insert(db)
        db.execute("SELECT relay.broadcast('room:sql', 'sent', '{\"n\": 1}')")
        # Two of one transaction are two, not one net change.
        db.execute("SELECT relay.broadcast('room:sql', 'sent', '{\"n\": 2}', false)")
        db.execute(WRITES[2].update, (row_id,))
    entries = log_tail.take()
    assert [type(e).__name__ for e in entries] == ["Change", "LoggedBroadcast", "LoggedBroadcast"]
    assert entries[1] == LoggedBroadcast("room:sql", "sent", {"n": 1}, True)
    assert entries[2] == LoggedBroadcast("room:sql", "sent", {"n": 2}, False)


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ("'', 'e', '{}'", psycopg.errors.InvalidParameterValue),
        (f"'{'t' * 256}', 'e', '{{}}'", psycopg.errors.InvalidParameterValue),
        ("'room:x', NULL, '{}'", psycopg.errors.InvalidParameterValue),
        ("'room:x', 'e', '[1, 2]'", psycopg.errors.InvalidParameterValue),
        (
            "'room:x', 'e', jsonb_build_object('x', repeat('a', 65536))",
            psycopg.errors.ProgramLimitExceeded,
        ),
    ],
)
def test_a_broadcast_out_of_bounds_is_refused_with_a_clear_error(
    db: Conn, log_tail: LogTail, arguments: str, error: type[Exception]
) -> None:
    with pytest.raises(error, match=r"relay\.broadcast: "):
        db.execute(f"SELECT relay.broadcast({arguments})")
    log_tail.assert_silent()


def test_a_granted_role_may_broadcast_without_any_right_on_the_log(
    db: Conn, outsider: Conn, log_tail: LogTail
) -> None:
    db.execute("GRANT USAGE ON SCHEMA relay TO relay_test_outsider")
    db.execute(
        "GRANT EXECUTE ON FUNCTION relay.broadcast(text, text, jsonb, boolean)"
        " TO relay_test_outsider"
    )
    try:
        outsider.execute("SELECT relay.broadcast('room:x', 'granted', '{}')")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            outsider.execute("SELECT * FROM relay.changes")
    finally:
        db.execute("REVOKE ALL ON SCHEMA relay FROM relay_test_outsider")
        db.execute(
            "REVOKE ALL ON FUNCTION relay.broadcast(text, text, jsonb, boolean)"
            " FROM relay_test_outsider"
        )
    assert log_tail.take() == [LoggedBroadcast("room:x", "granted", {}, True)]
