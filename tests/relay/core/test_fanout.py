"""The core without sockets: sessions, authorization per change, gaps, time, limits."""

import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import policy
from relay.core.changes import Change, LoggedChange, TableReset
from relay.core.fanout import Fanout
from relay.core.limits import Limits
from relay.core.positions import Position
from relay.core.session import Session
from relay.core.tables import Column, Table
from relay.core.tokens import TokenVerifier
from tests.support import ALICE, BOB, CAROL, GRACE, JWT_SECRET, POLICY_FILE, mint

POLICIES = policy.load(Path(POLICY_FILE))
VERIFIER = TokenVerifier(
    claims=POLICIES.claims, bypass_roles=POLICIES.bypass_roles, secret=JWT_SECRET
)
NOW = 1_000_000.0


def table(name: str, columns: str, parents: dict[str, str] | None = None) -> Table:
    return Table(
        name=f"public.{name}",
        events=frozenset({"INSERT", "UPDATE", "DELETE"}),
        primary_key=("id",),
        columns={
            c: Column(c, "numeric" if c == "amount" else "text", "N" if c == "amount" else "S")
            for c in columns.split()
        },
        parents=parents or {},
    )


TABLES = {
    t.name: t
    for t in (
        table("nexus_payments", "id from_id to_id amount status"),
        table("nexus_notifications", "id tenant_id user_id title"),
        table("nexus_case_messages", "id case_id body", {"case": "case_id"}),
    )
}


LOG_ID = "log1"


class LoggedFanout(Fanout):
    """A fan-out fed from a log of the test's own, as the shell feeds it: each
    change in a tick of its own; the log also serves replays that memory cannot."""

    def start(self) -> "LoggedFanout":
        self.tick, self.seq = 1, 0
        self.log: list[tuple[Position, Change | TableReset]] = []
        self.begin(LOG_ID, Position.after(1))
        return self

    def write(self, change: Change | TableReset) -> str:
        """Log ``change`` and read it; its position."""
        self.tick += 1
        self.seq += 1
        position = Position(self.tick, self.seq)
        self.log.append((position, change))
        if isinstance(change, Change):
            self.ingest(change, position)
        else:
            self.reset(change, position)
        self.end_tick(self.tick)
        return self.stream.text(position)

    def serve_replays(self) -> None:
        for replay in self.take_replay_requests():
            self.replay_from_log(replay, self.log)
            self.replay_read(replay)


def make_fanout(history: int = 100, **limits: Any) -> LoggedFanout:
    fanout = LoggedFanout(POLICIES, VERIFIER, Limits(**limits), history).start()
    assert fanout.set_tables(TABLES) == []
    return fanout


def taken(session: Session) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in session.data_to_send()]


def send(session: Session, frame: dict[str, Any], now: float = NOW) -> list[dict[str, Any]]:
    session.receive(orjson.dumps(frame).decode(), now)
    return taken(session)


def signed_in(fanout: Fanout, who: tuple[str, str], now: float = NOW, **token: Any) -> Session:
    session = fanout.open_session(now)
    [ready] = send(session, {"type": "auth", "token": mint(*who, **token)}, now)
    assert ready["type"] == "ready", ready
    return session


def subscribe(session: Session, table_name: str, **options: Any) -> str:
    [ack] = send(session, {"type": "subscribe", "table": table_name, **options})
    assert ack["type"] == "subscribed", ack
    return str(ack["id"])


def payment(
    op: str, new: dict[str, Any] | None = None, old: dict[str, Any] | None = None
) -> Change:
    return Change("public.nexus_payments", op, new, old, {}, None, "1", "2026-01-01T00:00:00+00:00")  # type: ignore[arg-type]


def pay(from_id: str, to_id: str, status: str = "pending", id: str = "PAY-1") -> dict[str, Any]:
    return {"id": id, "from_id": from_id, "to_id": to_id, "amount": 10, "status": status}


