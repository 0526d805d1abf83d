"""Broadcast and presence across relays (relay/peers_redis.py), from the database
(relay.broadcast) and from services over HTTP (relay/broadcast_api.py).

Real processes: relays, a redis-server of the test's own on a free port (never
the machine's), PostgreSQL; members are raw Phoenix clients of Supabase's
endpoint (tests/relay/phoenix.py) in rooms that a test policy file opens.
"""

import shutil
import signal
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import httpx
import psycopg
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.relay.phoenix import Phoenix, anon_key, url
from tests.support import (
    ALICE,
    BOB,
    POLICY_FILE,
    WAIT,
    Process,
    RelayProcess,
    eventually,
    free_port,
    mint,
)

ROOMS = """
[[topics.rules]]
pattern = "room:{name}"
broadcast = ["read", "write"]
presence = ["read", "write"]
"""

HEARTBEAT = "0.3"  # seconds: a killed relay's presence expires after three of them


@dataclass
class RedisServer:
    """``redis-server`` on a free port, in memory only, for one module's relays."""

    port: int = field(default_factory=free_port)
    process: Process | None = None

    def start(self) -> Self:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        if not Path(binary).exists():
            pytest.fail(
                f"{binary} is missing: `make test` installs it (apt-get install redis-server)"
            )
        options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        self.process = Process([binary, "--port", str(self.port), *options])
        self.process.wait_for("Ready to accept connections")
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(signal.SIGTERM)
            self.process.kill()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


def readyz(relay: RelayProcess) -> dict[str, Any]:
    import json

    _, body = relay.get("/readyz")
    value: dict[str, Any] = json.loads(body)
    return value


@pytest.fixture(scope="module")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("rooms") / "policy.toml"
    path.write_text(Path(POLICY_FILE).read_text(encoding="utf-8") + ROOMS, encoding="utf-8")
    return str(path)


StartRelay = Callable[..., RelayProcess]


@pytest.fixture(scope="module")
def start_relay(
    relay_database: str, policy_file: str, redis_server: RedisServer
) -> Iterator[StartRelay]:
    """Start a relay with the rooms, through the module's Redis unless told
    ``redis=False``; all stopped at the end."""
    started: list[RelayProcess] = []

    def start(redis: bool = True, **settings: str) -> RelayProcess:
        env: dict[str, Any] = {
            "RELAY_POLICY_FILE": policy_file,
            "RELAY_JOIN_ERROR_DELAY_S": "0",
            **settings,
        }
        if redis:
            env.update(RELAY_REDIS_URL=redis_server.url, RELAY_REDIS_HEARTBEAT_S=HEARTBEAT)
        relay = RelayProcess(relay_database, **env).start()
        started.append(relay)
        if redis:
            eventually(lambda: readyz(relay)["redis_connected"], 2 * WAIT)
        return relay

    yield start
    for relay in started:
        relay.kill()


@pytest.fixture(scope="module")
def relays(start_relay: StartRelay) -> tuple[RelayProcess, RelayProcess]:
    """Two relays joined through Redis, for the module."""
    return start_relay(), start_relay()


Member = Callable[..., Awaitable[tuple[Phoenix, str]]]


@pytest.fixture
async def member() -> AsyncIterator[Member]:
    """Join a room on a relay as a user: the client, and its join ref."""
    sockets: list[ClientConnection] = []

    async def join(
        relay: RelayProcess,
        room: str,
        who: tuple[str, str] = ALICE,
        *,
        presence: bool = False,
        key: str = "",
        bindings: list[dict[str, Any]] | None = None,
    ) -> tuple[Phoenix, str]:
        ws = await connect(url(relay), open_timeout=WAIT)
        sockets.append(ws)
        client = Phoenix(ws, "1.0.0")
        ref, reply = await client.join(
            room,
            bindings or [],
            mint(*who),
            broadcast={"self": False, "ack": True},
            presence={"key": key, "enabled": presence},
        )
        assert reply["status"] == "ok", reply
        return client, ref

    yield join
    for ws in sockets:
        await ws.close()


async def send(client: Phoenix, join_ref: str, room: str, event: str, payload: Any) -> None:
    ref = await client.push(
        f"realtime:{room}",
        "broadcast",
        {"type": "broadcast", "event": event, "payload": payload},
        join_ref=join_ref,
    )
    assert (await client.reply(ref))["status"] == "ok"


