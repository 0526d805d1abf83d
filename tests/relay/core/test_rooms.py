"""Rooms without sockets: each member held to its topic rule's actions, and the
relay's own protocol in rooms (``Session``: joins that wait for their check,
leaves, a refreshed token decided again)."""

from dataclasses import dataclass, field
from typing import Any

import pytest

from relay.core import topic_rules
from relay.core.errors import ClientError, ErrorCode
from relay.core.peers import Broadcast, PresenceJoin
from relay.core.rooms import Rooms
from relay.core.session import PendingJoin, Session
from relay.core.topic_rules import EVERY_ACTION, Actions
from relay.core.topics import Options, Topics
from tests.relay.core.test_fanout import NOW, make_fanout, send, signed_in, taken
from tests.support import ALICE, BOB, GRACE, mint

TOPIC = "case:CASE-AB000001"
PRESENCE = Options(presence=True)


@dataclass(eq=False)
class Member:
    """A member that keeps what it was pushed."""

    name: str
    actions: Actions = EVERY_ACTION
    broadcasts: list[tuple[str, Any]] = field(default_factory=list)
    diffs: list[dict[str, Any]] = field(default_factory=list)

    @property
    def owner(self) -> Any:
        return self.name

    def push_broadcast(self, event: str, payload: Any) -> None:
        self.broadcasts.append((event, payload))

    def push_presence_diff(self, diff: dict[str, Any]) -> None:
        self.diffs.append(diff)

    __hash__ = object.__hash__


def make_rooms() -> tuple[Rooms, list[Any], list[Any]]:
    """Rooms, the sessions it marked for writing, and what it published to other relays."""
    marked: list[Any] = []
    published: list[Any] = []
    rooms = Rooms(marked.append, topics=Topics(node="n1"))
    rooms.publish = published.extend
    return rooms, marked, published


# --- Actions ---------------------------------------------------------------------------


def test_a_member_without_broadcast_read_receives_no_broadcast() -> None:
    rooms, marked, published = make_rooms()
    sender, reader = Member("sender"), Member("reader")
    deaf = Member("deaf", Actions(broadcast_write=True, presence_read=True))
    for member in (sender, reader, deaf):
        rooms.join(TOPIC, member, Options(), NOW)
    rooms.broadcast(TOPIC, sender, "typing", {"name": "A"}, NOW)
    assert reader.broadcasts == [("typing", {"name": "A"})]
    assert deaf.broadcasts == []
    assert sender.broadcasts == []  # not without self
    assert marked == ["reader"]
    assert published == [Broadcast(TOPIC, "typing", {"name": "A"}, "n1")]

    # Nor one from another relay, nor the relay's own.
    rooms.apply_peer_events([Broadcast(TOPIC, "typing", 1, "n2")], NOW)
    rooms.broadcast(TOPIC, None, "notice", 2, NOW)
    assert deaf.broadcasts == []
    assert reader.broadcasts[1:] == [("typing", 1), ("notice", 2)]


def test_a_member_without_broadcast_write_is_refused_and_nothing_is_sent() -> None:
    rooms, marked, published = make_rooms()
    mute = Member("mute", Actions(broadcast_read=True))
    reader = Member("reader")
    rooms.join(TOPIC, mute, Options(), NOW)
    rooms.join(TOPIC, reader, Options(), NOW)
    with pytest.raises(ClientError) as info:
        rooms.broadcast(TOPIC, mute, "typing", {}, NOW)
    assert info.value.code == ErrorCode.TOPIC_NOT_ALLOWED
    assert (reader.broadcasts, marked, published) == ([], [], [])


def test_a_member_without_presence_read_gets_no_state_and_no_diffs() -> None:
    rooms, _, _ = make_rooms()
    tracker = Member("tracker")
    blind = Member("blind", Actions(broadcast_read=True, presence_write=True))
    assert rooms.join(TOPIC, tracker, Options(presence=True, presence_key="t"), NOW) == {}
    assert rooms.join(TOPIC, blind, Options(presence=True, presence_key="b"), NOW) is None
    rooms.track(TOPIC, tracker, {"name": "T"}, NOW)
    rooms.track(TOPIC, blind, {"name": "B"}, NOW)  # it may be seen, not see
    assert blind.diffs == []
    assert [set(diff["joins"]) for diff in tracker.diffs] == [{"t"}, {"b"}]
    # A later member sees both in its state.
    state = rooms.join(TOPIC, Member("late"), PRESENCE, NOW)
    assert state is not None and set(state) == {"t", "b"}


def test_a_member_without_presence_write_may_not_track() -> None:
    rooms, _, published = make_rooms()
    watcher = Member("watcher", Actions(broadcast_read=True, presence_read=True))
    other = Member("other")
    rooms.join(TOPIC, watcher, PRESENCE, NOW)
    rooms.join(TOPIC, other, PRESENCE, NOW)
    with pytest.raises(ClientError) as info:
        rooms.track(TOPIC, watcher, {"name": "W"}, NOW)
    assert info.value.code == ErrorCode.TOPIC_NOT_ALLOWED
    assert other.diffs == [] and published == []