def test_an_insert_reaches_those_who_may_see_it() -> None:
    fanout = make_fanout()
    alice, bob, grace = (signed_in(fanout, who) for who in (ALICE, BOB, GRACE))
    for session in (alice, bob, grace):
        subscribe(session, "nexus_payments")
    position = fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001")))
    assert position == "log1:2.1"
    for session in (alice, bob):
        [frame] = taken(session)
        assert frame["op"] == "INSERT" and frame["new"]["id"] == "PAY-1"
        assert frame["position"] == position
    assert taken(grace) == []
    assert set(fanout.take_dirty()) == {alice, bob}


@pytest.mark.parametrize(
    ("old", "new", "bob_sees", "grace_sees"),
    [
        (
            pay("TNT-ALPHA001", "TNT-BETA0001"),
            pay("TNT-ALPHA001", "TNT-BETA0001", "paid"),
            ("UPDATE", True, True),
            None,
        ),
        (
            pay("TNT-ALPHA001", "TNT-BETA0001"),
            pay("TNT-ALPHA001", "TNT-GAMMA001"),
            ("LEAVE", False, True),
            ("UPDATE", True, False),
        ),
        (
            pay("TNT-ALPHA001", "TNT-GAMMA001"),
            pay("TNT-ALPHA001", "TNT-BETA0001"),
            ("UPDATE", True, False),
            ("LEAVE", False, True),
        ),
    ],
)
def test_updates_by_what_was_and_is_visible(
    old: dict[str, Any], new: dict[str, Any], bob_sees: Any, grace_sees: Any
) -> None:
    fanout = make_fanout()
    bob, grace = signed_in(fanout, BOB), signed_in(fanout, GRACE)
    subscribe(bob, "nexus_payments")
    subscribe(grace, "nexus_payments")
    fanout.write(payment("UPDATE", new, old))
    for session, expected in ((bob, bob_sees), (grace, grace_sees)):
        frames = taken(session)
        if expected is None:
            assert frames == []
            continue
        [frame] = frames
        op, with_new, with_old = expected
        assert frame["op"] == op
        assert ("new" in frame) is with_new
        assert ("old" in frame) is with_old


def test_a_delete_reaches_only_those_who_saw_the_old_row() -> None:
    fanout = make_fanout()
    bob, grace = signed_in(fanout, BOB), signed_in(fanout, GRACE)
    subscribe(bob, "nexus_payments")
    subscribe(grace, "nexus_payments")
    fanout.write(payment("DELETE", old=pay("TNT-ALPHA001", "TNT-GAMMA001")))
    assert taken(bob) == []
    assert [f["op"] for f in taken(grace)] == ["DELETE"]


def test_case_messages_are_authorized_by_their_parent_case() -> None:
    fanout = make_fanout()
    bob, grace = signed_in(fanout, BOB), signed_in(fanout, GRACE)
    subscribe(bob, "nexus_case_messages")
    subscribe(grace, "nexus_case_messages")
    case = {"id": "CASE-1", "client_id": "TNT-ALPHA001", "vendor_id": "TNT-BETA0001"}
    fanout.write(
        Change(
            "public.nexus_case_messages",
            "INSERT",
            {"id": "M1", "case_id": "CASE-1", "body": "hi"},
            None,
            {"case": case},
            None,
            "1",
            "t",
        )
    )
    assert [f["new"]["id"] for f in taken(bob)] == ["M1"]
    assert taken(grace) == []
    # Without its parent (not visible to the writer), a message is visible to nobody.
    fanout.write(
        Change(
            "public.nexus_case_messages",
            "INSERT",
            {"id": "M2", "case_id": "CASE-1", "body": "?"},
            None,
            {"case": None},
            None,
            "2",
            "t",
        )
    )
    assert taken(bob) == []


def test_select_keeps_the_primary_key() -> None:
    fanout = make_fanout()
    bob = signed_in(fanout, BOB)
    subscribe(bob, "nexus_payments", select=["status"])
    fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001")))
    assert taken(bob)[0]["new"] == {"id": "PAY-1", "status": "pending"}