async def track(client: Phoenix, join_ref: str, room: str, meta: dict[str, Any]) -> None:
    ref = await client.push(
        f"realtime:{room}",
        "presence",
        {"type": "presence", "event": "track", "payload": meta},
        join_ref=join_ref,
    )
    assert (await client.reply(ref))["status"] == "ok"


async def broadcasts(client: Phoenix, last: Any) -> list[Any]:
    """The payloads of the broadcasts received, up to and with ``last``."""
    received = []
    while True:
        message = await client.until("broadcast")
        received.append(message["payload"]["payload"])
        if message["payload"]["payload"] == last:
            return received


async def diff(client: Phoenix) -> dict[str, Any]:
    payload: dict[str, Any] = (await client.until("presence_diff"))["payload"]
    return payload


# --- Broadcast and presence through Redis -------------------------------------------


async def test_a_broadcast_on_one_relay_reaches_the_members_on_the_other_once(
    relays: tuple[RelayProcess, RelayProcess], member: Member
) -> None:
    a, b = relays
    sender, ref = await member(a, "room:once")
    near, _ = await member(a, "room:once", BOB)
    far, _ = await member(b, "room:once", BOB)
    await send(sender, ref, "room:once", "note", {"n": 1})
    await send(sender, ref, "room:once", "note", {"n": 2})  # a fence: nothing in between
    assert await broadcasts(far, {"n": 2}) == [{"n": 1}, {"n": 2}]
    assert await broadcasts(near, {"n": 2}) == [{"n": 1}, {"n": 2}]
    await send(sender, ref, "room:once", "note", {"n": 3})
    assert await broadcasts(far, {"n": 3}) == [{"n": 3}]  # no echo, no copy of 1 or 2


async def test_presence_tracked_on_one_relay_shows_on_the_other_and_leaves_with_its_client(
    relays: tuple[RelayProcess, RelayProcess], member: Member
) -> None:
    a, b = relays
    watcher, _ = await member(b, "room:presence", BOB, presence=True)
    assert (await watcher.until("presence_state"))["payload"] == {}
    alice, ref = await member(a, "room:presence", presence=True, key="alice")
    await track(alice, ref, "room:presence", {"status": "online"})
    joined = await diff(watcher)
    assert list(joined["joins"]) == ["alice"] and joined["leaves"] == {}
    [meta] = joined["joins"]["alice"]["metas"]
    assert meta["status"] == "online" and meta["phx_ref"]

    # A member who comes later to the other relay gets it in its state.
    late, _ = await member(b, "room:presence", BOB, presence=True)
    state = (await late.until("presence_state"))["payload"]
    assert state == {"alice": {"metas": [meta]}}

    await alice.ws.close()
    left = await diff(watcher)
    assert left == {"joins": {}, "leaves": {"alice": {"metas": [meta]}}}


async def test_a_relay_that_stops_or_dies_takes_its_presence_with_it(
    relays: tuple[RelayProcess, RelayProcess], start_relay: StartRelay, member: Member
) -> None:
    _, b = relays
    # Started before anyone waits for events: starting blocks the test's loop.
    doomed = {how: start_relay() for how in (signal.SIGTERM, signal.SIGKILL)}
    watcher, _ = await member(b, "room:gone", BOB, presence=True)
    for how, relay in doomed.items():  # NodeGone; then silence, and expiry
        alice, ref = await member(relay, "room:gone", presence=True, key=f"alice-{how.name}")
        await track(alice, ref, "room:gone", {"how": how.name})
        joined = await diff(watcher)
        assert list(joined["joins"]) == [f"alice-{how.name}"]
        assert relay.process is not None
        relay.process.popen.send_signal(how)  # not waited for: its clients must answer
        left = await diff(watcher)
        assert list(left["leaves"]) == [f"alice-{how.name}"], left


