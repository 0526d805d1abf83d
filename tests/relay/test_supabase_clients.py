"""The real Supabase clients against the relay's Supabase-compatible endpoint.

@supabase/realtime-js and @supabase/supabase-js (Node, vsn 1.0.0 and 2.0.0), PyPI
realtime and supabase (vsn 1.0.0, the only one they speak), unchanged, driven
through tests/relay/supabase/ (harness.py says how). What they must get is in
the protocol notes (supabase-protocol.md, issue 11): the user's JWT per channel
as ``access_token``, the apikey at the socket.

Negative checks ("Grace receives nothing") wait for a later event on the same
channel, which the relay sends in commit order, not for time.
"""

import asyncio
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.relay.supabase.harness import (
    DriverClient,
    Event,
    apikey,
    driver_for,
    endpoint,
    of,
    project_url,
    status,
)
from tests.support import (
    ALICE,
    BOB,
    CAROL,
    GRACE,
    POLICY_FILE,
    WAIT,
    Process,
    RelayProcess,
    mint,
)

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class Flavour:
    """One client library, and the protocol version it speaks."""

    client: str  # realtime-js, supabase-js, realtime-py, supabase-py
    vsn: str | None = None  # None: the client's default (2.0.0 for JS, 1.0.0 for Python)
    options: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def js(self) -> bool:
        return self.client.endswith("-js")

    def url(self, relay: RelayProcess) -> str:
        return endpoint(relay) if self.client.startswith("realtime-") else project_url(relay)

    def __str__(self) -> str:  # also in topic names: no dots
        return f"{self.client}-v{self.vsn[0]}" if self.vsn else self.client


# Reconnect and rejoin soon, so that a restart test waits for the relay, not for backoff.
JS = {"reconnectAfterMs": [200, 500]}
PY = {"initial_backoff": 0.2, "max_retries": 30}

ALL = [
    Flavour("realtime-js", "1.0.0", JS),
    Flavour("realtime-js", "2.0.0", JS),
    Flavour("supabase-js", "1.0.0", JS),
    Flavour("supabase-js", "2.0.0", JS),
    Flavour("realtime-py", None, PY),
    Flavour("supabase-py", None, PY),
]
# One per library, for the tests whose point is not the wire format.
EACH = [ALL[1], ALL[2], ALL[4], ALL[5]]

Start = Callable[..., Awaitable[DriverClient]]

# Rooms for these tests, beside the portal's (case:{case_id}, checked in SQL):
# open to every signed-in user.
ROOMS = """
[[topics.rules]]
pattern = "room:{name}"
broadcast = ["read", "write"]
presence = ["read", "write"]

[[topics.rules]]
pattern = "lobby:{name}"
broadcast = ["read", "write"]
presence = ["read", "write"]
"""


@pytest.fixture(scope="module")
def relay(relay_database: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RelayProcess]:
    """The module's relay: the portal's policies and these rooms; a refused join
    is answered at once (the default holds it 5 s, as Supabase does)."""
    policy = tmp_path_factory.mktemp("supabase") / "policy.toml"
    policy.write_text(Path(POLICY_FILE).read_text(encoding="utf-8") + ROOMS, encoding="utf-8")
    process = RelayProcess(
        relay_database, RELAY_POLICY_FILE=str(policy), RELAY_JOIN_ERROR_DELAY_S="0"
    ).start()
    yield process
    process.stop()


@pytest.fixture
async def start(relay: RelayProcess) -> AsyncIterator[Start]:
    """Start a driver and connect its client to the relay as ``who``; all closed after."""
    started: list[DriverClient] = []

    async def start_client(
        flavour: Flavour,
        who: tuple[str, str] | None = None,
        *,
        token: str | None = None,
        target: RelayProcess | None = None,
        **options: Any,
    ) -> DriverClient:
        client = await driver_for(flavour.client).start()
        started.append(client)
        if token is None and who is not None:
            token = mint(*who)
        await client.connect(
            flavour.url(target or relay),
            apikey(),
            client=flavour.client,
            vsn=flavour.vsn,
            access_token=token,
            **{**flavour.options, **options},
        )
        return client

    yield start_client
    for client in started:
        await client.close()