def test_one_frame_per_change_per_connection() -> None:
    fanout = make_fanout()
    bob = signed_in(fanout, BOB)
    first = subscribe(bob, "nexus_payments")
    second = subscribe(bob, "nexus_payments", filter="status=eq.pending")
    third = subscribe(bob, "nexus_payments", select=["status"])
    fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001")))
    frames = taken(bob)
    received = sorted(sorted(frame["subscriptions"]) for frame in frames)
    assert received == sorted([sorted([first, second]), [third]])


def test_the_rate_limit_closes_the_connection() -> None:
    fanout = make_fanout(max_messages_per_second=5)
    bob = signed_in(fanout, BOB)
    replies = []
    for n in range(5):
        replies += send(bob, {"type": "ping", "ref": n})
    assert [r["type"] for r in replies] == ["pong"] * 4 + ["closing"]  # auth took the first token
    assert bob.close_request is not None and bob.close_request[0] == 4029
    # Time refills the bucket for those who wait.
    carol = signed_in(fanout, CAROL)
    for n in range(20):
        assert send(carol, {"type": "ping"}, NOW + n)[0]["type"] == "pong"


def test_auth_must_come_in_time() -> None:
    fanout = make_fanout(auth_timeout=2)
    session = fanout.open_session(NOW)
    assert session.deadline() == NOW + 2
    session.tick(NOW + 1)
    assert taken(session) == []
    session.tick(NOW + 2)
    assert taken(session)[0]["reason"] == "auth_timeout"
    assert session.close_request is not None and session.close_request[0] == 4002


def test_token_expiry_is_announced_then_enforced() -> None:

    fanout = make_fanout(token_expiry_warning=30)
    now = time.time()
    bob = signed_in(fanout, BOB, now, expires_in=100)
    expires_at = bob.identity.expires_at  # type: ignore[union-attr]
    assert bob.deadline() == expires_at - 30
    bob.tick(expires_at - 31)
    assert taken(bob) == []
    bob.tick(expires_at - 30)
    assert taken(bob)[0]["type"] == "token_expiring"
    assert bob.deadline() == expires_at
    bob.tick(expires_at)
    assert taken(bob)[0]["reason"] == "token_expired"
    assert bob.close_request is not None and bob.close_request[0] == 4003
    assert fanout.connections.of_user(bob.identity.subject) == 0  # type: ignore[union-attr]


def test_a_refresh_with_new_claims_refiles_subscriptions() -> None:
    fanout = make_fanout()
    alice = signed_in(fanout, ALICE)
    subscribe(alice, "nexus_payments")
    [_, reply] = send(alice, {"type": "refresh", "token": mint("USR-ALIC0001", "TNT-GAMMA001")})
    assert reply["type"] == "refreshed"
    fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001")))
    assert taken(alice) == []
    fanout.write(payment("INSERT", pay("TNT-BETA0001", "TNT-GAMMA001", id="PAY-2")))
    assert [f["new"]["id"] for f in taken(alice)] == ["PAY-2"]


def test_gaps_reach_the_subscribers_they_concern_once_per_batch() -> None:
    fanout = make_fanout()
    bob, grace = signed_in(fanout, BOB), signed_in(fanout, GRACE)
    payments = subscribe(bob, "nexus_payments")
    notifications = subscribe(grace, "nexus_notifications")
    fanout.write(TableReset("public.nexus_payments", "truncate"))
    assert taken(bob) == []  # gathered until the batch is written
    assert fanout.take_dirty() == [bob]
    assert taken(bob) == [
        {
            "type": "gap",
            "subscriptions": [payments],
            "reason": "truncate",
            "position": fanout.position(),  # a re-fetch now is complete from here
        }
    ]
    for _ in range(1000):  # a storm of failures in one batch...
        fanout.gap_all("relay_error")
    fanout.write(TableReset("public.nexus_payments", "truncate"))
    fanout.take_dirty()
    [gap] = taken(grace)  # ...is one gap
    assert gap == {
        "type": "gap",
        "subscriptions": [notifications],
        "reason": "relay_error",
        "position": "log1:4.0",
    }
    assert [f["reason"] for f in taken(bob)] == ["relay_error"]
    assert fanout.stats.gaps == {"truncate": 1, "relay_error": 2}


