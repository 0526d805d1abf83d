"""The relay's protocol over real WebSocket connections: auth, frames, limits, errors."""

import asyncio
import base64
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from relay.client import RelayClient, RelayRequestError
from tests.relay.conftest import Connect
from tests.support import ALICE, BOB, JWT_SECRET, WAIT, RelayProcess, mint

SUBPROTOCOL = "nexus-relay.v1"


@asynccontextmanager
async def raw(url: str, **options: Any) -> AsyncIterator[ClientConnection]:
    """A bare WebSocket connection, to send what a well-behaved client never would."""
    async with connect(url, subprotocols=[SUBPROTOCOL], open_timeout=WAIT, **options) as ws:  # type: ignore[list-item]
        yield ws


async def receive(ws: ClientConnection) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), WAIT)))


async def closed(ws: ClientConnection) -> tuple[int | None, str | None]:
    await asyncio.wait_for(ws.wait_closed(), WAIT)
    return ws.close_code, ws.close_reason


async def refused(
    relay: RelayProcess, token: str
) -> tuple[dict[str, Any], dict[str, Any], int | None]:
    """Authenticate with ``token``: the error, the closing frame, the close code."""
    async with raw(relay.url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": token, "ref": "a"}))
        error = await receive(ws)
        closing = await receive(ws)
        code, _ = await closed(ws)
    return error, closing, code


# --- Authentication ------------------------------------------------------------------


async def test_ready_says_who_and_where(connect: Connect) -> None:
    client = await connect(ALICE)
    ready = client.ready
    assert ready["type"] == "ready" and ready["version"] == 1
    assert ready["user"] == "USR-ALIC0001"
    assert ready["claims"] == {"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"}
    log_id, tick_seq = ready["position"].split(":")
    tick, seq = tick_seq.split(".")
    assert log_id and int(tick) >= 1 and int(seq) == 0  # after a tick: before its changes
    assert ready["limits"]["max_subscriptions"] == 50
    assert ready["expires_at"] > time.time()


async def test_the_first_frame_must_be_auth(relay: RelayProcess) -> None:
    async with raw(relay.url) as ws:
        await ws.send(json.dumps({"type": "subscribe", "table": "nexus_payments", "ref": 1}))
        error = await receive(ws)
        assert (error["code"], error["ref"]) == ("not_authenticated", 1)
        closing = await receive(ws)
        assert closing["type"] == "closing"
        assert closing["reason"] == "not_authenticated"
        assert await closed(ws) == (4000, "not_authenticated")


def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.mark.parametrize(
    ("make_token", "code", "close_code"),
    [
        (
            lambda: mint(*ALICE, secret="another-secret-of-enough-length-" + "x" * 40),
            "invalid_token",
            4001,
        ),
        (lambda: mint(*ALICE, expires_in=-120), "token_expired", 4003),
        (lambda: mint(*ALICE, nbf=int(time.time()) + 3600), "invalid_token", 4001),
        (
            lambda: jwt.encode(
                {
                    "sub": "USR-ALIC0001",
                    "exp": time.time() + 60,
                    "app_metadata": {"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"},
                },
                None,  # type: ignore[arg-type]  # alg none: no key, the forgery under test
                algorithm="none",
            ),
            "invalid_token",
            4001,
        ),
        (
            lambda: jwt.encode(
                {
                    "sub": "USR-ALIC0001",
                    "exp": int(time.time()) + 60,
                    "app_metadata": {"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"},
                },
                rsa_key(),
                algorithm="RS256",
            ),
            "invalid_token",
            4001,
        ),
        (lambda: mint(*ALICE, algorithm="HS512"), "invalid_token", 4001),
        (lambda: "not.a.jwt", "invalid_token", 4001),
        (lambda: mint(None, "TNT-ALPHA001"), "invalid_token", 4001),
        (lambda: mint("USR-ALIC0001", "ALPHA"), "invalid_token", 4001),
        (
            lambda: jwt.encode(
                {
                    "sub": "USR-ALIC0001",
                    "app_metadata": {"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"},
                },
                JWT_SECRET,
                algorithm="HS256",
            ),
            "invalid_token",
            4001,
        ),
    ],
    ids=[
        "wrong-key",
        "expired",
        "not-yet-valid",
        "alg-none",
        "rs256-unknown-key",
        "hs512-not-allowed",
        "not-a-jwt",
        "no-user-claim",
        "malformed-tenant",
        "no-exp",
    ],
)
async def test_bad_tokens_are_refused(
    relay: RelayProcess, make_token: Any, code: str, close_code: int
) -> None:
    error, closing, closed_with = await refused(relay, make_token())
    assert error["type"] == "error" and error["code"] == code and error["ref"] == "a"
    assert closing == {
        "type": "closing",
        "code": close_code,
        "reason": code,
        "message": error["message"],
    }
    assert closed_with == close_code


async def test_a_token_for_another_audience_is_refused(relay_database: str) -> None:
    strict = RelayProcess(
        relay_database, RELAY_JWT_AUDIENCE="nexus-relay", RELAY_JWT_ISSUER="nexus-portal"
    ).start()
    try:
        good = mint(*ALICE, aud="nexus-relay", iss="nexus-portal")
        async with await RelayClient.connect(strict.url, good, timeout=WAIT) as client:
            assert client.ready["user"] == "USR-ALIC0001"
        error, _, code = await refused(strict, mint(*ALICE, aud="another-app", iss="nexus-portal"))
        assert (error["code"], code) == ("invalid_token", 4001)
        assert "audience" in error["message"]
        error, _, code = await refused(strict, mint(*ALICE, aud="nexus-relay", iss="someone-else"))
        assert "issuer" in error["message"]
        error, _, code = await refused(strict, mint(*ALICE))  # the right aud, but no iss
        assert code == 4001
        assert "iss" in error["message"]
    finally:
        strict.stop()


# --- Tokens of a team's own identity provider: JWKS --------------------------------


def jwk(private_key: Any, kid: str, alg: str) -> dict[str, Any]:
    public = private_key.public_key()
    data: dict[str, Any]
    if alg.startswith("RS"):
        data = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    else:
        data = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(public))
    return {**data, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def idp_keys() -> dict[str, Any]:
    return {"rsa": rsa_key(), "ec": ec.generate_private_key(ec.SECP256R1())}


def idp_token(key: Any, kid: str, alg: str, **claims: Any) -> str:
    payload = {
        "sub": "USR-ALIC0001",
        "aud": "nexus-relay",
        "role": "authenticated",
        "exp": int(time.time()) + 300,
        "app_metadata": {"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"},
        **claims,
    }
    return jwt.encode(payload, key, algorithm=alg, headers={"kid": kid})


async def test_rs256_and_es256_tokens_from_a_jwks_file(
    relay_database: str, idp_keys: dict[str, Any], tmp_path: Path
) -> None:
    jwks = {"keys": [jwk(idp_keys["rsa"], "rsa-1", "RS256"), jwk(idp_keys["ec"], "ec-1", "ES256")]}
    (tmp_path / "jwks.json").write_text(json.dumps(jwks))
    idp = RelayProcess(
        relay_database, RELAY_JWT_SECRET="", RELAY_JWKS_FILE=str(tmp_path / "jwks.json")
    ).start()
    try:
        for key, kid, alg in (
            (idp_keys["rsa"], "rsa-1", "RS256"),
            (idp_keys["ec"], "ec-1", "ES256"),
        ):
            async with await RelayClient.connect(
                idp.url, idp_token(key, kid, alg), timeout=WAIT
            ) as client:
                assert client.ready["user"] == "USR-ALIC0001"
        # HS/RS confusion: the RSA public key used as an HMAC secret.
        public_pem = (
            idp_keys["rsa"]
            .public_key()
            .public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        )
        forged = jwt.api_jws.PyJWS().encode(
            json.dumps(
                {
                    "sub": "USR-ALIC0001",
                    "exp": int(time.time()) + 60,
                    "app_metadata": {"user_id": "USR-ALIC0001", "tenant_id": "TNT-ALPHA001"},
                }
            ).encode(),
            base64.b64encode(public_pem),
            algorithm="HS256",
            headers={"kid": "rsa-1"},
        )
        error, _, code = await refused(idp, forged)
        assert (error["code"], code) == ("invalid_token", 4001)
        # An RS256 header on a key that is ES256.
        error, _, code = await refused(idp, idp_token(idp_keys["rsa"], "ec-1", "RS256"))
        assert code == 4001
        # A key the JWKS does not have.
        error, _, code = await refused(idp, idp_token(rsa_key(), "rsa-2", "RS256"))
        assert error["message"] == "no key matches the token's key id"
    finally:
        idp.stop()


class JwksServer:
    """An identity provider's JWKS endpoint, whose keys a test may rotate."""

    def __init__(self, keys: list[dict[str, Any]]) -> None:
        self.keys = keys
        self.fetched = threading.Event()  # set once a fetch has been answered
        self.url = ""


@pytest.fixture
def jwks_server(idp_keys: dict[str, Any]) -> Iterator[JwksServer]:
    endpoint = JwksServer([jwk(idp_keys["rsa"], "rsa-1", "RS256")])

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = json.dumps({"keys": endpoint.keys}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            endpoint.fetched.set()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint.url = f"http://127.0.0.1:{server.server_address[1]}/.well-known/jwks.json"
    yield endpoint
    server.shutdown()
    server.server_close()


async def test_rs256_tokens_from_a_jwks_url(
    relay_database: str, idp_keys: dict[str, Any], jwks_server: JwksServer
) -> None:
    idp = RelayProcess(relay_database, RELAY_JWT_SECRET="", RELAY_JWKS_URL=jwks_server.url).start()
    try:
        token = idp_token(idp_keys["rsa"], "rsa-1", "RS256")
        async with await RelayClient.connect(idp.url, token, timeout=WAIT) as client:
            assert client.ready["user"] == "USR-ALIC0001"
        # The provider rotates its key: the first token with the new key id makes
        # the relay fetch the JWKS again, and the next one gets in.
        new_key = rsa_key()
        jwks_server.keys = [jwk(new_key, "rsa-2", "RS256")]
        jwks_server.fetched.clear()
        error, _, code = await refused(idp, idp_token(new_key, "rsa-2", "RS256"))
        assert (error["message"], code) == ("no key matches the token's key id", 4001)
        assert jwks_server.fetched.wait(WAIT), "the relay did not fetch the JWKS again"
        assert idp.process is not None
        idp.process.wait_for("JWKS refreshed")  # the keys are in use, not only sent
        token = idp_token(new_key, "rsa-2", "RS256")
        async with await RelayClient.connect(idp.url, token, timeout=WAIT) as client:
            assert client.ready["user"] == "USR-ALIC0001"
    finally:
        idp.stop()


# --- Token lifetime ------------------------------------------------------------------


async def test_a_token_that_expires_ends_the_session_with_its_own_code(connect: Connect) -> None:
    client = await connect(token=mint(*ALICE, expires_in=2))
    warning = await client.next_event(WAIT)
    assert warning["type"] == "token_expiring"
    assert 0 <= warning["seconds_left"] <= 2
    closing = await client.next_event(2 * WAIT)
    assert closing["type"] == "closing" and closing["reason"] == "token_expired"
    assert (await client.wait_closed()).code == 4003


async def test_a_refreshed_token_keeps_the_session_open(connect: Connect, rdb: Any) -> None:
    client = await connect(token=mint(*ALICE, expires_in=3))
    assert (await client.next_event(WAIT))["type"] == "token_expiring"
    reply = await client.refresh(mint(*ALICE, expires_in=600))
    assert reply["type"] == "refreshed" and reply["expires_at"] > time.time() + 500
    await client.subscribe("nexus_notifications")
    rdb.execute(
        "INSERT INTO nexus_notifications (tenant_id, user_id, notification_type, title)"
        " VALUES ('TNT-ALPHA001', 'USR-ALIC0001', 'test', 'after refresh')"
    )
    event = await client.next_event(2 * WAIT)  # well past the first token's expiry
    assert event["type"] == "change" and event["new"]["title"] == "after refresh"


async def test_a_refresh_with_new_claims_reauthorizes_live_subscriptions(
    connect: Connect, rdb: Any
) -> None:
    client = await connect(ALICE)
    subscription = await client.subscribe("nexus_notifications")
    # Alice moves to tenant Beta: from now on she sees Beta's tenant-wide rows, not Alpha's,
    # and what she shows of Alpha's may no longer be hers: she is told to re-fetch.
    await client.refresh(mint("USR-ALIC0001", "TNT-BETA0001"))
    gap = await client.next_event(WAIT)
    assert (gap["type"], gap["subscriptions"], gap["reason"]) == (
        "gap",
        [subscription["id"]],
        "claims_changed",
    )
    rdb.execute(
        "INSERT INTO nexus_notifications (tenant_id, notification_type, title) VALUES"
        " ('TNT-ALPHA001', 'test', 'alpha-wide'), ('TNT-BETA0001', 'test', 'beta-wide')"
    )
    event = await client.next_event(WAIT)
    assert event["new"]["title"] == "beta-wide"


async def test_a_refresh_for_another_user_is_refused(connect: Connect) -> None:
    client = await connect(ALICE)
    with pytest.raises(RelayRequestError, match="user_mismatch"):
        await client.refresh(mint(*BOB))
    closing = await client.next_event(WAIT)
    assert closing["reason"] == "user_mismatch"
    assert (await client.wait_closed()).code == 4001


async def test_a_refresh_with_an_invalid_token_ends_the_session(connect: Connect) -> None:
    client = await connect(ALICE)
    with pytest.raises(RelayRequestError, match="invalid_token"):
        await client.refresh("forged")
    assert (await client.wait_closed()).code == 4001


# --- Frames --------------------------------------------------------------------------


async def test_malformed_frames_get_an_error_and_the_connection_carries_on(
    relay: RelayProcess,
) -> None:
    async with raw(relay.url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": mint(*ALICE)}))
        assert (await receive(ws))["type"] == "ready"
        for frame, code in (
            ("{not json", "bad_frame"),
            ("[1, 2]", "bad_frame"),
            (json.dumps({"type": "teleport", "ref": 7}), "unknown_type"),
            (json.dumps({"type": "subscribe", "ref": 8}), "invalid_message"),
            (
                json.dumps({"type": "subscribe", "table": "nexus_payments", "events": ["SELECT"]}),
                "invalid_message",
            ),
            (
                json.dumps({"type": "auth", "token": mint(*ALICE), "ref": 9}),
                "already_authenticated",
            ),
        ):
            await ws.send(frame)
            error = await receive(ws)
            assert (error["type"], error["code"]) == ("error", code), frame
        await ws.send(b"\x00\x01binary")
        assert (await receive(ws))["code"] == "binary_not_supported"
        await ws.send(json.dumps({"type": "ping", "ref": "still-here"}))
        assert await receive(ws) == {"type": "pong", "ref": "still-here"}


async def test_an_oversized_frame_closes_that_connection_only(
    relay: RelayProcess, connect: Connect
) -> None:
    bystander = await connect(BOB)
    async with raw(relay.url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": mint(*ALICE)}))
        await receive(ws)
        await ws.send(json.dumps({"type": "ping", "pad": "x" * (65 * 1024)}))
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), WAIT)
        assert ws.close_code == 1009
    await bystander.ping()


async def test_subscribe_errors_name_the_problem(connect: Connect) -> None:
    client = await connect(ALICE)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"table": "nexus_users"}, "table_unknown"),
        ({"table": "nexus_payments", "select": ["id", "no_such_column"]}, "invalid_select"),
        ({"table": "nexus_payments", "filter": "no_such_column=eq.1"}, "invalid_filter"),
        ({"table": "nexus_payments", "filter": "amount=eq.ten"}, "invalid_filter"),
        (
            {
                "table": "nexus_payments",
                "filter": "status=in.(" + ",".join(map(str, range(101))) + ")",
            },
            "invalid_filter",
        ),
        ({"table": "nexus_payments", "since": "yesterday"}, "invalid_position"),
    ]
    for options, code in cases:
        table = options.pop("table")
        with pytest.raises(RelayRequestError) as excinfo:
            await client.subscribe(table, **options)
        assert excinfo.value.code == code, options
    with pytest.raises(RelayRequestError, match="unknown_subscription"):
        await client.unsubscribe("s999")
    await client.ping()