def change(event: Event) -> dict[str, Any]:
    """A postgres_changes event as ``{type, table, new, old}``, from either shape the
    libraries give their callbacks (realtime-js: eventType/new/old; Python: raw data)."""
    payload = event["payload"]
    if "eventType" in payload:
        return {
            "type": payload["eventType"],
            "table": payload["table"],
            "new": payload["new"],
            "old": payload["old"],
        }
    data = payload["data"]
    return {
        "type": data["type"],
        "table": data["table"],
        "new": data.get("record") or {},
        "old": data.get("old_record") or {},
    }


def changed(channel: str, kind: str, **new: Any) -> Callable[[Event], bool]:
    """A change of this type on this channel whose new row (old, for DELETE) has these values."""

    def predicate(event: Event) -> bool:
        if event.get("type") != "postgres_changes" or event.get("channel") != channel:
            return False
        seen = change(event)
        row = seen["old"] if kind == "DELETE" else seen["new"]
        return bool(seen["type"] == kind and all(row.get(k) == v for k, v in new.items()))

    predicate.__qualname__ = f"changed({channel!r}, {kind!r}, {new!r})"
    return predicate


def insert(db: Conn, sql: str, *params: Any) -> str:
    row = db.execute(sql, params).fetchone()
    assert row is not None
    return str(row[0])


NEW_PAYMENT = (
    "INSERT INTO nexus_payments (from_id, to_id, amount, currency, status, reference)"
    " VALUES (%s, %s, 12.5, 'EUR', 'pending', %s) RETURNING id"
)
NEW_NOTIFICATION = (
    "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title)"
    " VALUES (%s, %s, %s, %s) RETURNING id"
)


async def joined(
    client: DriverClient, name: str, *bindings: dict[str, Any], config: dict[str, Any] | None = None
) -> None:
    """Make channel ``name`` with these postgres_changes bindings, and wait for SUBSCRIBED."""
    await client.channel(name, config)
    for binding in bindings:
        await client.on_postgres_changes(name, **binding)
    await client.subscribe(name)
    await client.subscribed(name)


# --- postgres_changes --------------------------------------------------------------


@pytest.mark.parametrize("flavour", ALL, ids=str)
async def test_filtered_bindings_receive_authorized_inserts_updates_and_deletes(
    start: Start, rdb: Conn, flavour: Flavour
) -> None:
    alice = await start(flavour, ALICE)
    await joined(
        alice,
        "live",
        {"event": "*", "schema": "public", "table": "nexus_payments", "label": "payments"},
        {
            "event": "INSERT",
            "schema": "public",
            "table": "nexus_notifications",
            "filter": f"notification_type=eq.{flavour.client.replace('-', '_')}",
            "label": "mine",
        },
    )
    kind = flavour.client.replace("-", "_")
    insert(rdb, NEW_NOTIFICATION, "TNT-ALPHA001", None, "other_type", "filtered out")
    insert(rdb, NEW_NOTIFICATION, "TNT-ALPHA001", "USR-CARO0001", kind, "Carol's own")
    insert(rdb, NEW_NOTIFICATION, "TNT-ALPHA001", "USR-ALIC0001", kind, "for Alice")
    notice = await alice.next(of("postgres_changes", channel="live", binding="mine"))
    assert change(notice)["new"]["title"] == "for Alice", notice
    assert alice.seen(of("postgres_changes", binding="mine")) == [notice]

    reference = f"supabase {flavour}"
    payment = insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", reference)
    rdb.execute("UPDATE nexus_payments SET status = 'approved' WHERE id = %s", (payment,))
    rdb.execute("DELETE FROM nexus_payments WHERE id = %s", (payment,))
    inserted = change(await alice.next(changed("live", "INSERT", id=payment)))
    updated = change(await alice.next(changed("live", "UPDATE", id=payment)))
    await alice.next(changed("live", "DELETE", id=payment))
    assert inserted["table"] == "nexus_payments" and inserted["new"]["reference"] == reference
    assert updated["new"]["status"] == "approved"
    assert alice.seen(of("log", level="error")) == []