def ack_of(
    session: Session, table: str, **options: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    [ack, *rest] = send(session, {"type": "subscribe", "table": table, **options})
    assert ack["type"] == "subscribed", ack
    return ack, rest


def test_a_resume_replays_what_was_missed_then_says_so() -> None:
    fanout = make_fanout()
    bob = signed_in(fanout, BOB)
    first, _ = ack_of(bob, "nexus_payments")
    fanout.close_session(bob, "connection_lost")
    one = fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id="PAY-1")))
    fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-GAMMA001", id="PAY-2")))
    three = fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id="PAY-3")))

    again = signed_in(fanout, BOB)
    ack, frames = ack_of(
        again, "nexus_payments", since=first["position"], resume_token=first["resume_token"]
    )
    assert ack["resumed"] is True
    *replayed, end = frames
    assert [f["new"]["id"] for f in replayed] == ["PAY-1", "PAY-3"]  # not Gamma's
    assert [f["position"] for f in replayed] == [one, three]
    assert end == {"type": "replayed", "id": ack["id"], "position": "log1:5.0"}
    # The new token covers from the resume point: a resume of this one may start there.
    assert ack["resume_token"].startswith("2.0.")
    assert fanout.stats.replays == {"memory": 1}


def test_a_resume_from_before_memory_is_read_from_the_log_while_live_frames_wait() -> None:
    fanout = make_fanout(history=1)
    bob = signed_in(fanout, BOB)
    first, _ = ack_of(bob, "nexus_payments")
    fanout.close_session(bob, "connection_lost")
    one = fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id="PAY-1")))
    two = fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id="PAY-2")))

    again = signed_in(fanout, BOB)
    ack, frames = ack_of(
        again, "nexus_payments", since=first["position"], resume_token=first["resume_token"]
    )
    assert (ack["resumed"], frames) == (True, [])  # from the log, to follow
    three = fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id="PAY-3")))
    assert taken(again) == []  # live, but held back until the replay is sent
    fanout.serve_replays()
    *changes, end = taken(again)
    assert [(f["new"]["id"], f["position"]) for f in changes] == [
        ("PAY-1", one),
        ("PAY-2", two),
        ("PAY-3", three),
    ]
    assert end["type"] == "replayed"
    assert fanout.stats.replays == {"log": 1}


def test_a_position_ahead_of_this_relay_waits_for_it() -> None:
    fanout = make_fanout()
    bob = signed_in(fanout, BOB)
    ack, _ = ack_of(bob, "nexus_payments")
    # Another relay, a change further, sent this client PAY-1 at log1:2.1.
    ahead, token = "log1:2.1", ack["resume_token"]
    again = signed_in(fanout, BOB)
    resumed, frames = ack_of(again, "nexus_payments", since=ahead, resume_token=token)
    assert (resumed["resumed"], frames) == (True, [])
    fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id="PAY-1")))
    assert taken(again) == [{"type": "replayed", "id": resumed["id"], "position": "log1:3.0"}]
    two = fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id="PAY-2")))
    [change] = taken(again)  # PAY-1 is not repeated
    assert (change["new"]["id"], change["position"]) == ("PAY-2", two)


