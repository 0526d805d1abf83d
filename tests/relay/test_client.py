"""relay/client.py's reconnecting client against real relay processes: a restart,
a token's expiry and revocation, a resume the log no longer holds, a bad token.

The one-shot client (connect, subscribe, events) is what every other relay test
drives; here, what ``reconnect=True`` and a token provider add.
"""

import asyncio
import itertools
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest

from relay.client import RelayClient, RelayClosed, RelayRequestError, backoff
from tests.support import BOB, WAIT, Process, RelayProcess, mint

pytestmark = pytest.mark.db

Conn = psycopg.Connection[Any]
_runs = itertools.count(1)


def quick() -> Iterator[float]:
    """Short delays: the tests wait for a relay that is back within seconds."""
    return backoff(initial=0.1, maximum=1.0)


def notify(db: Conn, title: str, tenant: str = "TNT-BETA0001") -> None:
    db.execute(
        "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
        " VALUES (%s, 'test', %s)",
        (tenant, title),
    )


async def off_loop(function: Callable[[], Any]) -> Any:
    """A blocking step (a relay stopping or starting) while the clients keep
    answering: the relay's closing handshake needs them."""
    return await asyncio.get_running_loop().run_in_executor(None, function)


async def until(client: RelayClient, wanted: Callable[[dict[str, Any]], bool]) -> list[Any]:
    """Events up to and including the first that ``wanted`` accepts."""
    seen = []
    while True:
        event = await client.next_event(4 * WAIT)
        seen.append(event)
        if wanted(event):
            return seen


def titled(title: str) -> Callable[[dict[str, Any]], bool]:
    return lambda event: event["type"] == "change" and event["new"]["title"] == title


# --- One connection, as before -------------------------------------------------------


async def test_without_reconnect_the_client_is_one_connection(
    relay_database: str, rdb: Conn
) -> None:
    relay = RelayProcess(relay_database).start()
    token = mint(*BOB)
    client = await RelayClient.connect(relay.url, token, timeout=WAIT)
    try:
        first = await client.subscribe("nexus_payments")
        second = await client.subscribe("nexus_notifications", filter="title=eq.by hand")
        assert (first["id"], second["id"]) == ("s1", "s2")  # the relay's, on one connection
        await client.unsubscribe(first["id"])
        since, resume_token = client.resume_point(second["id"])
        notify(rdb, "by hand")
        await until(client, titled("by hand"))  # the relay has read it: a replay holds it
        again = await RelayClient.connect(relay.url, token, timeout=WAIT)
        try:  # a resume by hand, with what resume_point gave
            ack = await again.subscribe(
                "nexus_notifications",
                filter="title=eq.by hand",
                since=since,
                resume_token=resume_token,
            )
            assert ack["resumed"] is True
            events = await until(again, lambda e: e["type"] == "replayed")
            assert [e["type"] for e in events] == ["change", "replayed"]
            assert events[1]["id"] == ack["id"]
        finally:
            await again.close()
        await off_loop(relay.stop)
        seen = [event async for event in client.events()]  # ends, without raising
        assert seen[-1]["type"] == "closing" and seen[-1]["code"] == 1001
    finally:
        await client.close()
        await off_loop(relay.kill)


# --- A relay restart -----------------------------------------------------------------