async def test_a_relay_without_redis_serves_its_rooms_alone(
    start_relay: StartRelay, member: Member
) -> None:
    alone = start_relay(redis=False)
    assert readyz(alone)["redis_connected"] is None
    assert "relay_redis_connected" not in alone.metrics()
    sender, ref = await member(alone, "room:alone")
    receiver, _ = await member(alone, "room:alone", BOB, presence=True)
    await send(sender, ref, "room:alone", "note", {"n": 1})
    assert await broadcasts(receiver, {"n": 1}) == [{"n": 1}]


async def test_without_redis_a_relay_serves_its_own_clients_and_joins_the_others_again(
    relay_database: str, policy_file: str, member: Member
) -> None:
    redis_server = RedisServer().start()
    settings: dict[str, Any] = {
        "RELAY_REDIS_URL": redis_server.url,
        "RELAY_REDIS_HEARTBEAT_S": HEARTBEAT,
        "RELAY_POLICY_FILE": policy_file,
    }
    a = RelayProcess(relay_database, **settings).start()
    b = RelayProcess(relay_database, **settings).start()
    try:
        for relay in (a, b):
            eventually(lambda relay=relay: readyz(relay)["redis_connected"], 2 * WAIT)
        sender, ref = await member(a, "room:outage")
        near, _ = await member(a, "room:outage", BOB)
        far, _ = await member(b, "room:outage", BOB)

        redis_server.stop()
        eventually(lambda: readyz(a)["redis_connected"] is False, 2 * WAIT)
        status, _ = a.get("/readyz")
        assert status == 200  # still ready: its own clients are served
        await send(sender, ref, "room:outage", "note", {"n": 1})
        assert await broadcasts(near, {"n": 1}) == [{"n": 1}]

        redis_server = RedisServer(port=redis_server.port).start()
        for relay in (a, b):
            eventually(lambda relay=relay: readyz(relay)["redis_connected"], 4 * WAIT)
        assert a.metrics()["relay_redis_reconnects_total"] >= 1
        await send(sender, ref, "room:outage", "note", {"n": 2})
        assert await broadcasts(far, {"n": 2}) == [{"n": 2}]  # 1 was lost on the way, not late
    finally:
        a.kill()
        b.kill()
        redis_server.stop()


# --- Broadcast from the database ----------------------------------------------------


async def test_relay_broadcast_is_delivered_after_commit_once_per_member_in_commit_order(
    relays: tuple[RelayProcess, RelayProcess], member: Member, rdb: psycopg.Connection[Any]
) -> None:
    binding = {"event": "INSERT", "schema": "public", "table": "nexus_notifications"}
    members = [await member(relay, "room:sql", bindings=[binding]) for relay in relays]
    with rdb.transaction():
        rdb.execute("SELECT relay.broadcast('room:sql', 'e', '{\"n\": 0}')")
        raise psycopg.Rollback

    def notify(title: str) -> None:
        rdb.execute(
            "INSERT INTO nexus_notifications (tenant_id, notification_type, title)"
            " VALUES (%s, 'test', %s)",
            (ALICE[1], title),
        )

    notify("sqlb before")
    rdb.execute("SELECT relay.broadcast('room:sql', 'e', '{\"n\": 1}')")
    notify("sqlb after")
    rdb.execute("SELECT relay.broadcast('room:sql', 'e', '{\"n\": 2}', false)")
    for client, _ in members:
        seen = []
        while not seen or seen[-1] != {"n": 2}:
            message = await client.next()
            if message["event"] == "broadcast":
                seen.append(message["payload"]["payload"])
            elif message["event"] == "postgres_changes":
                title = message["payload"]["data"]["record"]["title"]
                if title.startswith("sqlb "):
                    seen.append(title)
        assert seen == ["sqlb before", {"n": 1}, "sqlb after", {"n": 2}]
    # Each relay delivered what it read in the log, and told the other nothing:
    # a broadcast through Redis from the first relay, sent after it delivered
    # those, reaches the second after any copy of them would have.
    (near, ref), (far, _) = members
    await send(near, ref, "room:sql", "e", {"n": 3})
    assert await broadcasts(far, {"n": 3}) == [{"n": 3}]


# --- Broadcast from a service over HTTP --------------------------------------------


def service_token(**extra: Any) -> str:
    """A service's token, as Supabase's service key: role service_role, no user."""
    return mint(None, None, role="service_role", sub=None, app_metadata=None, **extra)