def test_a_resume_needs_a_token_for_the_same_user_and_claims() -> None:
    fanout = make_fanout()
    bob = signed_in(fanout, BOB)
    ack, _ = ack_of(bob, "nexus_payments")
    fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id="PAY-1")))
    origin = ack["position"]
    refusals: dict[str, tuple[tuple[str, str], dict[str, Any], dict[str, Any]]] = {
        "no token": (BOB, {}, {}),
        "forged token": (BOB, {}, {"resume_token": "2.0.9999999999.AAAAAAAAAAAAAAAAAAAAAAAA"}),
        "another user": (CAROL, {}, {"resume_token": ack["resume_token"]}),
        "other claims": (
            ("USR-BOB00001", "TNT-ALPHA001"),
            {},
            {"resume_token": ack["resume_token"]},
        ),
        # Claims given again, after a while without them: rows written while the
        # user held others are not replayed (resume.py: iat).
        "a token issued after": (
            BOB,
            {"iat": int(time.time()) + 20},  # within the clocks' leeway
            {"resume_token": ack["resume_token"]},
        ),
        "no iat": (BOB, {"iat": None}, {"resume_token": ack["resume_token"]}),
    }
    for why, (who, claims, options) in refusals.items():
        session = signed_in(fanout, who, **claims)
        refused, [gap] = ack_of(session, "nexus_payments", since=origin, **options)
        assert refused["resumed"] is False, why
        assert (gap["type"], gap["reason"]) == ("gap", "resume_refused"), why
    # A position before the one the token covers is refused too: no history
    # from before the subscriber held these claims.
    later = signed_in(fanout, BOB)
    late_ack, _ = ack_of(later, "nexus_payments")
    again = signed_in(fanout, BOB)
    refused, [gap] = ack_of(
        again, "nexus_payments", since=origin, resume_token=late_ack["resume_token"]
    )
    assert gap["reason"] == "resume_refused"


def test_a_resume_that_cannot_be_made_whole_is_a_gap() -> None:
    fanout = make_fanout(history=3)
    bob = signed_in(fanout, BOB)
    ack, _ = ack_of(bob, "nexus_payments")
    fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id="PAY-1")))
    fanout.gap_all("relay_error")
    fanout.take_dirty()
    taken(bob)
    again = signed_in(fanout, BOB)
    refused, [gap] = ack_of(
        again, "nexus_payments", since=ack["position"], resume_token=ack["resume_token"]
    )
    assert (refused["resumed"], gap["reason"]) == (False, "relay_error")
    _, [gap] = ack_of(again, "nexus_payments", since="other:2.0", resume_token=ack["resume_token"])
    assert gap["reason"] == "log_changed"
    # From the log, across a truncate.
    fresh, _ = ack_of(again, "nexus_payments")
    fanout.write(TableReset("public.nexus_payments", "truncate"))
    for n in range(4):  # more than memory holds
        fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id=f"PAY-{n}")))
    third = signed_in(fanout, BOB)
    _, frames = ack_of(
        third, "nexus_payments", since=fresh["position"], resume_token=fresh["resume_token"]
    )
    assert frames == []
    fanout.serve_replays()
    assert [(f["type"], f["reason"]) for f in taken(third)] == [("gap", "truncate")]


def test_a_replay_over_its_byte_budget_is_a_gap() -> None:
    fanout = make_fanout(max_replay_bytes=2000)
    bob = signed_in(fanout, BOB)
    ack, _ = ack_of(bob, "nexus_payments")
    for n in range(20):
        fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id=f"PAY-{n}")))
    again = signed_in(fanout, BOB)
    refused, frames = ack_of(
        again, "nexus_payments", since=ack["position"], resume_token=ack["resume_token"]
    )
    assert refused["resumed"] is False
    assert [f["reason"] for f in frames] == ["replay_too_large"]


def test_new_claims_on_refresh_tell_the_client_to_refetch() -> None:
    fanout = make_fanout()
    alice = signed_in(fanout, ALICE)
    subscription = subscribe(alice, "nexus_payments")
    frames = send(alice, {"type": "refresh", "token": mint("USR-ALIC0001", "TNT-GAMMA001")})
    assert [f["type"] for f in frames] == ["gap", "refreshed"]
    assert (frames[0]["subscriptions"], frames[0]["reason"]) == ([subscription], "claims_changed")
    # The same claims again: nothing to re-fetch.
    assert [
        f["type"]
        for f in send(alice, {"type": "refresh", "token": mint("USR-ALIC0001", "TNT-GAMMA001")})
    ] == ["refreshed"]


