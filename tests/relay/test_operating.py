"""Operating a relay: refusals the operator sees, SIGHUP reloads the policies, SIGTERM drains."""

import asyncio
import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import InvalidStatus

from relay.client import RelayClient, RelayClosed, RelayRequestError
from tests.relay.test_server import SUBPROTOCOL, raw, refused
from tests.support import ALICE, POLICY_FILE, WAIT, RelayProcess, eventually, mint

pytestmark = pytest.mark.db


POLICIES = Path(POLICY_FILE).read_text()


def rewrite(path: Path, text: str) -> None:
    path.write_text(text)


def refusal_line(relay: RelayProcess, stage: str, reason: str) -> dict[str, Any]:
    """The JSON log line of a refusal (the relay logs in JSON)."""
    assert relay.process is not None
    line = relay.process.wait_for(f'"stage":"{stage}","reason":"{reason}"')
    entry: dict[str, Any] = json.loads(line)
    assert entry["level"] == "info" and entry["logger"] == "relay.refusals"
    return entry


async def test_refusals_are_logged_with_their_reason_and_counted(relay_database: str) -> None:
    relay = RelayProcess(
        relay_database, RELAY_LOG_FORMAT="json", RELAY_ALLOWED_ORIGINS="http://portal.test"
    ).start()
    try:
        forged = mint(*ALICE, secret="another-secret-of-at-least-32-bytes!!")
        await refused(relay, forged)
        entry = refusal_line(relay, "auth", "signature")
        assert entry["client"].startswith("127.0.0.1:")
        assert "signature" in entry["message"]
        assert forged not in json.dumps(entry) and forged.split(".")[2] not in json.dumps(entry)

        await refused(relay, mint(*ALICE, expires_in=-120))
        refusal_line(relay, "auth", "expired")
        await refused(relay, mint(*ALICE, aud="someone-else"))
        refusal_line(relay, "auth", "audience")
        await refused(relay, mint(*ALICE, role="anon"))
        refusal_line(relay, "auth", "role")

        for kind, reason, url, options in [
            ("origin", "origin", relay.url, {"origin": "http://evil.test"}),
            ("path", "path", relay.url + "elsewhere", {}),
        ]:
            with pytest.raises(InvalidStatus):
                async with raw(url, **options):
                    pass
            assert refusal_line(relay, "handshake", reason)["stage"] == "handshake", kind
        with pytest.raises(InvalidStatus):
            async with ws_connect(relay.url, open_timeout=WAIT):
                pass
        refusal_line(relay, "handshake", "subprotocol")

        async with await RelayClient.connect(relay.url, mint(*ALICE), timeout=WAIT) as client:
            with pytest.raises(RelayRequestError):
                await client.subscribe("nexus_nothing")
            assert refusal_line(relay, "subscribe", "table_unknown")["user"] == ALICE[0]

        metrics = relay.metrics()
        for stage, reason in [
            ("auth", "signature"),
            ("auth", "expired"),
            ("auth", "audience"),
            ("auth", "role"),
            ("handshake", "origin"),
            ("handshake", "path"),
            ("handshake", "subprotocol"),
            ("subscribe", "table_unknown"),
        ]:
            key = f'relay_refusals_total{{reason="{reason}",stage="{stage}"}}'
            assert metrics.get(key) == 1.0, (key, sorted(k for k in metrics if "refusals" in k))
    finally:
        relay.stop()


async def test_a_flood_of_refusals_is_counted_but_not_all_logged(relay_database: str) -> None:
    relay = RelayProcess(relay_database, RELAY_LOG_FORMAT="json").start()
    try:
        flood = 300
        for _ in range(flood):
            with pytest.raises(InvalidStatus):
                async with raw(relay.url + "scan"):
                    pass
        key = 'relay_refusals_total{reason="path",stage="handshake"}'
        assert relay.metrics()[key] == flood
        # A line logged after the flood (a reload) comes after all of its lines.
        assert relay.process is not None
        relay.process.popen.send_signal(signal.SIGHUP)
        relay.process.wait_for("reloaded the policy file")
        lines = [json.loads(line) for line in relay.process.output if line.startswith("{")]
        logged = [line for line in lines if line.get("reason") == "path"]
        assert 100 <= len(logged) < flood  # a burst of 100, then 10 a second
        assert any(line.get("not_logged_before", 0) > 0 for line in logged)
    finally:
        relay.stop()


# --- SIGHUP: the policy file, reloaded ------------------------------------------------


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(POLICIES)
    return path


def reload(relay: RelayProcess) -> str:
    assert relay.process is not None
    relay.process.popen.send_signal(signal.SIGHUP)
    return relay.process.wait_for("policy file")


