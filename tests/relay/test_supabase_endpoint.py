"""Supabase's endpoint on the wire (relay/core/supabase.py): a raw Phoenix client
against a real relay and PostgreSQL. The official clients are driven in
tests/relay/test_supabase_clients.py."""

import json
import signal
from collections.abc import AsyncIterator, Iterator
from typing import Any

import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.relay.phoenix import Phoenix, url
from tests.support import ALICE, BOB, CAROL, GRACE, WAIT, RelayProcess, mint


@pytest.fixture(scope="module")
def srelay(relay_database: str) -> Iterator[RelayProcess]:
    """A relay whose refused joins are answered at once (the default holds them 5 s)."""
    process = RelayProcess(relay_database, RELAY_JOIN_ERROR_DELAY_S="0").start()
    yield process
    process.stop()


@pytest.fixture
async def phoenix(srelay: RelayProcess) -> AsyncIterator[Any]:
    sockets: list[ClientConnection] = []

    async def open_socket(vsn: str = "1.0.0") -> Phoenix:
        ws = await connect(url(srelay, vsn), open_timeout=WAIT)
        sockets.append(ws)
        return Phoenix(ws, vsn)

    yield open_socket
    for ws in sockets:
        await ws.close()


def notify(rdb: psycopg.Connection[Any], tenant: str, title: str, user: str | None = None) -> str:
    row = rdb.execute(
        "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title)"
        " VALUES (%s, %s, 'test', %s) RETURNING id",
        (tenant, user, title),
    ).fetchone()
    assert row is not None
    return str(row[0])


# --- The handshake ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("vsn", "key", "status"),
    [
        ("1.0.0", None, 401),  # no apikey
        ("1.0.0", "not-a-jwt", 401),
        ("9.9.9", "anon", 403),  # unknown vsn
    ],
)
async def test_a_handshake_without_a_valid_key_or_with_an_unknown_vsn_is_refused(
    srelay: RelayProcess, vsn: str, key: str | None, status: int
) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url(srelay, vsn, key), open_timeout=WAIT):
            pass
    assert refused.value.response.status_code == status


async def test_a_forged_apikey_is_refused(srelay: RelayProcess) -> None:
    forged = mint(None, None, role="anon", sub=None, secret="another-secret-" + "x" * 40)
    with pytest.raises(InvalidStatus) as refused:
        async with connect(url(srelay, key=forged), open_timeout=WAIT):
            pass
    assert refused.value.response.status_code == 401
    assert b"signature" in refused.value.response.body


# --- Heartbeat, topics --------------------------------------------------------------


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_heartbeats_are_answered_and_unjoined_topics_get_an_error_reply(
    phoenix: Any, vsn: str
) -> None:
    client = await phoenix(vsn)
    ref = await client.push("phoenix", "heartbeat", {})
    assert await client.reply(ref) == {"status": "ok", "response": {}}
    ref = await client.push("realtime:nowhere", "access_token", {"access_token": "x"})
    assert await client.reply(ref) == {"status": "error", "response": {"reason": "unmatched topic"}}
    # A leave of a topic never joined is answered ok (clients leave after a join timed out).
    ref = await client.push("realtime:nowhere", "phx_leave", {})
    assert (await client.reply(ref))["status"] == "ok"


# --- postgres_changes ---------------------------------------------------------------


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
async def test_a_join_echoes_its_bindings_with_ids_and_changes_arrive_authorized(
    phoenix: Any, rdb: psycopg.Connection[Any], vsn: str
) -> None:
    alice = await phoenix(vsn)
    grace = await phoenix(vsn)
    binding = {"event": "*", "schema": "public", "table": "nexus_notifications", "extra": [1]}
    _, reply = await alice.join("inbox", [binding], mint(*ALICE))
    assert reply["status"] == "ok", reply
    [echoed] = reply["response"]["postgres_changes"]
    binding_id = echoed.pop("id")
    assert isinstance(binding_id, int)
    assert echoed == binding  # as sent, extra keys included (§5)
    _, reply = await grace.join("inbox", [binding], mint(*GRACE))
    assert reply["status"] == "ok", reply

    notify(rdb, GRACE[1], "for gamma")  # Grace's tenant only: Alice never sees it
    notify(rdb, ALICE[1], "for alpha")
    change = await alice.until("postgres_changes")
    assert change["topic"] == "realtime:inbox"
    payload = change["payload"]
    assert payload["ids"] == [binding_id]
    data = payload["data"]
    assert data["schema"] == "public" and data["table"] == "nexus_notifications"
    assert data["type"] == "INSERT" and data["errors"] is None
    assert data["record"]["title"] == "for alpha"
    assert "old_record" not in data
    assert {"name": "title", "type": "text"} in data["columns"]
    assert isinstance(data["commit_timestamp"], str)
    seen = await grace.until("postgres_changes")
    assert seen["payload"]["data"]["record"]["title"] == "for gamma"