def test_a_connection_that_queues_too_much_is_dropped() -> None:
    fanout = make_fanout(max_outbox_bytes=65536, max_messages_per_second=1000)
    bob = signed_in(fanout, BOB)
    for n in range(30):  # thirty subscriptions, each with its own columns: a frame each
        subscribe(
            bob, "nexus_payments", select=["status"] if n % 2 else ["amount"], filter=f"id=neq.X{n}"
        )
    for n in range(200):
        fanout.write(payment("INSERT", pay("TNT-ALPHA001", "TNT-BETA0001", id=f"PAY-{n}")))
    assert bob.close_request is not None and bob.close_request[0] == 4008
    assert [f["type"] for f in taken(bob)] == ["closing"]  # its queue dropped; only the reason
    assert fanout.index.count == 0


def test_unauthenticated_connections_have_their_own_allowance() -> None:
    fanout = make_fanout(max_unauthenticated=2, max_connections=3)
    idle = [fanout.open_session(NOW) for _ in range(2)]
    refused = fanout.open_session(NOW)
    assert taken(refused)[0]["reason"] == "too_many_connections"
    for session in idle:  # they authenticate: their places are freed for others
        send(session, {"type": "auth", "token": mint(*BOB)})
    signed_in(fanout, ALICE)  # waits no more, but the relay is now full
    third = fanout.open_session(NOW)
    frames = send(third, {"type": "auth", "token": mint(*GRACE), "ref": 1})
    assert [f["type"] for f in frames] == ["error", "closing"]
    assert frames[1]["code"] == 4004


def test_an_unpublished_table_ends_its_subscriptions() -> None:
    fanout = make_fanout()
    bob = signed_in(fanout, BOB)
    subscription = subscribe(bob, "nexus_payments")
    fanout.set_tables({k: v for k, v in TABLES.items() if k != "public.nexus_payments"})
    assert taken(bob) == [
        {"type": "unsubscribed", "id": subscription, "reason": "table_unpublished"}
    ]
    assert fanout.index.count == 0


def test_a_policy_that_does_not_fit_its_table_denies_it() -> None:
    fanout = make_fanout()
    broken = {**TABLES, "public.nexus_payments": table("nexus_payments", "id amount status")}
    assert [str(p) for p in fanout.set_tables(broken)] == [
        "policy of public.nexus_payments: no column 'from_id'",
        "policy of public.nexus_payments: no column 'to_id'",
    ]
    bob = signed_in(fanout, BOB)
    [error] = send(bob, {"type": "subscribe", "table": "nexus_payments"})
    assert error["code"] == "table_not_allowed"


def test_a_table_name_with_a_colon_is_denied_when_its_policy_does_not_fit(
    tmp_path: Path,
) -> None:
    policy_file = tmp_path / "policy.toml"
    policy_file.write_text(
        'version = 1\n[claims.tenant_id]\npath = "app_metadata.tenant_id"\n'
        '[tables."items:archive"]\nvisible = "owner = claims.tenant_id"\n'
    )
    fanout = Fanout(policy.load(policy_file), VERIFIER, Limits(), 100)
    problems = fanout.set_tables({"public.items:archive": table("items:archive", "id")})
    assert [str(p) for p in problems] == ["policy of public.items:archive: no column 'owner'"]
    assert fanout.broken_policies == {"public.items:archive"}


def test_the_relay_full() -> None:
    fanout = make_fanout(max_connections=1)
    signed_in(fanout, BOB)
    refused = fanout.open_session(NOW)
    frames = send(refused, {"type": "auth", "token": mint(*GRACE)})
    assert frames[1]["reason"] == "too_many_connections"
    assert refused.close_request is not None and refused.close_request[0] == 4004
    assert fanout.stats.disconnects == {"too_many_connections": 1}


# --- The index never loses a delivery ----------------------------------------------------