async def test_a_published_table_without_a_policy_cannot_be_subscribed(
    connect: Connect, rdb: Any, relay: RelayProcess
) -> None:
    rdb.execute("CREATE TABLE IF NOT EXISTS scratch_unguarded (id int PRIMARY KEY, secret text)")
    rdb.execute("SELECT relay.publish('scratch_unguarded')")
    try:
        # The relay reloads what is published when relay.publish notifies it, and
        # logs the tables it now knows: until then the table is unknown to it.
        assert relay.process is not None
        line = ""
        while "public.scratch_unguarded" not in line:
            line = relay.process.wait_for("published tables:")
        client = await connect(token=mint("service-x", None, role="service_role"))
        assert await subscribe_error(client, "scratch_unguarded") == "table_not_allowed"
    finally:  # the shared database's other tests (check-policy) see every published table
        rdb.execute("SELECT relay.unpublish('scratch_unguarded')")
        rdb.execute("DROP TABLE scratch_unguarded")


async def subscribe_error(client: RelayClient, table: str) -> str | None:
    try:
        await client.subscribe(table)
    except RelayRequestError as exc:
        return exc.code
    return None


# --- Origins and subprotocol ---------------------------------------------------------


async def test_only_allowed_origins_may_connect(relay_database: str) -> None:
    guarded = RelayProcess(relay_database, RELAY_ALLOWED_ORIGINS="http://portal.test").start()
    try:
        with pytest.raises(InvalidStatus) as excinfo:
            async with raw(guarded.url, origin="http://evil.test"):
                pass
        assert excinfo.value.response.status_code == 403
        async with raw(guarded.url, origin="http://portal.test") as ws:
            await ws.send(json.dumps({"type": "auth", "token": mint(*ALICE)}))
            assert (await receive(ws))["type"] == "ready"
    finally:
        guarded.stop()