async def test_across_a_relay_restart_every_change_arrives_once_in_order(
    relay_database: str, rdb: Conn
) -> None:
    kind = f"restart-{next(_runs)}-{int(time.time())}"
    relay = RelayProcess(relay_database).start()
    written: list[str] = []
    stop_writing = threading.Event()

    def writer() -> None:  # one writer: its commit order is the order written
        with psycopg.connect(relay_database, autocommit=True) as db:
            for n in itertools.count(1):
                notify(db, f"{kind} {n}")
                written.append(f"{kind} {n}")
                if stop_writing.wait(0.02):
                    return

    token = mint(*BOB)
    client = await RelayClient.connect(
        relay.url, lambda: token, timeout=WAIT, reconnect=True, reconnect_delays=quick
    )
    thread = threading.Thread(target=writer)
    try:
        throwaway = await client.subscribe("nexus_payments")
        await client.unsubscribe(throwaway["id"])  # the relay's ids move on; the client's stay
        ack = await client.subscribe("nexus_notifications", filter=f"title=like.{kind} %")
        await client.join("case:CASE-AB000001", presence_key="USR-BOB00001")
        await client.track("case:CASE-AB000001", {"name": "Bob"})
        thread.start()
        events = await until(client, lambda e: e["type"] == "change")
        await off_loop(relay.stop)
        await off_loop(relay.start)
        events += await until(client, lambda e: e["type"] == "reconnected")
        events += await until(client, lambda e: e["type"] == "change")  # flowing again
        stop_writing.set()
        await off_loop(thread.join)
        events += await until(client, titled(written[-1]))
        back = [e["type"] for e in events[[e["type"] for e in events].index("reconnected") :]]
        if "presence_diff" not in back:  # its track again, answered in its own time
            events += await until(client, lambda e: e["type"] == "presence_diff")
        present = client.presence("case:CASE-AB000001")
    finally:
        stop_writing.set()
        if thread.is_alive():
            await off_loop(thread.join)
        await client.close()
        await off_loop(relay.kill)
    received = [e["new"]["title"] for e in events if e["type"] == "change"]
    assert received == written  # every one, in order, none twice
    assert not [e for e in events if e["type"] == "gap"]
    assert {tuple(e["subscriptions"]) for e in events if e["type"] == "change"} == {(ack["id"],)}
    reconnecting = [e for e in events if e["type"] == "reconnecting"]
    assert reconnecting[0]["attempt"] == 1 and reconnecting[0]["code"] == 1001
    assert present.keys() == {"USR-BOB00001"}


async def test_the_first_change_and_what_was_missed_arrive_after_the_restart(
    relay_database: str, rdb: Conn
) -> None:
    # The test above starts from a change received; here, what commits while the
    # relay is down, and nothing else, must arrive.
    kind = f"down-{next(_runs)}-{int(time.time())}"
    relay = RelayProcess(relay_database).start()
    token = mint(*BOB)
    client = await RelayClient.connect(
        relay.url, token, timeout=WAIT, reconnect=True, reconnect_delays=quick
    )
    try:
        await client.subscribe("nexus_notifications", filter=f"title=like.{kind} %")
        notify(rdb, f"{kind} before")
        await until(client, titled(f"{kind} before"))
        await off_loop(relay.stop)
        notify(rdb, f"{kind} while down 1")
        notify(rdb, f"{kind} while down 2")
        await off_loop(relay.start)
        notify(rdb, f"{kind} after")
        events = await until(client, titled(f"{kind} after"))
    finally:
        await client.close()
        await off_loop(relay.kill)
    assert [e["new"]["title"] for e in events if e["type"] == "change"] == [
        f"{kind} while down 1",
        f"{kind} while down 2",
        f"{kind} after",
    ]
    assert "gap" not in {e["type"] for e in events}


# --- Tokens --------------------------------------------------------------------------


async def test_a_token_about_to_expire_is_refreshed_through_the_provider(
    relay: RelayProcess, rdb: Conn
) -> None:
    issued: list[str] = []

    async def provider() -> str:  # async; its first token lives 6 s, and it renews
        if len(issued) < 2:  # it a little later than the relay's warning
            issued.append(mint(*BOB, expires_in=6) if not issued else issued[0])
        else:
            issued.append(mint(*BOB, expires_in=600))
        return issued[-1]

    client = await RelayClient.connect(relay.url, provider, timeout=WAIT, reconnect=True)
    connection = client.connection
    try:
        await client.subscribe("nexus_notifications", filter="title=eq.after expiry")
        await until(client, lambda e: e["type"] == "token_expiring")
        # Past the first token's expiry: a wait for the clock, not for an event.
        await asyncio.sleep(max(0.0, client.ready["expires_at"] + 1 - time.time()))
        notify(rdb, "after expiry")
        events = await until(client, titled("after expiry"))
        assert len(issued) == 3 and len(set(issued)) == 2
        assert {e["type"] for e in events} == {"change"}  # no closing, no reconnecting
        assert client.connection is connection
    finally:
        await client.close()


