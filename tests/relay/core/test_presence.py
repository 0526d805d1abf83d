"""Presence (Supabase's section 10): states, diffs and their recipients, byte for byte."""

import itertools
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relay.core import peers
from relay.core.errors import ClientError, ErrorCode
from relay.core.peers import (
    Heartbeat,
    NodeGone,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
)
from relay.core.presence import Presence, PresenceDiff, PresenceUpdate
from relay.core.topics import Options, Topics

ON = Options(presence=True)


def make(node: str = "n1", **limits: float) -> Presence[str]:
    keys = itertools.count(1)
    topics = Topics[str](node=node, new_key=lambda: f"key-{next(keys)}")
    return Presence(topics, **limits)  # type: ignore[arg-type]


def keyed(key: str, presence: bool = True) -> Options:
    return Options(presence=presence, presence_key=key)


def wire(value: object) -> bytes:
    return orjson.dumps(value)


@contextmanager
def refused(code: ErrorCode) -> Iterator[pytest.ExceptionInfo[ClientError]]:
    with pytest.raises(ClientError) as info:
        yield info
    assert info.value.code == code


def only(update: PresenceUpdate[str]) -> PresenceDiff[str]:
    [diff] = update.diffs
    return diff


def test_track_state_and_diffs_as_the_clients_read_them() -> None:
    presence = make()
    joined = presence.join("room", "a", keyed("alice"), 0)
    assert (joined.state, joined.update) == ({}, PresenceUpdate())
    assert wire(joined.state) == b"{}"  # presence_state even when empty: sync needs it
    presence.join("room", "b", keyed("bob"), 0)
    presence.join("room", "c", Options(), 0)  # no presence: no state, no diffs
    assert presence.join("room", "d", Options(), 0).state is None

    update = presence.track("room", "a", {"status": "online"}, 0)
    diff = only(update)
    assert (diff.topic, diff.recipients) == ("room", ["a", "b"])  # the tracker included
    assert wire(diff.payload()) == (
        b'{"joins":{"alice":{"metas":[{"status":"online","phx_ref":"n1-1"}]}},"leaves":{}}'
    )
    assert update.events == [PresenceJoin("room", "alice", diff.joins["alice"][0], "n1")]

    # The same payload again: nothing.
    assert presence.track("room", "a", {"status": "online"}, 1) == PresenceUpdate()

    # Another payload: the old meta leaves, the new one joins with phx_ref_prev.
    update = presence.track("room", "a", {"status": "away"}, 2)
    assert wire(only(update).payload()) == (
        b'{"joins":{"alice":{"metas":[{"status":"away","phx_ref":"n1-2","phx_ref_prev":"n1-1"}]}},'
        b'"leaves":{"alice":{"metas":[{"status":"online","phx_ref":"n1-1"}]}}}'
    )
    assert update.events == [
        PresenceLeave("room", "alice", "n1-1", "n1"),
        PresenceJoin(
            "room", "alice", {"status": "away", "phx_ref": "n1-2", "phx_ref_prev": "n1-1"}, "n1"
        ),
    ]

    # Tracking without presence.enabled: visible to others, and diffs from now on
    # (Supabase's track turns presence on); under a key the relay chose.
    update = presence.track("room", "c", {}, 3)
    assert only(update).recipients == ["a", "b", "c"]
    assert wire(only(update).payload()) == (
        b'{"joins":{"key-1":{"metas":[{"phx_ref":"n1-3"}]}},"leaves":{}}'
    )
    state = presence.join("room", "e", ON, 4).state
    assert wire(state) == (
        b'{"alice":{"metas":[{"status":"away","phx_ref":"n1-2","phx_ref_prev":"n1-1"}]},'
        b'"key-1":{"metas":[{"phx_ref":"n1-3"}]}}'
    )
    assert state == presence.state("room")
    assert presence.state("elsewhere") == {}
    assert presence.count("room") == 2