async def test_a_client_must_speak_the_protocol_version(relay: RelayProcess) -> None:
    with pytest.raises(InvalidStatus) as excinfo:
        async with connect(relay.url, open_timeout=WAIT):
            pass
    assert excinfo.value.response.status_code == 400
    with pytest.raises(InvalidStatus):
        async with connect(relay.url, subprotocols=["nexus-relay.v9"], open_timeout=WAIT):  # type: ignore[list-item]
            pass


async def test_the_websocket_lives_at_its_path_only(relay: RelayProcess) -> None:
    with pytest.raises(InvalidStatus) as excinfo:
        async with raw(relay.url + "elsewhere"):
            pass
    assert excinfo.value.response.status_code == 404


# --- Limits --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def limited(relay_database: str) -> Iterator[RelayProcess]:
    process = RelayProcess(
        relay_database,
        RELAY_MAX_CONNECTIONS="4",
        RELAY_MAX_CONNECTIONS_PER_USER="2",
        RELAY_MAX_SUBSCRIPTIONS_PER_CONNECTION="2",
        RELAY_MAX_MESSAGES_PER_SECOND="5",
        RELAY_AUTH_TIMEOUT_S="0.5",
    ).start()
    yield process
    process.stop()


async def test_auth_timeout(limited: RelayProcess) -> None:
    async with raw(limited.url) as ws:
        closing = await receive(ws)
        assert closing["reason"] == "auth_timeout"
        assert await closed(ws) == (4002, "auth_timeout")