async def test_a_revoked_token_makes_the_client_ask_for_a_new_one(
    relay: RelayProcess, rdb: Conn
) -> None:
    user = f"USR-CLNT{int(time.time()) % 10000:04d}{next(_runs):04d}"
    issued: list[str] = []

    def provider() -> str:  # sync; iat with a fraction: newer than the revocation
        issued.append(mint(user, "TNT-ALPHA001", iat=time.time()))
        return issued[-1]

    client = await RelayClient.connect(
        relay.url, provider, timeout=WAIT, reconnect=True, reconnect_delays=quick
    )
    try:
        ack = await client.subscribe("nexus_notifications")
        rdb.execute("SELECT relay.revoke(%s, 'test')", (user,))
        events = await until(client, lambda e: e["type"] == "gap")
        assert len(issued) == 2
        closing = next(e for e in events if e["type"] == "closing")
        assert (closing["code"], closing["reason"]) == (4010, "token_revoked")
        assert [e["type"] for e in events[-3:]] == ["reconnecting", "reconnected", "gap"]
        # Its resume crosses the revocation: refused, so the application re-fetches.
        assert (events[-1]["subscriptions"], events[-1]["reason"]) == (
            [ack["id"]],
            "resume_refused",
        )
        notify(rdb, "after revocation", tenant="TNT-ALPHA001")
        await until(client, titled("after revocation"))
    finally:
        await client.close()


async def test_a_token_the_relay_refuses_stops_the_client_instead_of_looping(
    relay: RelayProcess,
) -> None:
    calls: list[str] = []

    def provider() -> str:  # a good token that expires, then only forged ones
        calls.append(mint(*BOB, expires_in=3) if not calls else mint(*BOB, secret="x" * 48))
        return calls[-1]

    client = await RelayClient.connect(
        relay.url, provider, timeout=WAIT, reconnect=True, reconnect_delays=quick
    )
    try:
        seen = []
        with pytest.raises(RelayRequestError) as refused:
            async for event in client.events():
                seen.append(event)
        assert refused.value.code == "invalid_token"
        # The refresh with the forged token closes with 4001; one attempt with a
        # new token from the provider, refused at auth: the end.
        closing = next(e for e in seen if e["type"] == "closing")
        assert closing["code"] == 4001
        assert [e["attempt"] for e in seen if e["type"] == "reconnecting"] == [1]
        assert len(calls) == 3
        with pytest.raises(RelayRequestError):
            await client.next_event(WAIT)  # stays stopped
    finally:
        await client.close()


async def test_a_bad_token_at_connect_raises_at_once(relay: RelayProcess) -> None:
    with pytest.raises(RelayRequestError) as refused:
        await RelayClient.connect(
            relay.url, lambda: mint(*BOB, secret="x" * 48), timeout=WAIT, reconnect=True
        )
    assert refused.value.code == "invalid_token"


async def test_a_token_without_a_provider_is_not_renewed(relay: RelayProcess) -> None:
    client = await RelayClient.connect(
        relay.url, mint(*BOB, expires_in=2), timeout=WAIT, reconnect=True
    )
    try:
        with pytest.raises(Exception, match="4003") as stopped:
            await until(client, lambda e: False)
        assert stopped.value.code == 4003  # type: ignore[attr-defined]
    finally:
        await client.close()


async def test_max_attempts_gives_up_with_the_last_reason(relay_database: str) -> None:
    relay = RelayProcess(relay_database).start()
    client = await RelayClient.connect(
        relay.url, mint(*BOB), timeout=WAIT, reconnect=True, reconnect_delays=quick, max_attempts=2
    )
    try:
        await off_loop(relay.stop)  # and it stays down
        seen = []
        with pytest.raises(RelayClosed, match="gave up after 2 attempts"):
            async for event in client.events():
                seen.append(event)
        assert [e["attempt"] for e in seen if e["type"] == "reconnecting"] == [1, 2]
        with pytest.raises(RelayClosed):
            await client.subscribe("nexus_notifications", timeout=WAIT)
    finally:
        await client.close()
        await off_loop(relay.kill)


# --- Gaps ----------------------------------------------------------------------------


async def test_a_resume_the_log_no_longer_holds_reaches_the_application_as_a_gap(
    new_demo_database: Callable[[], str],
) -> None:
    url = new_demo_database()  # its own: pruning here must not cut others' resumes
    relay = RelayProcess(url, RELAY_HISTORY_SIZE="1").start()
    client = await RelayClient.connect(
        relay.url, mint(*BOB), timeout=WAIT, reconnect=True, reconnect_delays=quick
    )
    try:
        ack = await client.subscribe("nexus_notifications")
        with psycopg.connect(url, autocommit=True) as db:
            notify(db, "kept")
            await until(client, titled("kept"))
            await off_loop(relay.stop)
            notify(db, "missed")
            # Two hours pass; the log keeps one.
            db.execute("UPDATE relay.ticks SET at = at - interval '2 hours'")
            notify(db, "new")
            db.execute("SELECT relay.tick()")
            while db.execute("SELECT relay.prune('1 hour', 1073741824)").fetchone() != (0,):
                pass
            await off_loop(relay.start)
            events = await until(client, lambda e: e["type"] == "gap")
        assert (events[-1]["subscriptions"], events[-1]["reason"]) == (
            [ack["id"]],
            "history_exceeded",
        )
        assert "reconnected" in {e["type"] for e in events}
        assert "missed" not in {e.get("new", {}).get("title") for e in events}
    finally:
        await client.close()
        await off_loop(relay.kill)