def test_a_key_holds_a_meta_per_member() -> None:
    presence = make()
    presence.join("room", "phone", keyed("alice"), 0)
    presence.join("room", "laptop", keyed("alice"), 0)
    presence.track("room", "phone", {"on": "phone"}, 0)
    presence.track("room", "laptop", {"on": "laptop"}, 0)
    assert wire(presence.state("room")) == (
        b'{"alice":{"metas":[{"on":"phone","phx_ref":"n1-1"},{"on":"laptop","phx_ref":"n1-2"}]}}'
    )
    update = presence.untrack("room", "phone")
    assert only(update).recipients == ["phone", "laptop"]  # the untracker included
    assert wire(only(update).payload()) == (
        b'{"joins":{},"leaves":{"alice":{"metas":[{"on":"phone","phx_ref":"n1-1"}]}}}'
    )
    assert update.events == [PresenceLeave("room", "alice", "n1-1", "n1")]
    assert wire(presence.state("room")) == b'{"alice":{"metas":[{"on":"laptop","phx_ref":"n1-2"}]}}'
    assert presence.untrack("room", "phone") == PresenceUpdate()  # nothing tracked
    # Tracked again after an untrack: a fresh meta, no phx_ref_prev.
    assert presence.track("room", "phone", {"on": "phone"}, 0).events == [
        PresenceJoin("room", "alice", {"on": "phone", "phx_ref": "n1-3"}, "n1")
    ]


def test_leave_and_disconnect() -> None:
    presence = make()
    for member in "abc":
        presence.join("room", member, keyed(member), 0)
        presence.track("room", member, {"m": member}, 0)
    presence.join("hall", "a", Options(), 0)  # no presence there, and nothing tracked
    presence.join("lobby", "a", keyed("a"), 0)
    presence.join("lobby", "b", keyed("b"), 0)
    presence.track("lobby", "a", {}, 0)

    update = presence.leave("room", "b")
    assert only(update).recipients == ["a", "c"]  # the leaver gets nothing
    assert wire(only(update).payload()) == (
        b'{"joins":{},"leaves":{"b":{"metas":[{"m":"b","phx_ref":"n1-2"}]}}}'
    )
    assert update.events == [PresenceLeave("room", "b", "n1-2", "n1")]
    assert presence.leave("room", "b") == PresenceUpdate()
    with refused(ErrorCode.NOT_JOINED):
        presence.track("room", "b", {}, 0)

    update = presence.leave_all("a")  # a's socket is gone
    assert [(d.topic, d.recipients) for d in update.diffs] == [("lobby", ["b"]), ("room", ["c"])]
    assert wire(update.diffs[1].payload()) == (
        b'{"joins":{},"leaves":{"a":{"metas":[{"m":"a","phx_ref":"n1-1"}]}}}'
    )
    assert update.events == [
        PresenceLeave("lobby", "a", "n1-4", "n1"),
        PresenceLeave("room", "a", "n1-1", "n1"),
    ]
    assert presence.topics.topics_of("a") == []
    assert list(presence.state("room")) == ["c"]
    assert presence.state("lobby") == {}
    # The last member with presence leaves: no diff to push, the event still goes out.
    update = presence.leave("room", "c")
    assert (update.diffs, update.events) == ([], [PresenceLeave("room", "c", "n1-3", "n1")])


def test_joining_again_leaves_first() -> None:
    presence = make()
    presence.join("room", "a", keyed("a"), 0)
    presence.join("room", "b", keyed("b"), 0)
    presence.track("room", "a", {"v": 1}, 0)
    joined = presence.join("room", "a", keyed("a2"), 1)
    assert joined.membership.presence_key == "a2"
    assert joined.state == {}
    assert only(joined.update).recipients == ["b"]
    assert joined.update.events == [PresenceLeave("room", "a", "n1-1", "n1")]


def test_the_relay_owns_phx_ref() -> None:
    presence = make()
    presence.join("room", "a", ON, 0)
    update = presence.track("room", "a", {"phx_ref": "forged", "phx_ref_prev": "x", "v": 1}, 0)
    assert only(update).joins == {"key-1": [{"v": 1, "phx_ref": "n1-1"}]}
    # Only the refs differed: the same payload.
    assert presence.track("room", "a", {"v": 1, "phx_ref": "other"}, 0) == PresenceUpdate()


@pytest.mark.parametrize("payload", [[1], "online", None, 3])
def test_a_track_payload_is_an_object(payload: object) -> None:
    presence = make()
    presence.join("room", "a", ON, 0)
    with refused(ErrorCode.INVALID_MESSAGE) as info:
        presence.track("room", "a", payload, 0)
    assert info.value.message == "a presence track payload is an object"