async def test_connections_per_user(limited: RelayProcess, connect: Connect) -> None:
    await connect(ALICE, target=limited)
    await connect(ALICE, target=limited)
    _, closing, code = await refused(limited, mint(*ALICE))
    assert (closing["reason"], code) == ("too_many_user_connections", 4005)
    await connect(BOB, target=limited)  # another user still gets in


async def test_connections_in_total(limited: RelayProcess, connect: Connect) -> None:
    clients = [
        await connect((f"USR-LIMIT0{n:02d}", "TNT-ALPHA001"), target=limited) for n in range(4)
    ]
    error, closing, code = await refused(limited, mint("USR-LIMIT099", "TNT-ALPHA001"))
    assert (error["code"], closing["reason"], code) == (
        "too_many_connections",
        "too_many_connections",
        4004,
    )
    await clients[0].close()
    await connect(BOB, target=limited)  # a slot is free again


async def test_subscriptions_per_connection(limited: RelayProcess, connect: Connect) -> None:
    client = await connect(BOB, target=limited)
    await client.subscribe("nexus_payments")
    await client.subscribe("nexus_notifications")
    with pytest.raises(RelayRequestError, match="too_many_subscriptions"):
        await client.subscribe("nexus_case_messages")


async def test_inbound_messages_per_second(limited: RelayProcess) -> None:
    async with raw(limited.url) as ws:
        await ws.send(json.dumps({"type": "auth", "token": mint(*BOB)}))
        await receive(ws)
        for n in range(10):
            await ws.send(json.dumps({"type": "ping", "ref": n}))
        frames = []
        with pytest.raises(ConnectionClosed):
            while True:
                frames.append(await receive(ws))
        assert frames[-1]["reason"] == "rate_limited"
        assert ws.close_code == 4029