async def test_filters_are_read_as_supabase_writes_them_and_select_narrows_the_record(
    phoenix: Any, rdb: psycopg.Connection[Any]
) -> None:
    alice = await phoenix()
    bindings = [
        {
            "event": "INSERT",
            "schema": "public",
            "table": "nexus_notifications",
            "filter": "title=eq.filtered in",
            "select": ["title"],
        },
    ]
    _, reply = await alice.join("filtered", bindings, mint(*ALICE))
    assert reply["status"] == "ok", reply
    notify(rdb, ALICE[1], "filtered out")
    notify(rdb, ALICE[1], "filtered in")
    data = (await alice.until("postgres_changes"))["payload"]["data"]
    assert data["record"]["title"] == "filtered in"
    assert set(data["record"]) == {"id", "title"}  # the selected columns and the key
    assert [c["name"] for c in data["columns"]] == ["id", "title"]


async def test_a_row_leaving_the_view_arrives_as_a_delete_without_its_new_version(
    phoenix: Any, rdb: psycopg.Connection[Any]
) -> None:
    alice = await phoenix()
    binding = {"event": "*", "schema": "public", "table": "nexus_notifications"}
    await alice.join("leaving", [binding], mint(*ALICE))
    row_id = notify(rdb, ALICE[1], "for the tenant")
    assert (await alice.until("postgres_changes"))["payload"]["data"]["type"] == "INSERT"
    rdb.execute(
        "UPDATE nexus_notifications SET user_id = %s, title = 'now private' WHERE id = %s",
        (CAROL[0], row_id),
    )
    data = (await alice.until("postgres_changes"))["payload"]["data"]
    assert data["type"] == "DELETE"
    assert data["old_record"]["title"] == "for the tenant"
    assert "record" not in data
    assert "now private" not in json.dumps(data)


async def test_a_binding_for_a_whole_schema_covers_its_tables_with_a_policy(
    phoenix: Any, rdb: psycopg.Connection[Any]
) -> None:
    alice = await phoenix("2.0.0")
    _, reply = await alice.join("everything", [{"event": "*", "schema": "public"}], mint(*ALICE))
    assert reply["status"] == "ok", reply
    [echoed] = reply["response"]["postgres_changes"]
    assert set(echoed) == {"event", "schema", "id"}
    notify(rdb, ALICE[1], "schema-wide")
    data = (await alice.until("postgres_changes"))["payload"]["data"]
    assert data["table"] == "nexus_notifications"


# --- Refusals ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("binding", "code"),
    [
        ({"event": "*", "schema": "public", "table": "nexus_users"}, "table_unknown"),
        (
            {"event": "*", "schema": "public", "table": "nexus_notifications", "filter": "nope"},
            "invalid_filter",
        ),
    ],
)
async def test_a_refused_binding_refuses_the_join_with_a_reason_and_a_code(
    phoenix: Any, binding: dict[str, Any], code: str
) -> None:
    alice = await phoenix()
    _, reply = await alice.join("refused", [binding], mint(*ALICE))
    assert reply["status"] == "error"
    assert reply["response"]["code"] == code
    assert reply["response"]["reason"]
    # The socket stays open: the clients would reconnect forever otherwise.
    ref = await alice.push("phoenix", "heartbeat", {})
    assert (await alice.reply(ref))["status"] == "ok"


@pytest.mark.parametrize(
    ("token", "reason"),
    [
        (None, "InvalidJWTToken"),  # the anon key: a role that may not read rows
        (mint(*ALICE, expires_in=-120), "InvalidJWTToken"),
        (mint(*ALICE, secret="another-secret-" + "y" * 40), "InvalidJWTToken"),
    ],
)
async def test_a_join_without_a_valid_user_token_is_refused(
    phoenix: Any, token: str | None, reason: str
) -> None:
    alice = await phoenix()
    binding = {"event": "*", "schema": "public", "table": "nexus_notifications"}
    _, reply = await alice.join("denied", [binding], token)
    assert reply["status"] == "error"
    assert reply["response"]["reason"].startswith(reason + ": "), reply


async def test_a_private_channel_without_a_topic_rule_is_refused(phoenix: Any) -> None:
    alice = await phoenix()
    _, reply = await alice.join("secret-room", [], mint(*ALICE), private=True)
    assert reply["status"] == "error"