TENANTS = st.sampled_from(["TNT-ALPHA001", "TNT-BETA0001", "TNT-GAMMA001", "TNT-DELTA001"])
USERS = st.sampled_from(["USR-ALIC0001", "USR-BOB00001", "USR-CARO0001"])
ROWS = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["N1", "N2"]),
        "tenant_id": TENANTS,
        "user_id": st.one_of(st.none(), USERS),
        "title": st.sampled_from(["a", "b"]),
    }
)
FILTERS = st.one_of(
    st.none(),
    st.sampled_from(
        [
            "title=eq.a",
            "user_id=is.null",
            "or=(title.eq.b,user_id.eq.USR-BOB00001)",
            "tenant_id=eq.TNT-ALPHA001",
        ]
    ),
)


@settings(max_examples=300, deadline=None)
@given(
    subscribers=st.lists(st.tuples(USERS, TENANTS, FILTERS, st.booleans()), min_size=1, max_size=6),
    op=st.sampled_from(["INSERT", "UPDATE", "DELETE"]),
    new=ROWS,
    old=ROWS,
)
def test_index_delivers_exactly_what_checking_every_subscription_would(
    subscribers: list[tuple[str, str, str | None, bool]],
    op: str,
    new: dict[str, Any],
    old: dict[str, Any],
) -> None:
    fanout = make_fanout()
    subscriptions = []
    for user, tenant, row_filter, service in subscribers:
        role = "service_role" if service else "authenticated"
        session = signed_in(fanout, (user, tenant), role=role)
        options = {"filter": row_filter} if row_filter else {}
        subscribe(session, "nexus_notifications", **options)
        assert session.identity is not None
        subscriptions += [(s, session.identity) for s in session.subscriptions.values()]
    change = Change(
        "public.nexus_notifications",
        op,  # type: ignore[arg-type]
        None if op == "DELETE" else new,
        None if op == "INSERT" else old,
        {},
        None,
        "1",
        "t",
    )
    by_index = fanout.index.candidates(change)
    expected = {s for s, identity in subscriptions if s.receives(identity, change, {})}
    assert expected <= by_index


def test_a_filter_the_relay_cannot_decide_exactly_is_refused_with_a_code() -> None:
    fanout = make_fanout()
    bob = signed_in(fanout, BOB)
    # amount is numeric without a precision here: its values may reach the relay rounded.
    request = {"type": "subscribe", "table": "nexus_payments", "filter": "amount=gt.1", "ref": 1}
    [error] = send(bob, request)
    assert (error["code"], error["ref"]) == ("unsupported_filter", 1)
    assert "numeric(p,s) with p at most 15" in error["message"]
    [error] = send(bob, {**request, "filter": "status=is.maybe"})
    assert error["code"] == "invalid_filter"


@pytest.mark.parametrize("since", ["x:²", "x:-1", "x:1e3", "x:" + "9" * 19, "nocolon", ":5"])
def test_malformed_positions_are_refused_with_a_code(since: str) -> None:
    fanout = make_fanout()
    bob = signed_in(fanout, BOB)
    [error] = send(bob, {"type": "subscribe", "table": "nexus_payments", "since": since, "ref": 1})
    assert (error["type"], error["code"], error["ref"]) == ("error", "invalid_position", 1)
    assert bob.close_request is None


def test_changes_nobody_receives_are_kept_unread_and_replayed_when_someone_resumes() -> None:
    fanout = make_fanout()
    bob = signed_in(fanout, BOB)
    ack, _ = ack_of(bob, "nexus_notifications")  # no one subscribes to payments yet
    row = pay("TNT-ALPHA001", "TNT-BETA0001")
    logged = LoggedChange(
        "public.nexus_payments",
        "INSERT",
        "INSERT",
        None,
        orjson.dumps(row).decode(),
        None,
        None,
        "7",
        "2026-01-01T00:00:00+00:00",
        0.0,
    )
    assert not fanout.index.has("public.nexus_payments")
    fanout.take(logged, Position(2, 1))  # kept as the log had it: not parsed
    fanout.end_tick(2)
    [(_, kept)] = list(fanout.history.since(Position(1, 0)))
    assert kept is logged
    resumed, frames = ack_of(
        bob, "nexus_payments", since=ack["position"], resume_token=ack["resume_token"]
    )
    *changes, end = frames
    assert [(f["op"], f["new"]) for f in changes] == [("INSERT", row)]
    assert (resumed["resumed"], end["type"]) == (True, "replayed")