def test_leaving_tells_the_others_and_the_other_relays() -> None:
    rooms, _, published = make_rooms()
    alice, bob = Member("alice"), Member("bob")
    rooms.join(TOPIC, alice, Options(presence=True, presence_key="a"), NOW)
    rooms.join(TOPIC, bob, PRESENCE, NOW)
    rooms.track(TOPIC, alice, {"name": "A"}, NOW)
    assert isinstance(published[-1], PresenceJoin)
    rooms.leave_all(alice)
    assert set(bob.diffs[-1]["leaves"]) == {"a"}
    rooms.broadcast(TOPIC, bob, "typing", {}, NOW)
    assert alice.broadcasts == []


# --- The relay's own protocol ------------------------------------------------------------


def frames(session: Session, *requests: dict[str, Any]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for request in requests:
        out += send(session, request)
    return out


def pending_of(session: Session) -> PendingJoin:
    [pending] = session.take_checks()
    assert isinstance(pending, PendingJoin)
    return pending


def joined(session: Session, presence: bool = False) -> dict[str, Any]:
    """Join TOPIC, its check answered yes (as the shell does); the reply."""
    join: dict[str, Any] = {"type": "join", "topic": TOPIC, "ref": "j"}
    if presence:
        join["presence"] = {"key": session.identity.subject if session.identity else ""}
    assert send(session, join) == []  # nothing until its check has run
    pending = pending_of(session)
    session.checked(pending, pending.admitted, NOW)
    [reply] = taken(session)
    assert reply["type"] == "joined" and reply["ref"] == "j", reply
    return reply


def test_a_join_is_answered_once_its_check_admits_it_and_refused_when_it_does_not() -> None:
    fanout = make_fanout()
    alice, grace = signed_in(fanout, ALICE), signed_in(fanout, GRACE)
    assert joined(alice, presence=True)["presence_state"] == {}
    send(grace, {"type": "join", "topic": TOPIC, "ref": 7})
    pending = pending_of(grace)
    assert pending.admitted.check is not None  # the rule's SQL, as Grace
    assert '"tenant_id": "TNT-GAMMA001"' in pending.admitted.check.claims
    grace.checked(pending, topic_rules.refused(TOPIC, "check"), NOW)
    [error] = taken(grace)
    assert (error["type"], error["code"], error["ref"]) == ("error", "topic_not_allowed", 7)
    assert grace.rooms == {}
    assert grace.refusals[-1].reason == "check"


def test_a_topic_without_a_rule_is_refused_at_once() -> None:
    alice = signed_in(make_fanout(), ALICE)
    [error] = send(alice, {"type": "join", "topic": "room:lobby", "ref": 1})
    assert error["code"] == "topic_not_allowed"
    assert alice.take_checks() == []


def test_broadcast_self_and_ack_and_presence_between_two_sessions() -> None:
    fanout = make_fanout()
    alice, bob = signed_in(fanout, ALICE), signed_in(fanout, BOB)
    send(alice, {"type": "join", "topic": TOPIC, "broadcast": {"self": True, "ack": True}})
    pending = pending_of(alice)
    alice.checked(pending, pending.admitted, NOW)
    taken(alice)
    joined(bob, presence=True)

    sent = frames(
        alice, {"type": "broadcast", "topic": TOPIC, "event": "typing", "payload": 1, "ref": 2}
    )
    event = {"type": "broadcast", "topic": TOPIC, "event": "typing", "payload": 1}
    assert sent == [event, {"type": "broadcasted", "topic": TOPIC, "ref": 2}]
    assert taken(bob) == [event]

    # Alice tracks without having asked for presence: Bob hears it, and so, from
    # then on, does she (as Supabase).
    [diff, reply] = frames(alice, {"type": "track", "topic": TOPIC, "payload": {"n": "A"}})
    assert reply == {"type": "tracked", "topic": TOPIC}
    assert diff["type"] == "presence_diff" and diff["topic"] == TOPIC
    [bobs] = taken(bob)
    assert bobs == diff


def test_a_leave_before_the_check_answers_refuses_the_join() -> None:
    alice = signed_in(make_fanout(), ALICE)
    send(alice, {"type": "join", "topic": TOPIC, "ref": "j"})
    pending = pending_of(alice)
    [error, left] = send(alice, {"type": "leave", "topic": TOPIC, "ref": "l"})
    assert (error["code"], error["ref"]) == ("not_joined", "j")
    assert left == {"type": "left", "topic": TOPIC, "ref": "l"}
    alice.checked(pending, pending.admitted, NOW)  # too late: ignored
    assert taken(alice) == [] and alice.rooms == {}


def test_the_topics_per_connection_are_limited() -> None:
    alice = signed_in(make_fanout(max_channels_per_connection=1), ALICE)
    joined(alice)
    [error] = send(alice, {"type": "join", "topic": "case:CASE-OTHER", "ref": 1})
    assert error["code"] == "too_many_subscriptions"


def test_a_refresh_decides_again_and_a_refusal_ends_the_membership() -> None:
    fanout = make_fanout()
    alice, bob = signed_in(fanout, ALICE), signed_in(fanout, BOB)
    joined(alice, presence=True)
    joined(bob, presence=True)
    frames(alice, {"type": "track", "topic": TOPIC, "payload": {"n": "A"}})
    taken(bob)

    [refreshed] = send(alice, {"type": "refresh", "token": mint(ALICE[0], GRACE[1])})
    assert refreshed["type"] == "refreshed"
    first = pending_of(alice)
    # A second refresh before the first check answers replaces it.
    send(alice, {"type": "refresh", "token": mint(ALICE[0], GRACE[1])})
    second = pending_of(alice)
    alice.checked(first, first.admitted, NOW)
    assert taken(alice) == [] and TOPIC in alice.rooms  # stale: ignored
    alice.checked(second, topic_rules.refused(TOPIC, "check"), NOW)
    [left] = taken(alice)
    assert left == {
        "type": "left",
        "topic": TOPIC,
        "reason": "topic_not_allowed",
        "message": f"you may not join the topic {TOPIC!r}",
    }
    [diff] = taken(bob)
    assert set(diff["leaves"]) == {ALICE[0]}


def test_the_session_ending_leaves_every_room() -> None:
    fanout = make_fanout()
    alice, bob = signed_in(fanout, ALICE), signed_in(fanout, BOB)
    joined(alice, presence=True)
    joined(bob, presence=True)
    frames(alice, {"type": "track", "topic": TOPIC, "payload": {"n": "A"}})
    taken(bob)
    alice.revoke()
    assert [f["type"] for f in taken(alice)] == ["closing"]
    [diff] = taken(bob)
    assert set(diff["leaves"]) == {ALICE[0]}
    assert fanout.rooms.topics.members(TOPIC) == [bob.rooms[TOPIC]]


def test_room_frames_are_decoded_with_their_options() -> None:
    alice = signed_in(make_fanout(), ALICE)
    send(
        alice,
        {
            "type": "join",
            "topic": TOPIC,
            "broadcast": {"self": True, "ack": False},
            "presence": {"key": "k"},
        },
    )
    room = pending_of(alice).room
    assert room.options == Options(self_broadcast=True, ack=False, presence=True, presence_key="k")


def test_a_topic_over_255_bytes_is_an_invalid_topic() -> None:
    alice = signed_in(make_fanout(), ALICE)
    [error] = send(alice, {"type": "join", "topic": "case:" + "é" * 126, "ref": 1})
    assert error["code"] == "invalid_topic"


def test_a_refresh_decides_a_waiting_join_again_under_the_new_token() -> None:
    alice = signed_in(make_fanout(), ALICE)
    send(alice, {"type": "join", "topic": TOPIC, "ref": "j"})
    stale = pending_of(alice)
    send(alice, {"type": "refresh", "token": mint(ALICE[0], GRACE[1])})
    fresh = pending_of(alice)
    assert fresh.ref == "j" and not fresh.again
    assert fresh.admitted.check is not None
    assert '"TNT-GAMMA001"' in fresh.admitted.check.claims  # the new token's claims
    alice.checked(stale, stale.admitted, NOW)  # the old token's answer: ignored
    assert taken(alice) == [] and alice.rooms == {}
    alice.checked(fresh, topic_rules.refused(TOPIC, "check"), NOW)
    [error] = taken(alice)
    assert (error["code"], error["ref"]) == ("topic_not_allowed", "j")


def test_a_refresh_that_still_admits_keeps_the_room() -> None:
    fanout = make_fanout()
    alice, bob = signed_in(fanout, ALICE), signed_in(fanout, BOB)
    joined(alice)
    joined(bob)
    send(alice, {"type": "refresh", "token": mint(*ALICE)})
    again = pending_of(alice)
    assert again.again and again.ref is None
    alice.checked(again, again.admitted, NOW)
    assert taken(alice) == []
    send(bob, {"type": "broadcast", "topic": TOPIC, "event": "e", "payload": 1})
    assert [f["type"] for f in taken(alice)] == ["broadcast"]


def test_a_leave_while_the_room_is_checked_again_leaves_and_the_answer_is_ignored() -> None:
    alice = signed_in(make_fanout(), ALICE)
    joined(alice)
    send(alice, {"type": "refresh", "token": mint(ALICE[0], GRACE[1])})
    again = pending_of(alice)
    assert send(alice, {"type": "leave", "topic": TOPIC, "ref": 1}) == [
        {"type": "left", "topic": TOPIC, "ref": 1}
    ]
    alice.checked(again, topic_rules.refused(TOPIC, "check"), NOW)
    assert taken(alice) == [] and alice.rooms == {}