async def test_another_users_token_on_the_same_socket_is_refused(phoenix: Any) -> None:
    alice = await phoenix()
    binding = {"event": "*", "schema": "public", "table": "nexus_notifications"}
    _, reply = await alice.join("one", [binding], mint(*ALICE))
    assert reply["status"] == "ok"
    _, reply = await alice.join("two", [binding], mint(*BOB))
    assert reply["status"] == "error"
    assert reply["response"]["code"] == "user_mismatch"


# --- Leave, tokens -----------------------------------------------------------------


async def test_a_leave_is_answered_then_closed_and_nothing_more_arrives(
    phoenix: Any, rdb: psycopg.Connection[Any]
) -> None:
    alice = await phoenix()
    binding = {"event": "*", "schema": "public", "table": "nexus_notifications"}
    join_ref, _ = await alice.join("left", [binding], mint(*ALICE))
    ref = await alice.push("realtime:left", "phx_leave", {}, join_ref)
    assert (await alice.reply(ref))["status"] == "ok"
    closed = await alice.until("phx_close")
    assert closed["topic"] == "realtime:left"
    # Joined again elsewhere, it hears a change, and none for the left channel.
    await alice.join("still", [binding], mint(*ALICE))
    notify(rdb, ALICE[1], "after the leave")
    change = await alice.until("postgres_changes")
    assert change["topic"] == "realtime:still"


async def test_an_access_token_of_another_user_closes_the_channel(phoenix: Any) -> None:
    alice = await phoenix()
    binding = {"event": "*", "schema": "public", "table": "nexus_notifications"}
    join_ref, _ = await alice.join("tok", [binding], mint(*ALICE))
    await alice.push("realtime:tok", "access_token", {"access_token": mint(*BOB)}, join_ref)
    system = await alice.system_error("realtime:tok")
    assert set(system) == {"extension", "status", "message", "channel"}
    assert system["channel"] == "tok"
    assert (await alice.until("phx_close"))["topic"] == "realtime:tok"


async def test_an_expired_token_ends_its_channels_with_a_system_error_then_close(
    phoenix: Any,
) -> None:
    alice = await phoenix()
    binding = {"event": "*", "schema": "public", "table": "nexus_notifications"}
    _, reply = await alice.join("brief", [binding], mint(*ALICE, expires_in=1))
    assert reply["status"] == "ok"
    system = await alice.system_error("realtime:brief")
    assert "expired" in system["message"]
    await alice.until("phx_close")


async def test_a_malformed_frame_closes_the_socket_with_a_code(phoenix: Any) -> None:
    alice = await phoenix()
    await alice.ws.send("{not json")
    with pytest.raises(ConnectionClosed) as closed:
        await alice.next()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert closed.value.rcvd.reason == "bad_frame"


async def test_past_the_frame_rate_messages_get_error_replies_and_a_flood_closes(
    relay_database: str,
) -> None:
    slow = RelayProcess(
        relay_database, RELAY_MAX_MESSAGES_PER_SECOND="2", RELAY_JOIN_ERROR_DELAY_S="0"
    ).start()
    try:
        async with connect(url(slow), open_timeout=WAIT) as ws:
            client = Phoenix(ws, "1.0.0")
            refs = [await client.push("realtime:nowhere", "phx_leave", {}) for _ in range(4)]
            replies = [await client.reply(ref) for ref in refs]
            limited = [r for r in replies if r["status"] == "error"]
            assert limited and limited[0]["response"]["code"] == "rate_limited", replies
            # Heartbeats are answered whatever the rate: unanswered, realtime-js drops the socket.
            ref = await client.push("phoenix", "heartbeat", {})
            assert (await client.reply(ref))["status"] == "ok"
            for _ in range(50):
                await ws.send(client.encode(None, None, "realtime:nowhere", "phx_leave", {}))
            # The close comes behind the flood's unread frames: within the close timeout.
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.next(3 * WAIT)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4029
    finally:
        slow.stop()


async def test_a_relay_stopping_tells_each_channel_then_closes_the_socket(
    relay_database: str,
) -> None:
    stopping = RelayProcess(relay_database).start()
    try:
        async with connect(url(stopping, "2.0.0"), open_timeout=WAIT) as ws:
            client = Phoenix(ws, "2.0.0")
            binding = {"event": "*", "schema": "public", "table": "nexus_payments"}
            _, reply = await client.join("leaving", [binding], mint(*ALICE))
            assert reply["status"] == "ok"
            assert stopping.process is not None
            stopping.process.popen.send_signal(signal.SIGTERM)
            system = await client.until("system", "realtime:leaving")
            while system["payload"]["message"] != "Server requested disconnect":
                system = await client.until("system", "realtime:leaving")
            assert system["payload"]["status"] == "ok"
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.next()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1001
            assert stopping.process.popen.wait(WAIT) == 0
    finally:
        stopping.kill()
