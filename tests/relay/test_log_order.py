"""The change log under concurrent writers: every committed change once, in order.

Writers race on shared and on their own rows: short transactions of several
writes, some rolled back, some with a savepoint rolled back, some deleting and
inserting a key again, and a batch job that holds a transaction open while the
others commit. Two readers read the log as relays do (relay.tick() and
relay.log's query), and a real relay delivers it to a real client.

Every write sets the row's ``version`` from one sequence: a version is never
seen twice. So for each row, the changes a reader received must form a chain:
each change's old row is the previous change's new row. A skipped change
breaks the chain, a duplicate breaks it, a reordered one breaks it; and the
chain must end at what the table holds.
"""

import asyncio
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from portal import migrations
from relay.client import RelayClient
from tests.support import WAIT, LogTail, RelayProcess, mint

CHANGES = 100_000
WRITERS = 6
SHARED = 300  # rows every writer updates: row locks order their changes
ROWS_PER_TRANSACTION = 6

POLICY = """
version = 1

[claims.tenant_id]
path = "app_metadata.tenant_id"

[roles]
bypass = ["service_role"]

[tables."public.stress_rows"]
visible = "owner = claims.tenant_id"
"""


@pytest.fixture(scope="module")
def stress_database(new_database: Callable[[], str]) -> str:
    url = new_database()
    migrations.upgrade(url)
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("CREATE SEQUENCE stress_versions")
        db.execute(
            "CREATE TABLE stress_rows (id int PRIMARY KEY, owner text NOT NULL DEFAULT 'TNT-X',"
            " version bigint NOT NULL, note text NOT NULL DEFAULT '')"
        )
        db.execute(
            "INSERT INTO stress_rows (id, version)"
            " SELECT n, nextval('stress_versions') FROM generate_series(0, %s) n",
            (SHARED - 1,),
        )
        db.execute("SELECT relay.publish('stress_rows')")
    return url


@dataclass
class Writer:
    """One writer's loop; its own rows are ids from ``base`` on."""

    url: str
    number: int
    stop: threading.Event
    committed: int = 0  # writes in committed transactions
    errors: list[BaseException] = field(default_factory=list)
    before: list[int] = field(default_factory=list)  # own rows before the transaction

    def run(self) -> None:
        rng = random.Random(self.number)
        own: list[int] = []
        next_id = 1_000_000 * (self.number + 1)
        try:
            with psycopg.connect(self.url) as conn:
                while not self.stop.is_set():
                    try:
                        next_id = self.transaction(conn, rng, own, next_id)
                    except psycopg.errors.DeadlockDetected:
                        # Shared rows in random order: PostgreSQL picks a victim,
                        # rolled back as a whole, as an application would retry.
                        conn.rollback()
                        own[:] = self.before
                        next_id += ROWS_PER_TRANSACTION
        except BaseException as exc:
            self.errors.append(exc)

    def transaction(
        self, conn: psycopg.Connection[Any], rng: random.Random, own: list[int], next_id: int
    ) -> int:
        self.before = list(own)
        kind = rng.random()
        writes = 0
        made: list[int] = []
        gone: list[int] = []
        with conn.cursor() as cur:
            for _ in range(ROWS_PER_TRANSACTION):
                roll = rng.random()
                if roll < 0.3 or not own:
                    cur.execute(INSERT, (next_id,))
                    made.append(next_id)
                    next_id += 1
                elif roll < 0.6:
                    cur.execute(UPDATE, (rng.randrange(SHARED),))
                elif roll < 0.8:
                    row = rng.choice(own)
                    cur.execute(UPDATE, (row,))
                    cur.execute(UPDATE, (row,))  # twice: one net change
                elif roll < 0.9:
                    row = own.pop(rng.randrange(len(own)))
                    cur.execute("DELETE FROM stress_rows WHERE id = %s", (row,))
                    if rng.random() < 0.5:  # the same key again: one net UPDATE
                        cur.execute(INSERT, (row,))
                        own.append(row)
                    else:
                        gone.append(row)
                else:
                    cur.execute("SAVEPOINT s")
                    cur.execute(INSERT_ROLLED_BACK, (next_id + 500_000,))
                    cur.execute("ROLLBACK TO SAVEPOINT s")
                writes += 1
            if kind < 0.05:
                cur.execute(INSERT_ROLLED_BACK, (next_id + 700_000,))
                conn.rollback()
                own += [row for row in gone]  # not deleted after all
                return next_id
        conn.commit()
        own += made
        self.committed += writes
        return next_id


INSERT = "INSERT INTO stress_rows (id, version) VALUES (%s, nextval('stress_versions'))"
UPDATE = "UPDATE stress_rows SET version = nextval('stress_versions') WHERE id = %s"
INSERT_ROLLED_BACK = (
    "INSERT INTO stress_rows (id, version, note)"
    " VALUES (%s, nextval('stress_versions'), 'rolled back')"
)