def test_limits() -> None:
    presence = make(max_metas_per_topic=2, max_tracks=2, track_window=10.0)
    with refused(ErrorCode.NOT_JOINED):
        presence.track("room", "a", {}, 0)
    for member in "abc":
        presence.join("room", member, keyed(member), 0)

    presence.track("room", "a", {"k": "12"}, 0)
    presence.track("room", "b", {}, 0)
    with refused(ErrorCode.TOO_MANY_PRESENCES) as info:
        presence.track("room", "c", {}, 0)
    assert info.value.message == "'room' holds 2 presences, the most it may"
    assert presence.count("room") == 2

    # A replacement adds no meta: allowed at the limit, until a's 2 tracks are spent.
    presence.track("room", "a", {"k": "34"}, 0)
    with refused(ErrorCode.RATE_LIMITED) as info:
        presence.track("room", "a", {"k": "56"}, 0)
    assert info.value.message == "more than 2 presence tracks per 10 s"
    assert presence.track("room", "a", {"k": "34"}, 0) == PresenceUpdate()  # a no-op is free
    assert presence.state("room")["a"]["metas"] == [
        {"k": "34", "phx_ref": "n1-3", "phx_ref_prev": "n1-1"}
    ]  # the refused track changed nothing
    presence.track("room", "a", {"k": "56"}, 5.0)  # 2 per 10 s: one more after 5 s

    # A leave frees a place, and forgets the member's bucket.
    presence.leave("room", "b")
    presence.track("room", "c", {}, 5.0)


def test_meta_size_is_of_its_json() -> None:
    presence = make(max_meta_bytes=11)
    presence.join("room", "a", ON, 0)
    presence.track("room", "a", {"k": "123"}, 0)  # {"k":"123"}: 11 bytes
    with refused(ErrorCode.PAYLOAD_TOO_LARGE) as info:
        presence.track("room", "a", {"k": "1234"}, 0)
    assert info.value.message == "a presence payload is at most 11 bytes, not 12"


# --- Other relays --------------------------------------------------------------


def relays() -> tuple[Presence[str], Presence[str]]:
    """Two relays, n1 and n2, each with members in "room"."""
    one, two = make("n1"), make("n2")
    one.join("room", "a", keyed("alice"), 0)
    two.join("room", "x", keyed("xavier"), 0)
    two.join("room", "y", Options(), 0)
    return one, two


def test_another_relays_presence() -> None:
    one, two = relays()
    events = one.track("room", "a", {"v": 1}, 0).events
    update = two.apply_remote(events, 1.0)
    assert only(update).recipients == ["x"]
    assert wire(only(update).payload()) == (
        b'{"joins":{"alice":{"metas":[{"v":1,"phx_ref":"n1-1"}]}},"leaves":{}}'
    )
    # n1 is new to n2: n2 sends its own metas, and asks for n1's (below).
    assert (update.events, update.new_nodes) == ([PresenceSync("n2", (), reply=True)], ["n1"])
    assert two.state("room") == one.state("room")

    # A replacement is one diff there too, the leave and the join together.
    events = one.track("room", "a", {"v": 2}, 2.0).events
    update = two.apply_remote(events, 2.0)
    assert wire(only(update).payload()) == (
        b'{"joins":{"alice":{"metas":[{"v":2,"phx_ref":"n1-2","phx_ref_prev":"n1-1"}]}},'
        b'"leaves":{"alice":{"metas":[{"v":1,"phx_ref":"n1-1"}]}}}'
    )
    assert (update.events, update.new_nodes) == ([], [])
    assert two.apply_remote(events, 2.0) == PresenceUpdate()  # applied twice: nothing

    # Both relays' metas under one key, in the order each relay learnt them.
    two.join("room", "z", keyed("alice"), 3.0)
    one.apply_remote(two.track("room", "z", {"v": 3}, 3.0).events, 3.0)
    assert wire(two.state("room")) == (
        b'{"alice":{"metas":[{"v":2,"phx_ref":"n1-2","phx_ref_prev":"n1-1"},'
        b'{"v":3,"phx_ref":"n2-1"}]}}'
    )
    assert one.state("room") == two.state("room")
    assert one.count("room") == two.count("room") == 2

    update = two.apply_remote(one.leave("room", "a").events, 4.0)
    assert only(update).leaves == {"alice": [{"v": 2, "phx_ref": "n1-2", "phx_ref_prev": "n1-1"}]}
    assert list(two.state("room")["alice"]["metas"]) == [{"v": 3, "phx_ref": "n2-1"}]