async def test_sighup_reloads_the_policies_and_reauthorizes_live_subscriptions(
    relay_database: str, policy_file: Path, rdb: Any
) -> None:
    relay = RelayProcess(relay_database, RELAY_POLICY_FILE=str(policy_file)).start()
    try:
        alice = await RelayClient.connect(relay.url, mint(*ALICE), timeout=WAIT)
        payments = await alice.subscribe("nexus_payments")
        notifications = await alice.subscribe("nexus_notifications")

        # A file that does not load changes nothing.
        rewrite(policy_file, "this is [not toml")
        assert "not reloaded, the policies in force stay" in reload(relay)
        rdb.execute(
            "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
            " VALUES (%s, 'test', 'still live')",
            (ALICE[1],),
        )
        event = await alice.next_event(WAIT)
        assert event["type"] == "change" and event["new"]["title"] == "still live"

        # Payments lose their policy; notifications get a narrower one.
        text = POLICIES
        start = text.index('[tables."public.nexus_payments"]')
        end = text.index("[tables.", start + 1)
        text = text[:start] + text[end:]
        text = text.replace(
            "(user_id = claims.user_id or user_id is null)", "user_id = claims.user_id"
        )
        rewrite(policy_file, text)
        assert "reloaded the policy file" in reload(relay)
        seen: dict[str, dict[str, Any]] = {}
        while len(seen) < 2:
            event = await alice.next_event(WAIT)
            seen[event["type"]] = event
        assert seen["unsubscribed"] == {
            "type": "unsubscribed",
            "id": payments["id"],
            "reason": "policy_removed",
        }
        assert seen["gap"]["reason"] == "policy_changed"
        assert seen["gap"]["subscriptions"] == [notifications["id"]]
        with pytest.raises(RelayRequestError) as excinfo:
            await alice.subscribe("nexus_payments")
        assert excinfo.value.code == "table_not_allowed"

        # The new policy decides: a tenant-wide notification (user_id null) no longer reaches her.
        rdb.execute(
            "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
            " VALUES (%s, 'test', 'tenant-wide')",
            (ALICE[1],),
        )
        rdb.execute(
            "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title)"
            " VALUES (%s, %s, 'test', 'hers')",
            (ALICE[1], ALICE[0]),
        )
        event = await alice.next_event(WAIT)
        assert event["type"] == "change" and event["new"]["title"] == "hers"
        await alice.close()
    finally:
        relay.stop()


async def test_sighup_with_new_claims_closes_connections_to_come_back(
    relay_database: str, policy_file: Path
) -> None:
    relay = RelayProcess(relay_database, RELAY_POLICY_FILE=str(policy_file)).start()
    try:
        alice = await RelayClient.connect(relay.url, mint(*ALICE), timeout=WAIT)
        rewrite(policy_file, POLICIES.replace('"^TNT-[A-Z0-9]{4,32}$"', '"^TNT-[A-Z0-9]{4,40}$"'))
        reload(relay)
        closed = await alice.wait_closed(WAIT)
        assert closed.code == 1001
        again = await RelayClient.connect(relay.url, mint(*ALICE), timeout=WAIT)
        await again.close()
    finally:
        relay.stop()


# --- SIGTERM: drain ------------------------------------------------------------------------


async def test_sigterm_drains_not_ready_at_once_then_closes_connections_spread_out(
    relay_database: str, rdb: Any
) -> None:
    window = 3.0
    relay = RelayProcess(relay_database, RELAY_DRAIN_S=str(window)).start()
    clients = [await RelayClient.connect(relay.url, mint(*ALICE), timeout=WAIT) for _ in range(10)]
    for client in clients:
        await client.subscribe("nexus_notifications")
    assert relay.get("/readyz")[0] == 200
    assert relay.process is not None
    relay.process.popen.send_signal(signal.SIGTERM)
    began = time.monotonic()

    def not_ready() -> tuple[int, str] | None:
        status, body = relay.get("/readyz")
        return (status, body) if status == 503 else None

    _, body = eventually(not_ready)
    assert json.loads(body)["draining"] is True
    # Nobody new: refused at the socket once it is closed, or with HTTP 503 by a
    # handshake that raced the close.
    with pytest.raises((ConnectionRefusedError, InvalidStatus)) as refused:
        await RelayClient.connect(relay.url, mint(*ALICE), timeout=WAIT)
    if isinstance(refused.value, InvalidStatus):
        assert refused.value.response.status_code == 503

    # Changes still reach the connections that are still open.
    rdb.execute(
        "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
        " VALUES (%s, 'test', 'while draining')",
        (ALICE[1],),
    )

    async def until_closed(client: RelayClient) -> tuple[float, int | None, list[str]]:
        titles: list[str] = []
        while True:
            try:
                event = await client.next_event(window + WAIT)
            except RelayClosed as closed:
                return time.monotonic() - began, closed.code, titles
            if event["type"] == "change":
                titles.append(event["new"]["title"])

    ends = await asyncio.gather(*(until_closed(c) for c in clients))
    assert {code for _, code, _ in ends} == {1001}
    times = sorted(at for at, _, _ in ends)
    assert times[-1] - times[0] >= window / 3, times  # spread over the window, not at once
    assert any("while draining" in titles for _, _, titles in ends), ends
    assert relay.process.popen.wait(WAIT) == 0
    relay.kill()


async def test_an_unknown_subprotocol_is_refused_before_the_socket_opens(
    relay: RelayProcess,
) -> None:
    with pytest.raises(InvalidStatus) as excinfo:
        async with ws_connect(relay.url, subprotocols=["nexus-relay.v9"], open_timeout=WAIT):  # type: ignore[list-item]
            pass
    assert excinfo.value.response.status_code == 400
    assert SUBPROTOCOL.encode() in excinfo.value.response.body