class Reader:
    """Reads the log as a relay does, until told to stop and caught up."""

    def __init__(self, url: str) -> None:
        self.tail = LogTail(url)
        self.changes: list[tuple[Any, Any]] = []
        self.stop = threading.Event()
        self.has_read_enough = threading.Event()  # CHANGES changes read
        self.thread = threading.Thread(target=self.run)

    def run(self) -> None:
        while True:
            stopping = self.stop.is_set()
            self.changes += self.tail.entries()
            if len(self.changes) >= CHANGES:
                self.has_read_enough.set()
            if stopping:
                self.tail.close()
                return
            time.sleep(0.005)  # a relay's busy read interval, not a wait for an event


@dataclass
class BatchJob:
    """Holds a transaction open while everyone else commits, then commits it."""

    url: str
    readers: list[Reader]
    stop: threading.Event
    not_held_back: list[bool] = field(default_factory=list)

    def run(self) -> None:
        with psycopg.connect(self.url) as conn:
            while not self.stop.is_set():
                conn.execute(
                    "INSERT INTO stress_rows (id, version, note)"
                    " SELECT 9000000 + n, nextval('stress_versions'), 'batch'"
                    " FROM generate_series(%s::int, %s::int) n",
                    (len(self.not_held_back) * 100, len(self.not_held_back) * 100 + 99),
                )
                seen = len(self.readers[0].changes)
                self.stop.wait(1.0)  # the batch job's work, meanwhile others commit
                self.not_held_back.append(len(self.readers[0].changes) > seen)
                conn.commit()


def chains(changes: list[tuple[Any, Any]]) -> dict[int, list[Any]]:
    by_row: dict[int, list[Any]] = {}
    for _, change in changes:
        row = change.new if change.new is not None else change.old
        by_row.setdefault(row["id"], []).append(change)
    return by_row


def check_chain(row_id: int, changes: list[Any], final: dict[int, int]) -> None:
    previous_new: dict[str, Any] | None = None
    for change in changes:
        if change.op == "INSERT":
            assert previous_new is None, f"row {row_id}: INSERT of a live row: {changes}"
        else:
            assert previous_new is None or change.old == previous_new, (
                f"row {row_id}: a change skipped, repeated or out of order: {changes}"
            )
        previous_new = change.new
        assert (change.new or {}).get("note") != "rolled back"
    if row_id in final:
        assert previous_new is not None and previous_new["version"] == final[row_id], row_id
    else:
        assert previous_new is None, f"row {row_id} deleted, but its last change is not"


def test_every_committed_change_once_in_order_under_concurrent_writers(
    stress_database: str, tmp_path: Path
) -> None:
    url = stress_database
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    relay = RelayProcess(url, RELAY_POLICY_FILE=str(policy)).start()
    delivered: list[dict[str, Any]] = []
    receiving = asyncio.new_event_loop()
    client_done = threading.Event()

    async def receive() -> None:
        token = mint(None, None, role="service_role")
        async with await RelayClient.connect(relay.url, token, timeout=WAIT) as client:
            await client.subscribe("stress_rows")
            client_done.clear()
            ready.set()
            while True:
                event = await client.next_event(4 * WAIT)
                delivered.append(event)
                if event.get("type") == "change" and (event.get("new") or {}).get("id") == -1:
                    return

    ready = threading.Event()
    receiver = threading.Thread(target=lambda: receiving.run_until_complete(receive()))
    receiver.start()
    assert ready.wait(4 * WAIT)

    readers = [Reader(url), Reader(url)]
    for reader in readers:
        reader.thread.start()
    stop = threading.Event()
    writers = [Writer(url, n, stop) for n in range(WRITERS)]
    batch_job = BatchJob(url, readers, stop)
    threads = [threading.Thread(target=w.run) for w in writers]
    threads.append(threading.Thread(target=batch_job.run))
    for thread in threads:
        thread.start()
    try:
        readers[0].has_read_enough.wait(40 * WAIT)  # the events are checked below
    finally:
        stop.set()
        for thread in threads:
            thread.join(4 * WAIT)
    for writer in writers:
        assert writer.errors == [], writer.errors
    with psycopg.connect(url, autocommit=True) as db:
        db.execute("INSERT INTO stress_rows (id, version) VALUES (-1, 0)")  # the end
        final: dict[int, int] = dict(db.execute("SELECT id, version FROM stress_rows").fetchall())
    for reader in readers:
        reader.stop.set()
        reader.thread.join(4 * WAIT)
    receiver.join(20 * WAIT)
    receiving.close()
    relay.stop()

    for reader in readers:
        received = reader.changes
        assert len(received) >= CHANGES, len(received)
        positions = [position for position, _ in received]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        by_row = chains(received)
        assert set(final) <= set(by_row) | set(range(SHARED))
        for row_id, changes in by_row.items():
            check_chain(row_id, changes, final)
    assert readers[0].changes == readers[1].changes  # one log, the same for every reader
    # The relay delivered the same, in the same order, once each, and no gap.
    relayed = [e for e in delivered if e["type"] == "change"]
    assert [e["type"] for e in delivered if e["type"] != "change"] == []
    assert [(e["op"], e.get("new"), e.get("old")) for e in relayed] == [
        (c.op, c.new, c.old) for _, c in readers[0].changes
    ]
    # The batch job never held back the others.
    assert batch_job.not_held_back and all(batch_job.not_held_back)