def test_what_a_relay_ignores() -> None:
    one, two = relays()
    events = two.track("room", "x", {}, 0).events
    assert two.apply_remote(events, 0) == PresenceUpdate()  # its own, echoed
    one.apply_remote(events, 0)
    # A node may not remove another's meta; an unknown meta's leave is nothing.
    leave = PresenceLeave("room", "xavier", "n2-1", "n3")
    assert one.apply_remote([leave, PresenceLeave("room", "k", "n2-9", "n2")], 0).diffs == []
    assert one.count("room") == 1


def test_relays_that_meet_exchange_their_presence() -> None:
    one, two = relays()
    one.track("room", "a", {"v": 1}, 0)
    two.track("room", "x", {"v": 2}, 0)
    # Each update's events go to the other relay, until there are none.
    update = two.apply_remote([Heartbeat("n1")], 1.0)
    messages = [("n2", update.events)]
    rounds = 0
    while messages:
        sender, events = messages.pop(0)
        receiver = one if sender == "n2" else two
        events = receiver.apply_remote(events, 1.0).events
        if events:
            messages.append((receiver.node, events))
        rounds += 1
    assert rounds == 3  # two's sync asks; one's answers and asks; two's answers
    assert one.state("room") == two.state("room")
    assert one.count("room") == 2


def test_a_silent_relay_expires() -> None:
    one, two = relays()
    update = two.apply_remote(one.track("room", "a", {}, 0).events, 100.0)
    assert update.new_nodes == ["n1"]
    assert two.expire(115.0) == PresenceUpdate()  # 15 s: not yet
    assert two.apply_remote([Heartbeat("n1")], 110.0) == PresenceUpdate()
    assert two.expire(125.0) == PresenceUpdate()
    update = two.expire(125.5)
    assert only(update).leaves == {"alice": [{"phx_ref": "n1-1"}]}
    assert (update.events, two.state("room")) == ([], {})
    assert two.expire(1000.0) == PresenceUpdate()
    # Heard again: a new node. Its metas are gone here: ask for them (and it may
    # have expired this relay's too: send them).
    update = two.apply_remote([Heartbeat("n1")], 1000.0)
    assert (update.events, update.new_nodes) == ([PresenceSync("n2", (), reply=True)], ["n1"])


def test_a_relay_that_stops() -> None:
    one, two = relays()
    two.apply_remote(one.track("room", "a", {}, 0).events, 0)
    update = two.apply_remote([NodeGone("n1")], 1.0)
    assert only(update).leaves == {"alice": [{"phx_ref": "n1-1"}]}
    assert (update.events, update.new_nodes) == ([], [])
    assert two.expire(1000.0) == PresenceUpdate()  # forgotten: nothing left to expire
    # A node heard of only as it stops is not new: nobody to ask for metas.
    assert two.apply_remote([Heartbeat("n3"), NodeGone("n3")], 1.0) == PresenceUpdate()
    assert two.apply_remote([NodeGone("n4")], 1.0) == PresenceUpdate()


def test_sync_replaces_a_nodes_metas() -> None:
    one, two = relays()
    one.join("hall", "b", keyed("bea"), 0)
    one.track("room", "a", {"v": 1}, 0)
    sync = one.sync()
    assert sync == PresenceSync(
        "n1", (PresenceJoin("room", "alice", {"v": 1, "phx_ref": "n1-1"}, "n1"),)
    )
    two.apply_remote([sync], 0)
    # two misses a replacement and a new track; the next sync puts it right.
    one.track("room", "a", {"v": 2}, 0)
    one.track("hall", "b", {}, 0)
    two.join("hall", "h", ON, 0)
    update = two.apply_remote([one.sync()], 1.0)
    assert [wire(d.payload()) for d in update.diffs] == [
        b'{"joins":{"alice":{"metas":[{"v":2,"phx_ref":"n1-2","phx_ref_prev":"n1-1"}]}},'
        b'"leaves":{"alice":{"metas":[{"v":1,"phx_ref":"n1-1"}]}}}',
        b'{"joins":{"bea":{"metas":[{"phx_ref":"n1-3"}]}},"leaves":{}}',
    ]
    assert two.state("room") == one.state("room")
    assert two.state("hall") == one.state("hall")
    assert two.apply_remote([one.sync()], 2.0) == PresenceUpdate()
    # A sync that asks for a reply gets this relay's.
    two.track("hall", "h", {}, 3.0)
    assert two.apply_remote([one.sync(reply=True)], 3.0).events == [
        PresenceSync("n2", (PresenceJoin("hall", "key-2", {"phx_ref": "n2-1"}, "n2"),))
    ]