# --- The README's example ------------------------------------------------------------


def test_the_readmes_python_example_runs_as_written(relay: RelayProcess, rdb: Conn) -> None:
    # README.md points at docs/examples/python-listen.py: run it as it says.
    root = Path(__file__).resolve().parents[2]
    example = Process(
        [sys.executable, str(root / "docs" / "examples" / "python-listen.py")],
        env={
            **os.environ,
            "RELAY_URL": relay.url,
            "RELAY_TOKEN": mint(*BOB),
            "FILTER": "title=eq.from the example",
            "EXIT_AFTER": "1",
        },
        cwd=str(root),
    )
    try:
        example.wait_for('"type": "subscribed"', 2 * WAIT)
        notify(rdb, "from the example")
        line = example.wait_for('"type": "change"', 2 * WAIT)
        assert "from the example" in line
        assert example.popen.wait(WAIT) == 0
    finally:
        example.kill()


# --- A replay cut short, against a scripted relay ------------------------------------


async def test_a_replay_cut_short_resumes_from_its_start_without_duplicates() -> None:
    # A connection lost before "replayed" resumes from the same since (the
    # protocol's resume point); what that replay delivered must not come twice.
    from websockets.asyncio.server import ServerConnection, serve
    from websockets.typing import Subprotocol

    script = {  # per connection: the positions replayed, then close or "replayed"
        1: ["L:2.5", "L:2.7"],
        2: ["L:2.5", "L:2.7", "L:3.1"],
    }
    connections = itertools.count(1)
    subscribes: list[dict[str, Any]] = []

    async def relay(ws: ServerConnection) -> None:
        n = next(connections)
        auth = orjson.loads(await ws.recv())
        await ws.send(orjson.dumps({"type": "ready", "ref": auth["ref"], "expires_at": 2e9}))
        subscribe = orjson.loads(await ws.recv())
        subscribes.append(subscribe)
        ack = {"type": "subscribed", "id": "s1", "resumed": True, "position": "L:4.0"}
        await ws.send(orjson.dumps({**ack, "resume_token": f"t{n}", "ref": subscribe["ref"]}))
        for position in script[n]:
            change = {"type": "change", "subscriptions": ["s1"], "position": position}
            await ws.send(orjson.dumps(change))
        if n == 1:
            await ws.close(1001, "going_away")
            return
        await ws.send(orjson.dumps({"type": "replayed", "id": "s1", "position": "L:4.0"}))
        await ws.wait_closed()

    async with serve(relay, "127.0.0.1", 0, subprotocols=[Subprotocol("nexus-relay.v1")]) as server:
        port = server.sockets[0].getsockname()[1]
        client = await RelayClient.connect(
            f"ws://127.0.0.1:{port}/",
            "token",
            timeout=WAIT,
            reconnect=True,
            reconnect_delays=quick,
        )
        try:
            ack = await client.subscribe("t", since="L:1.0", resume_token="t0")
            events = await until(client, lambda e: e["type"] == "replayed")
            assert client.resume_point(ack["id"]) == ("L:4.0", "t2")
        finally:
            await client.close()
    assert [e["position"] for e in events if e["type"] == "change"] == ["L:2.5", "L:2.7", "L:3.1"]
    assert [(s.get("since"), s.get("resume_token")) for s in subscribes] == [
        ("L:1.0", "t0"),
        ("L:1.0", "t1"),  # from the start again, with the ack's token
    ]


# --- Backoff -------------------------------------------------------------------------


def test_backoff_spreads_the_first_attempt_then_doubles_to_its_cap_with_jitter() -> None:
    for _ in range(200):
        delays = list(itertools.islice(backoff(initial=0.5, maximum=4, jitter=0.5), 8))
        assert 0 <= delays[0] < 0.5
        for delay, base in zip(delays[1:], [0.5, 1, 2, 4, 4, 4, 4], strict=True):
            assert base * 0.5 <= delay <= base * 1.5
    assert list(itertools.islice(backoff(initial=1, maximum=3, jitter=0), 1, 5)) == [1, 2, 3, 3]