@pytest.mark.parametrize("flavour", EACH, ids=str)
async def test_tenants_are_isolated(start: Start, rdb: Conn, flavour: Flavour) -> None:
    clients = {name: await start(flavour, who) for name, who in (("bob", BOB), ("grace", GRACE))}
    for client in clients.values():
        await joined(
            client,
            "tenant",
            {"event": "INSERT", "schema": "public", "table": "nexus_payments"},
            {"event": "INSERT", "schema": "public", "table": "nexus_notifications"},
        )
    payment = insert(rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", "isolation")
    for tenant in ("TNT-BETA0001", "TNT-GAMMA001"):  # the fences: tenant-wide, written last
        insert(rdb, NEW_NOTIFICATION, tenant, None, "fence", f"fence {flavour}")
    await clients["bob"].next(changed("tenant", "INSERT", id=payment))
    for client in clients.values():
        await client.next(changed("tenant", "INSERT", title=f"fence {flavour}"))
    assert clients["grace"].seen(changed("tenant", "INSERT", id=payment)) == []


async def test_a_channel_without_a_user_token_is_refused_with_a_reason(start: Start) -> None:
    # supabase-js without a session sends the anon apikey as the channel's token.
    client = await start(Flavour("supabase-js"))
    await client.channel("anonymous")
    await client.subscribe("anonymous")
    refused = await client.next(status("anonymous"), 2 * WAIT)
    assert refused["status"] == "CHANNEL_ERROR" and refused["error"], refused
    # Refused by the join's reply, on a socket the relay accepted, not at the upgrade.
    assert client.seen(of("socket", state="open")), client.output()
    assert "transport failure" not in refused["error"]


# --- Tokens --------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", EACH, ids=str)
async def test_set_auth_reauthorizes_the_channel_with_the_new_claims(
    start: Start, rdb: Conn, flavour: Flavour
) -> None:
    alice = await start(flavour, ALICE)
    await joined(
        alice, "moves", {"event": "INSERT", "schema": "public", "table": "nexus_notifications"}
    )
    await alice.set_auth(mint("USR-ALIC0001", "TNT-BETA0001"))
    await moved(alice, rdb, "moves", str(flavour))


async def moved(alice: DriverClient, rdb: Conn, channel: str, tag: str) -> None:
    """Alice's channel follows her to tenant Beta: Beta's tenant-wide rows come, Alpha's
    no longer. New claims error the channel (what it shows was authorized under the
    old ones); the client rejoins with the new token and says SUBSCRIBED again,
    where apps re-fetch (docs/supabase.md)."""
    errored = await alice.next(status(channel, "CHANNEL_ERROR", "SUBSCRIBED"))
    assert errored["status"] == "CHANNEL_ERROR", errored
    await alice.next(status(channel, "SUBSCRIBED"), 3 * WAIT)
    insert(rdb, NEW_NOTIFICATION, "TNT-BETA0001", None, "moved", f"beta {tag}")
    await alice.next(changed(channel, "INSERT", title=f"beta {tag}"))
    insert(rdb, NEW_NOTIFICATION, "TNT-ALPHA001", None, "moved", f"alpha {tag}")
    insert(rdb, NEW_NOTIFICATION, "TNT-BETA0001", None, "moved", f"beta again {tag}")
    await alice.next(changed(channel, "INSERT", title=f"beta again {tag}"))
    assert alice.seen(changed(channel, "INSERT", title=f"alpha {tag}")) == []


async def test_the_token_callback_is_asked_again_and_its_new_token_used(
    start: Start, rdb: Conn
) -> None:
    # supabase-js with createClient(..., {accessToken}): the app's callback is the source.
    alice = await start(Flavour("supabase-js", "2.0.0", JS), ALICE)
    await joined(
        alice, "callback", {"event": "INSERT", "schema": "public", "table": "nexus_notifications"}
    )
    await alice.set_token(mint("USR-ALIC0001", "TNT-BETA0001"), refresh=True)
    await moved(alice, rdb, "callback", "via callback")


@pytest.mark.parametrize("flavour", EACH, ids=str)
async def test_an_expired_token_closes_the_channel_not_the_socket(
    start: Start, flavour: Flavour
) -> None:
    alice = await start(flavour, token=mint(*ALICE, expires_in=2))
    await joined(alice, "expiring", {"event": "*", "schema": "public", "table": "nexus_payments"})
    # The relay says why (a system message, status error), then closes the channel:
    # realtime-js reports CLOSED, the Python client CHANNEL_ERROR (from the system
    # message) then CLOSED. Neither rejoins.
    if flavour.js:
        await alice.next(
            lambda e: e.get("type") == "system" and e["payload"]["status"] == "error", 3 * WAIT
        )
    else:
        errored = await alice.next(status("expiring"), 3 * WAIT)
        assert errored["status"] == "CHANNEL_ERROR", errored
    closed = await alice.next(status("expiring"), WAIT)
    assert closed["status"] == "CLOSED", closed
    assert await alice.command("connection_state") == "open"


async def test_a_refreshed_token_keeps_the_channel_past_the_first_ones_expiry(
    start: Start, rdb: Conn
) -> None:
    first_expiry = time.time() + 3
    alice = await start(Flavour("realtime-js", "2.0.0", JS), token=mint(*ALICE, expires_in=3))
    await joined(
        alice, "refreshed", {"event": "INSERT", "schema": "public", "table": "nexus_notifications"}
    )
    await alice.set_auth(mint(*ALICE, expires_in=600))
    # Waiting for a time, not for an event: the first token must be dead.
    await asyncio.sleep(max(0.0, first_expiry + 1 - time.time()))
    insert(rdb, NEW_NOTIFICATION, "TNT-ALPHA001", "USR-ALIC0001", "refreshed", "still here")
    await alice.next(changed("refreshed", "INSERT", title="still here"))
    assert alice.seen(status("refreshed", "CLOSED", "CHANNEL_ERROR")) == []


# --- Broadcast and presence ------------------------------------------------------------


@pytest.mark.parametrize("flavour", ALL, ids=str)
async def test_broadcast_reaches_the_topic_with_self_and_ack(
    start: Start, flavour: Flavour
) -> None:
    alice, carol = await start(flavour, ALICE), await start(flavour, CAROL)
    topic = f"room:{flavour}"
    await alice.channel(topic, {"broadcast": {"self": True, "ack": True}})
    await carol.channel(topic, {"broadcast": {"self": False, "ack": False}})
    for client in (alice, carol):
        await client.on_broadcast(topic, "*")
        await client.subscribe(topic)
        await client.subscribed(topic)
    wait = None if flavour.js else True  # Python reports the server's ack only when asked
    assert await alice.send_broadcast(topic, "hello", {"n": 1}, wait=wait) == "ok"
    for client in (alice, carol):  # self: Alice gets her own
        got = (await client.next(of("broadcast", channel=topic)))["payload"]
        assert (got["event"], got["payload"]) == ("hello", {"n": 1}), got
    # Without self, Carol's own does not come back to her; Alice's answer, sent after
    # it, is the fence.
    await carol.send_broadcast(topic, "from carol", {"n": 2})
    await alice.next(
        lambda e: e.get("type") == "broadcast" and e["payload"]["event"] == "from carol"
    )
    assert await alice.send_broadcast(topic, "answer", {"n": 3}, wait=wait) == "ok"
    await carol.next(lambda e: e.get("type") == "broadcast" and e["payload"]["event"] == "answer")
    assert (
        carol.seen(lambda e: e.get("type") == "broadcast" and e["payload"]["event"] == "from carol")
        == []
    )


@pytest.mark.parametrize("flavour", EACH, ids=str)
async def test_presence_syncs_joins_and_leaves(start: Start, flavour: Flavour) -> None:
    alice, carol = await start(flavour, ALICE), await start(flavour, CAROL)
    topic = f"lobby:{flavour}"
    for client, key in ((alice, "alice"), (carol, "carol")):
        await client.channel(topic, {"presence": {"key": key}})
        await client.on_presence(topic)
        await client.subscribe(topic)
        await client.subscribed(topic)
        assert await client.track(topic, {"name": key}) == "ok"

    def both(event: Event) -> bool:
        return (
            event.get("type") == "presence"
            and event.get("event") == "sync"
            and set(event["state"]) == {"alice", "carol"}
        )

    for client in (alice, carol):
        synced = await client.next(both)
        assert [meta["name"] for meta in synced["state"]["carol"]] == ["carol"]
    await carol.untrack(topic)
    await alice.next(of("presence", channel=topic, event="leave", key="carol"))
    # The clients call leave before they drop the emptied key: the sync after it says.
    await alice.next(
        lambda e: of("presence", channel=topic, event="sync")(e) and set(e["state"]) == {"alice"}
    )


@pytest.mark.parametrize("flavour", [ALL[1], ALL[4]], ids=str)
async def test_a_case_room_admits_the_cases_tenants_only_checked_in_sql(
    start: Start, flavour: Flavour
) -> None:
    # portal/relay-policy.toml: case:{case_id}, for those whom RLS lets read the case.
    alice, grace = await start(flavour, ALICE), await start(flavour, GRACE)
    topic = "case:CASE-AB000001"
    for client in (alice, grace):
        await client.channel(topic, {"broadcast": {"self": True, "ack": True}})
        await client.on_broadcast(topic, "*")
        await client.subscribe(topic)
    await alice.subscribed(topic)
    refused = await grace.next(status(topic))
    assert refused["status"] == "CHANNEL_ERROR", refused
    assert "may not join" in str(refused), refused
    wait = None if flavour.js else True
    assert await alice.send_broadcast(topic, "typing", {"who": "alice"}, wait=wait) == "ok"
    await alice.next(of("broadcast", channel=topic))
    assert grace.seen(of("broadcast", channel=topic)) == []


# --- The socket ------------------------------------------------------------------------


@pytest.mark.parametrize("flavour", [ALL[1], ALL[2], ALL[4]], ids=str)
async def test_clients_reconnect_and_resubscribe_after_a_relay_restart(
    start: Start, relay_database: str, rdb: Conn, flavour: Flavour
) -> None:
    first = RelayProcess(relay_database).start()
    again: RelayProcess | None = None
    try:
        bob = await start(flavour, BOB, target=first)
        await joined(
            bob, "restart", {"event": "INSERT", "schema": "public", "table": "nexus_payments"}
        )
        first.stop()
        lost = await bob.next(status("restart"), 2 * WAIT)
        assert lost["status"] == "CHANNEL_ERROR", lost
        again = RelayProcess(relay_database, port=first.port).start()
        await bob.subscribed("restart", 4 * WAIT)
        payment = insert(
            rdb, NEW_PAYMENT, "TNT-ALPHA001", "TNT-BETA0001", f"after restart {flavour}"
        )
        await bob.next(changed("restart", "INSERT", id=payment))
    finally:
        for process in (first, again):
            if process is not None:
                process.kill()


# --- The migration guide's example -------------------------------------------------------


def test_the_guides_supabase_js_example_runs_as_written(relay: RelayProcess, rdb: Conn) -> None:
    # docs/supabase.md points at docs/examples/supabase-listen.mjs: run it as it says.
    root = Path(__file__).resolve().parents[2]
    example = Process(
        ["node", str(root / "docs" / "examples" / "supabase-listen.mjs")],
        env={
            **os.environ,
            "SUPABASE_URL": project_url(relay),
            "SUPABASE_ANON_KEY": apikey(),
            "USER_TOKEN": mint(*ALICE),
            "EXIT_AFTER": "1",
        },
        cwd=str(root),
    )
    try:
        example.wait_for('"status":"SUBSCRIBED"', 3 * WAIT)
        insert(rdb, NEW_NOTIFICATION, "TNT-ALPHA001", None, "guide", "from the guide")
        line = example.wait_for('"type":"INSERT"', 2 * WAIT)
        assert "from the guide" in line
        assert example.popen.wait(WAIT) == 0
    finally:
        example.kill()
