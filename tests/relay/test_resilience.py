"""Faults: the reader's or the doorbell's backend killed, a slow client, shutdown; ops."""

import asyncio
import json
import signal
import socket
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed

from relay.client import RelayClient
from tests.relay.conftest import Connect
from tests.support import ALICE, BOB, WAIT, RelayProcess, eventually, mint

Conn = psycopg.Connection[Any]


@pytest.fixture
def own_relay(relay_database: str) -> Iterator[RelayProcess]:
    """A relay of the test's own, for faults that the shared one should not suffer."""
    process = RelayProcess(relay_database, RELAY_MAX_SEND_BUFFER_BYTES="65536").start()
    yield process
    process.kill()


def new_payment(db: Conn, reference: str) -> str:
    row = db.execute(
        "INSERT INTO nexus_payments (from_id, to_id, amount, reference) VALUES"
        " ('TNT-ALPHA001', 'TNT-BETA0001', 1, %s) RETURNING id",
        (reference,),
    ).fetchone()
    assert row is not None
    return str(row[0])


async def test_the_readers_backend_killed_mid_stream_costs_nothing(
    own_relay: RelayProcess, connect: Connect, rdb: Conn
) -> None:
    client = await connect(BOB, target=own_relay)
    await client.subscribe("nexus_payments")
    before = new_payment(rdb, "before")
    assert (await client.next_event(WAIT))["new"]["id"] == before

    status, body = own_relay.get("/readyz")
    pid = json.loads(body)["reader_backend_pid"]
    assert status == 200 and pid
    rdb.execute("SELECT pg_terminate_backend(%s)", (pid,))
    # Written while the reader is away: in the log, read when it is back.
    during = [new_payment(rdb, f"during {n}") for n in range(3)]
    after = new_payment(rdb, "after")
    received = [await client.next_event(4 * WAIT) for _ in range(4)]
    assert [e["type"] for e in received] == ["change"] * 4  # no gap: nothing was lost
    assert [e["new"]["id"] for e in received] == [*during, after]

    status, body = own_relay.get("/readyz")
    assert json.loads(body)["reader_backend_pid"] not in (pid, None)
    assert own_relay.metrics()["relay_reader_reconnects_total"] == 1


async def test_the_doorbells_backend_killed_costs_at_most_a_poll(
    own_relay: RelayProcess, connect: Connect, rdb: Conn
) -> None:
    client = await connect(BOB, target=own_relay)
    await client.subscribe("nexus_payments")
    pid = rdb.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'nexus-relay'"
        " AND query LIKE 'LISTEN%%' AND pid <> %s",
        (json.loads(own_relay.get("/readyz")[1])["reader_backend_pid"],),
    ).fetchall()
    rdb.execute(
        "SELECT pg_terminate_backend(pid) FROM unnest(%s::int[]) AS pid", ([p[0] for p in pid],)
    )
    written = new_payment(rdb, "without a bell")  # read by the reader's next poll
    event = await client.next_event(WAIT)
    assert (event["type"], event["new"]["id"]) == ("change", written)


async def test_a_slow_client_is_dropped_and_slows_nobody(
    own_relay: RelayProcess, connect: Connect, rdb: Conn
) -> None:
    fast = await connect(BOB, target=own_relay)
    await fast.subscribe("nexus_notifications")

    # The slow client reads its replies, then nothing more: a tiny receive
    # buffer, and websockets stops reading once one message waits unread.
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", own_relay.port))
    slow = await ws_connect(own_relay.url, sock=sock, subprotocols=["nexus-relay.v1"], max_queue=1)  # type: ignore[list-item]
    await slow.send(json.dumps({"type": "auth", "token": mint("USR-BOB00002", "TNT-BETA0001")}))
    await slow.recv()
    await slow.send(json.dumps({"type": "subscribe", "table": "nexus_notifications"}))
    await slow.recv()

    count = 5000
    rdb.execute(
        "INSERT INTO nexus_notifications (tenant_id, notification_type, title, body)"
        " SELECT 'TNT-BETA0001', 'flood', 'flood ' || g, repeat('x', 1500)"
        " FROM generate_series(1, %s) g",
        (count,),
    )
    titles = [(await fast.next_event(WAIT))["new"]["title"] for _ in range(count)]
    assert titles == [f"flood {n}" for n in range(1, count + 1)]
    metrics = own_relay.metrics()
    assert metrics['relay_disconnects_total{reason="slow_consumer"}'] == 1

    with pytest.raises(ConnectionClosed):  # it was closed: reading now reaches the end
        while True:
            await asyncio.wait_for(slow.recv(), 4 * WAIT)
    assert slow.close_code in (4008, 1006)
    await fast.ping()


async def test_shutdown_closes_connections_with_going_away(
    own_relay: RelayProcess, connect: Connect
) -> None:
    client = await connect(ALICE, target=own_relay)
    await client.subscribe("nexus_payments")
    stopping = asyncio.get_running_loop().run_in_executor(None, own_relay.stop, signal.SIGTERM)
    closing = await client.next_event(WAIT)
    assert closing == {
        "type": "closing",
        "code": 1001,
        "reason": "going_away",
        "message": "the relay is shutting down; reconnect",
    }
    assert (await client.wait_closed()).code == 1001
    assert await stopping == 0


async def test_metrics_follow_connections_and_subscriptions(
    own_relay: RelayProcess, rdb: Conn
) -> None:
    assert own_relay.get("/healthz") == (200, "ok\n")
    status, body = own_relay.get("/readyz")
    ready = json.loads(body)
    assert status == 200 and ready["ready"] is True
    assert "public.nexus_payments" in ready["tables"]

    client = await RelayClient.connect(own_relay.url, mint(*ALICE), timeout=WAIT)
    await client.subscribe("nexus_payments")
    await client.subscribe("nexus_notifications")
    new_payment(rdb, "metrics")
    await client.next_event(WAIT)
    metrics = own_relay.metrics()
    assert metrics["relay_connections"] == 1
    assert metrics["relay_subscriptions"] == 2
    assert metrics['relay_changes_total{op="INSERT",table="public.nexus_payments"}'] >= 1
    assert metrics["relay_messages_sent_total"] >= 1
    assert metrics["relay_commit_to_send_seconds_count"] >= 1
    assert metrics["relay_reader_connected"] == 1
    assert metrics["relay_log_tick"] >= 1
    eventually(lambda: "relay_log_bytes" in own_relay.metrics())
    # The queue's usage is read by the relay's housekeeping, a moment after it starts.
    eventually(lambda: "relay_notification_queue_usage" in own_relay.metrics())

    await client.close()
    eventually(lambda: own_relay.metrics()["relay_connections"] == 0)
    metrics = own_relay.metrics()
    assert metrics["relay_subscriptions"] == 0
    assert metrics['relay_disconnects_total{reason="client_closed"}'] == 1


def test_readyz_is_503_while_postgresql_is_unreachable(relay_database: str) -> None:
    relay = RelayProcess(relay_database, RELAY_DATABASE_URL="postgresql://nobody@127.0.0.1:1/none")
    # Without PostgreSQL it never serves clients: wait for its ops server instead.
    relay.start(until="Uvicorn running on")
    try:
        status, body = relay.get("/readyz")
        assert status == 503
        assert json.loads(body)["reader_connected"] is False
    finally:
        relay.kill()