def post(
    relay: RelayProcess, body: Any, token: str | None, key: str | None = "anon"
) -> httpx.Response:
    headers = {}
    if key is not None:
        headers["apikey"] = anon_key() if key == "anon" else key
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return httpx.post(
        f"{relay.ops_url}/realtime/v1/api/broadcast", json=body, headers=headers, timeout=WAIT
    )


async def test_a_service_broadcasts_over_http_to_the_members_of_every_relay(
    relays: tuple[RelayProcess, RelayProcess], member: Member
) -> None:
    a, b = relays
    near, _ = await member(a, "room:http")
    far, _ = await member(b, "room:http", BOB)
    message = {"topic": "room:http", "event": "note", "payload": {"n": 1}, "private": True}
    response = post(a, {"messages": [message, {**message, "payload": {"n": 2}}]}, service_token())
    assert response.status_code == 202, response.text
    assert await broadcasts(near, {"n": 2}) == [{"n": 1}, {"n": 2}]
    assert await broadcasts(far, {"n": 2}) == [{"n": 1}, {"n": 2}]


@pytest.mark.parametrize(
    ("body", "token", "key", "status", "code"),
    [
        ("ok", "forged", "anon", 401, "invalid_token"),
        ("ok", "user", "anon", 403, "forbidden"),
        ("ok", None, "anon", 401, "invalid_token"),
        ("ok", "service", None, 401, "invalid_apikey"),
        ("ok", "service", "not-a-jwt", 401, "invalid_apikey"),
        ({"messages": []}, "service", "anon", 400, "invalid_message"),
        (
            {"messages": [{"topic": "room:x", "payload": {}}]},
            "service",
            "anon",
            400,
            "invalid_message",
        ),
        (
            {"messages": [{"topic": "room:x", "event": "e", "payload": [1]}]},
            "service",
            "anon",
            400,
            "invalid_message",
        ),
        (
            {"messages": [{"topic": "room:x", "event": "e", "payload": {"x": "a" * 70_000}}]},
            "service",
            "anon",
            413,
            "payload_too_large",
        ),
    ],
)
def test_the_http_api_refuses_what_is_not_a_services_well_formed_broadcast(
    relays: tuple[RelayProcess, RelayProcess],
    body: Any,
    token: str | None,
    key: str | None,
    status: int,
    code: str,
) -> None:
    tokens = {
        "forged": service_token(secret="another-secret-" + "x" * 40),
        "user": mint(*ALICE),
        "service": service_token(),
        None: None,
    }
    if body == "ok":
        body = {"messages": [{"topic": "room:x", "event": "e", "payload": {}}]}
    response = post(relays[0], body, tokens[token], key)
    assert response.status_code == status, response.text
    assert response.json()["error"] == code


def test_the_http_api_is_rate_limited(start_relay: StartRelay) -> None:
    relay = start_relay(redis=False, RELAY_API_BROADCASTS_PER_SECOND="1")  # bursts of 2
    message = {"topic": "room:limited", "event": "e", "payload": {}}
    response = post(relay, {"messages": [message] * 3}, service_token())
    assert response.status_code == 429, response.text
    assert response.json()["error"] == "rate_limited"


def test_a_redis_that_stops_answering_is_taken_for_lost_and_joined_again(
    relay_database: str, policy_file: str
) -> None:
    """A frozen Redis closes no socket: the relay notices it hears not even its
    own heartbeats."""
    redis_server = RedisServer().start()
    relay = RelayProcess(
        relay_database,
        RELAY_REDIS_URL=redis_server.url,
        RELAY_REDIS_HEARTBEAT_S=HEARTBEAT,
        RELAY_POLICY_FILE=policy_file,
    ).start()
    assert redis_server.process is not None
    frozen = redis_server.process.popen
    try:
        eventually(lambda: readyz(relay)["redis_connected"], 2 * WAIT)
        frozen.send_signal(signal.SIGSTOP)
        eventually(lambda: readyz(relay)["redis_connected"] is False, 2 * WAIT)
        frozen.send_signal(signal.SIGCONT)
        eventually(lambda: readyz(relay)["redis_connected"], 4 * WAIT)
    finally:
        frozen.send_signal(signal.SIGCONT)
        relay.kill()
        redis_server.stop()