# --- Revocation, policies reloaded, changes too large -----------------------------------


def test_a_revocation_closes_the_sessions_of_older_tokens_of_its_subject_only() -> None:
    from relay.core.revocations import Revocation
    from relay.core.types import UserId

    fanout = make_fanout()
    old = signed_in(fanout, ALICE, iat=NOW - 10)
    newer = signed_in(fanout, ALICE, iat=NOW + 5)
    other = signed_in(fanout, CAROL, iat=NOW - 10)
    closed = fanout.revoke(Revocation(UserId(ALICE[0]), NOW, "moved"), Position(3, 1))
    assert closed == 1
    assert old.close_request is not None and old.close_request[0] == 4010
    assert [f["reason"] for f in taken(old)] == ["token_revoked"]
    assert old.refusals[-1].reason == "token_revoked"
    assert newer.close_request is None and other.close_request is None
    # A token issued at or before it is refused; without iat too; a newer one is not.
    for iat in (NOW, NOW - 1, None):
        session = fanout.open_session(NOW)
        error, closing = send(session, {"type": "auth", "token": mint(*ALICE, iat=iat)})
        assert (error["code"], closing["code"]) == ("token_revoked", 4010)
    signed_in(fanout, ALICE, iat=NOW + 0.001)


def test_reloaded_policies_end_gap_or_keep_each_subscription() -> None:
    fanout = make_fanout()
    alice = signed_in(fanout, ALICE)
    payments = subscribe(alice, "public.nexus_payments")
    notifications = subscribe(alice, "public.nexus_notifications")
    messages = subscribe(alice, "public.nexus_case_messages")
    data = {
        "version": 1,
        "claims": {
            "user_id": {"path": "app_metadata.user_id", "pattern": "^USR-[A-Z0-9]{4,32}$"},
            "tenant_id": {"path": "app_metadata.tenant_id", "pattern": "^TNT-[A-Z0-9]{4,32}$"},
        },
        "roles": {"bypass": ["service_role"]},
        "tables": {
            "public.nexus_notifications": {"visible": "user_id = claims.user_id"},
            "public.nexus_case_messages": {
                "visible": POLICIES.tables["public.nexus_case_messages"].source
            },
        },
    }
    [problem] = fanout.set_policies(policy.from_dict(data))
    assert (problem.table, problem.reason) == ("public.nexus_payments", "no_policy")
    fanout.take_dirty()  # the batch's end: its gaps go out
    frames = {f["type"]: f for f in taken(alice)}
    assert frames["unsubscribed"] == {
        "type": "unsubscribed",
        "id": payments,
        "reason": "policy_removed",
    }
    assert frames["gap"]["subscriptions"] == [notifications]
    assert frames["gap"]["reason"] == "policy_changed"
    assert set(alice.subscriptions) == {notifications, messages}
    # New claims: every connection comes back to have its token read anew.
    data["claims"]["tenant_id"]["pattern"] = "^TNT-.*$"  # type: ignore[index]
    fanout.set_policies(policy.from_dict(data))
    assert alice.close_request is not None and alice.close_request[0] == 1001


def test_a_change_over_the_size_limit_is_sent_as_its_key() -> None:
    fanout = make_fanout(max_change_bytes=1024)
    bob = signed_in(fanout, BOB)
    subscribe(bob, "public.nexus_payments")
    big = {**pay("TNT-BETA0001", "TNT-ALPHA001"), "status": "x" * 2000}
    fanout.write(Change("public.nexus_payments", "INSERT", big, None, {}, None, "1", "t", 2100))
    [frame] = taken(bob)
    assert frame["too_large"] is True and frame["key"] == {"id": "PAY-1"}
    assert frame["size"] == 2100 and "new" not in frame and bob.close_request is None