# --- Properties ----------------------------------------------------------------

# m*: members on relay n1, r*: on relay n2. Each relay has a watcher with presence.
MEMBERS = ["m0", "m1", "m2", "r0", "r1"]
operation = st.tuples(
    st.sampled_from(["join", "track", "untrack", "leave", "gone"]),
    st.sampled_from(MEMBERS),
    st.sampled_from(["", "k0", "k1"]),  # the key of a join; "" joins without presence
    st.sampled_from([{}, {"v": 1}, {"v": 2}]),  # the payload of a track
)
Client = dict[str, list[dict[str, Any]]]


def client_sync(state: Client, diff: dict[str, Any]) -> None:
    """What realtime-js does with a presence_diff (Presence.syncDiff): joins, then leaves by ref."""
    for key, entry in diff["joins"].items():
        current = state.setdefault(key, [])
        refs = {meta["phx_ref"] for meta in current}
        current += [meta for meta in entry["metas"] if meta["phx_ref"] not in refs]
    for key, entry in diff["leaves"].items():
        if key not in state:
            continue
        refs = {meta["phx_ref"] for meta in entry["metas"]}
        state[key] = [meta for meta in state[key] if meta["phx_ref"] not in refs]
        if not state[key]:
            del state[key]


def as_client(state: object) -> Client:
    """A state through JSON, as a client holds it: key -> metas."""
    decoded = orjson.loads(orjson.dumps(state))
    return {key: entry["metas"] for key, entry in decoded.items()}


@settings(max_examples=300, deadline=None)
@given(st.lists(operation, max_size=40))
def test_clients_and_relays_agree(operations: list[tuple[str, str, str, dict[str, int]]]) -> None:
    """Whatever members do on two relays that pass each other their events
    (through ``peers.encode``), a watcher on each, building its state from
    presence_state and the diffs as realtime-js does, ends with its relay's
    state, the same on both relays; and every meta has its own phx_ref."""
    relays = {"n1": make("n1", max_tracks=100), "n2": make("n2", max_tracks=100)}
    watchers: dict[str, Client] = {}
    for node, relay in relays.items():
        watchers[node] = as_client(relay.join("room", f"w-{node}", ON, 0).state)
    refs: set[str] = set()

    def push(node: str, update: PresenceUpdate[str]) -> None:
        """Deliver an update of relay ``node``, and the answers it causes."""
        queue = [(node, update)]
        while queue:
            node, update = queue.pop(0)
            for diff in update.diffs:
                assert f"w-{node}" in diff.recipients
                client_sync(watchers[node], orjson.loads(orjson.dumps(diff.payload())))
            for event in update.events:
                if isinstance(event, PresenceJoin):
                    assert event.meta["phx_ref"] not in refs
                    refs.add(event.meta["phx_ref"])
            if update.events:
                other = "n2" if node == "n1" else "n1"
                decoded = peers.decode(peers.encode(update.events))
                events = [event for event in decoded if not isinstance(event, peers.Broadcast)]
                assert len(events) == len(decoded)
                queue.append((other, relays[other].apply_remote(events, 0)))

    for action, member, key, payload in operations:
        node = "n1" if member.startswith("m") else "n2"
        relay = relays[node]
        if action == "join":
            push(node, relay.join("room", member, keyed(key, presence=bool(key)), 0).update)
        elif action == "track":
            if relay.topics.membership("room", member) is None:  # joins first, without presence
                push(node, relay.join("room", member, keyed(key, presence=False), 0).update)
            push(node, relay.track("room", member, payload, 0))
        elif action == "untrack":
            push(node, relay.untrack("room", member))
        elif action == "leave":
            push(node, relay.leave("room", member))
        elif action == "gone":
            push(node, relay.leave_all(member))
        for node, relay in relays.items():
            assert watchers[node] == as_client(relay.state("room"))
        assert as_client(relays["n1"].state("room")) == as_client(relays["n2"].state("room"))
    metas = [meta for entry in relays["n1"].state("room").values() for meta in entry["metas"]]
    assert len({meta["phx_ref"] for meta in metas}) == len(metas) == relays["n2"].count("room")
