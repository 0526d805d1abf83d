"""Rooms on the relay's own protocol (docs/protocol.md, *Rooms*): join, leave,
broadcast and presence against a real relay and PostgreSQL, as the portal's
policy file allows them (``case:{case_id}``: every action, once the rule's SQL
check finds the case under the user's RLS)."""

from typing import Any

import pytest
from websockets.asyncio.client import connect as ws_connect

from relay.client import RelayClient, RelayRequestError
from tests.relay.conftest import Connect
from tests.relay.phoenix import Phoenix
from tests.relay.phoenix import url as supabase_url
from tests.support import ALICE, BOB, CAROL, GRACE, WAIT, RelayProcess, mint

CASE = "case:CASE-AB000001"


async def next_of(client: RelayClient, kind: str) -> dict[str, Any]:
    """The next event of type ``kind``; fails on any other before it."""
    event = await client.next_event(WAIT)
    assert event["type"] == kind, event
    return event


async def quiet(client: RelayClient) -> list[dict[str, Any]]:
    """What the relay sent the client before answering a ping now: [] if nothing."""
    await client.ping(WAIT)
    return client.pending_events()


async def present(client: RelayClient, topic: str = CASE) -> dict[str, Any]:
    """The client's view of who is present, once its ping is answered; the events
    before the pong are taken (applied, not looked at)."""
    await quiet(client)
    return client.presence(topic)


# --- Joining -----------------------------------------------------------------------


async def test_a_join_allowed_by_the_rules_check_is_answered_joined(connect: Connect) -> None:
    alice = await connect(ALICE)
    reply = await alice.join(CASE)
    assert reply["type"] == "joined" and reply["topic"] == CASE
    assert "presence_state" not in reply  # it did not ask for presence
    assert alice.ready["limits"]["max_topics"] >= 1


async def test_grace_is_refused_by_the_sql_check_and_the_connection_carries_on(
    connect: Connect,
) -> None:
    grace = await connect(GRACE)
    with pytest.raises(RelayRequestError) as refused:
        await grace.join(CASE, presence=True)
    assert refused.value.code == "topic_not_allowed"
    with pytest.raises(RelayRequestError) as not_joined:
        await grace.track(CASE, {"name": "Grace"})
    assert not_joined.value.code == "not_joined"
    # A broadcast without ack is not awaited: its refusal arrives as an event.
    await grace.broadcast(CASE, "typing", {})
    [error] = await quiet(grace)
    assert (error["type"], error["code"]) == ("error", "not_joined")


@pytest.mark.parametrize("topic", ["room:lobby", "case", "case:A:B"])
async def test_a_topic_no_rule_matches_is_refused(connect: Connect, topic: str) -> None:
    alice = await connect(ALICE)
    with pytest.raises(RelayRequestError) as refused:
        await alice.join(topic)
    assert refused.value.code == "topic_not_allowed"


async def test_a_second_join_of_a_topic_is_refused_until_it_is_left(connect: Connect) -> None:
    alice = await connect(ALICE)
    await alice.join(CASE)
    with pytest.raises(RelayRequestError) as again:
        await alice.join(CASE)
    assert again.value.code == "already_joined"
    await alice.leave(CASE)
    with pytest.raises(RelayRequestError) as gone:
        await alice.leave(CASE)
    assert gone.value.code == "not_joined"
    assert (await alice.join(CASE))["type"] == "joined"


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "join"},
        {"type": "join", "topic": ""},
        {"type": "join", "topic": CASE, "presence": "yes"},
        {"type": "join", "topic": CASE, "broadcast": {"self": 1}},
        {"type": "broadcast", "topic": CASE, "event": "typing"},  # no payload
        {"type": "track", "topic": CASE, "payload": ["not", "an", "object"]},
    ],
)
async def test_malformed_room_frames_are_invalid_messages(
    connect: Connect, frame: dict[str, Any]
) -> None:
    alice = await connect(ALICE)
    with pytest.raises(RelayRequestError) as refused:
        await alice.request(frame, WAIT)
    assert refused.value.code == "invalid_message"


# --- Broadcast -----------------------------------------------------------------------


async def test_a_broadcast_reaches_the_others_and_the_sender_only_with_self(
    connect: Connect,
) -> None:
    alice, bob = await connect(ALICE), await connect(BOB)
    await alice.join(CASE, self_broadcast=True, ack=True)
    await bob.join(CASE)

    await alice.broadcast(CASE, "typing", {"name": "Alice"})  # acked: returns once sent on
    expected = {"type": "broadcast", "topic": CASE, "event": "typing", "payload": {"name": "Alice"}}
    assert await next_of(bob, "broadcast") == expected
    assert await next_of(alice, "broadcast") == expected  # self

    await bob.broadcast(CASE, "typing", {"name": "Bob"})  # no ack: nothing answers it
    assert (await next_of(alice, "broadcast"))["payload"] == {"name": "Bob"}
    assert await quiet(bob) == []  # not its own


async def test_broadcasts_past_the_members_rate_are_refused_rate_limited(
    relay_database: str,
) -> None:
    # A relay that lets frames through faster than a member may broadcast.
    process = RelayProcess(relay_database, RELAY_MAX_MESSAGES_PER_SECOND="1000").start()
    try:
        async with await RelayClient.connect(process.url, mint(*ALICE), timeout=WAIT) as alice:
            await alice.join(CASE, ack=True)
            with pytest.raises(RelayRequestError) as limited:
                for n in range(200):
                    await alice.broadcast(CASE, "cursor", {"n": n})
            assert limited.value.code == "rate_limited"
            await alice.ping(WAIT)  # refused, not closed
    finally:
        process.stop()


# --- Presence -----------------------------------------------------------------------


async def test_presence_state_at_the_join_then_diffs_for_tracks_and_untracks(
    connect: Connect,
) -> None:
    alice, bob = await connect(ALICE), await connect(BOB)
    joined = await alice.join(CASE, presence_key=ALICE[0])
    assert joined["presence_state"] == {}
    await alice.track(CASE, {"name": "Alice"})
    diff = await next_of(alice, "presence_diff")  # the tracker hears its own
    assert diff["topic"] == CASE and diff["leaves"] == {}
    [meta] = diff["joins"][ALICE[0]]["metas"]
    assert meta["name"] == "Alice" and meta["phx_ref"]

    joined = await bob.join(CASE, presence_key=BOB[0])
    assert joined["presence_state"] == {ALICE[0]: {"metas": [meta]}}
    await bob.track(CASE, {"name": "Bob"})
    assert set((await next_of(alice, "presence_diff"))["joins"]) == {BOB[0]}
    assert set(await present(bob)) == {ALICE[0], BOB[0]}

    await alice.untrack(CASE)
    leaves = (await next_of(bob, "presence_diff"))["leaves"]
    assert leaves == {ALICE[0]: {"metas": [meta]}}
    assert set(await present(bob)) == {BOB[0]}


async def test_a_member_without_presence_hears_no_diffs(connect: Connect) -> None:
    alice, carol = await connect(ALICE), await connect(CAROL)
    await carol.join(CASE)  # broadcasts only
    await alice.join(CASE, presence=True)
    await alice.track(CASE, {"name": "Alice"})
    await next_of(alice, "presence_diff")
    assert await quiet(carol) == []


async def test_leaving_or_disconnecting_ends_the_presence(connect: Connect) -> None:
    alice, bob, carol = await connect(ALICE), await connect(BOB), await connect(CAROL)
    await bob.join(CASE, presence=True)
    for who, client in (("alice", alice), ("carol", carol)):
        await client.join(CASE, presence_key=who)
        await client.track(CASE, {"name": who})
    assert set(await present(bob)) == {"alice", "carol"}

    await carol.leave(CASE)
    carol.pending_events()  # its own diff, from before
    assert set((await next_of(bob, "presence_diff"))["leaves"]) == {"carol"}
    await alice.close()  # the connection goes: so does its presence
    diff = await next_of(bob, "presence_diff")
    assert set(diff["leaves"]) == {"alice"}
    assert await present(bob) == {}
    # And a broadcast no longer reaches the one that left.
    await bob.broadcast(CASE, "typing", {})
    assert await quiet(carol) == []


async def test_an_expired_token_ends_the_connection_and_its_presence(connect: Connect) -> None:
    bob = await connect(BOB)
    await bob.join(CASE, presence=True)
    brief = await connect(token=mint(*ALICE, expires_in=2))
    await brief.join(CASE, presence_key="brief")
    await brief.track(CASE, {"name": "Alice"})
    assert set((await next_of(bob, "presence_diff"))["joins"]) == {"brief"}
    closed = await brief.wait_closed(2 * WAIT)
    assert closed.code == 4003
    assert set((await next_of(bob, "presence_diff"))["leaves"]) == {"brief"}


# --- Tokens ------------------------------------------------------------------------


async def test_a_refresh_decides_each_room_again_and_ends_the_refused(connect: Connect) -> None:
    alice, bob = await connect(ALICE), await connect(BOB)
    await bob.join(CASE, presence=True)
    await alice.join(CASE, presence_key="alice")
    await alice.track(CASE, {"name": "Alice"})
    await next_of(bob, "presence_diff")
    await quiet(alice)  # its own diff

    # The same claims: still in, still heard.
    await alice.refresh(mint(*ALICE))
    await alice.broadcast(CASE, "typing", {"n": 1})
    assert (await next_of(bob, "broadcast"))["payload"] == {"n": 1}

    # New claims (moved to Gamma): the rule's check runs again, and refuses.
    await alice.refresh(mint(ALICE[0], GRACE[1]))
    event = await next_of(alice, "left")
    assert event["topic"] == CASE and event["reason"] == "topic_not_allowed"
    assert set((await next_of(bob, "presence_diff"))["leaves"]) == {"alice"}
    with pytest.raises(RelayRequestError) as gone:
        await alice.track(CASE, {"name": "Alice"})
    assert gone.value.code == "not_joined"


async def test_a_leave_is_answered_left_and_nothing_more_arrives(connect: Connect) -> None:
    alice, bob = await connect(ALICE), await connect(BOB)
    for client in (alice, bob):
        await client.join(CASE)
    await alice.leave(CASE)
    await bob.broadcast(CASE, "typing", {})
    assert await quiet(bob) == []
    assert await quiet(alice) == []


# --- Both protocols ------------------------------------------------------------------


async def test_our_clients_and_supabases_meet_in_the_same_room(
    connect: Connect, relay: RelayProcess
) -> None:
    alice = await connect(ALICE)
    await alice.join(CASE, presence_key="alice")
    async with ws_connect(supabase_url(relay), open_timeout=WAIT) as ws:
        bob = Phoenix(ws, "1.0.0")
        topic = f"realtime:{CASE}"
        join_ref, reply = await bob.join(
            CASE, [], mint(*BOB), private=True, presence={"key": "bob", "enabled": True}
        )
        assert reply["status"] == "ok", reply

        await alice.broadcast(CASE, "typing", {"name": "Alice"})
        pushed = await bob.until("broadcast", topic)
        assert pushed["payload"] == {
            "type": "broadcast",
            "event": "typing",
            "payload": {"name": "Alice"},
        }

        track = {"type": "presence", "event": "track", "payload": {"name": "Bob"}}
        ref = await bob.push(topic, "presence", track, join_ref)
        assert (await bob.reply(ref))["status"] == "ok"
        diff = await next_of(alice, "presence_diff")
        assert [meta["name"] for meta in diff["joins"]["bob"]["metas"]] == ["Bob"]
    # Its socket closed: it left.
    assert set((await next_of(alice, "presence_diff"))["leaves"]) == {"bob"}
