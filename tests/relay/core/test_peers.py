"""The events relays share: encoded and decoded, byte for byte."""

import pytest

from relay.core import peers
from relay.core.peers import (
    Broadcast,
    Event,
    Heartbeat,
    NodeGone,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
)

JOIN = PresenceJoin("room", "alice", {"v": 1, "phx_ref": "n1-1"}, "n1")
EVENTS: list[Event] = [
    Broadcast("room", "cursor", {"x": 1}, "n1"),
    Broadcast("room", "blob", b"\x00\xff", "n1"),
    JOIN,
    PresenceLeave("room", "alice", "n1-1", "n1"),
    PresenceSync("n1", (JOIN,)),
    PresenceSync("n1", (), reply=True),
    Heartbeat("n1"),
    NodeGone("n1"),
]


def test_encode() -> None:
    assert peers.encode(EVENTS) == (
        b'[{"type":"broadcast","topic":"room","event":"cursor","payload":{"x":1},"binary":false,'
        b'"node":"n1"},'
        b'{"type":"broadcast","topic":"room","event":"blob","payload":"AP8=","binary":true,'
        b'"node":"n1"},'
        b'{"type":"join","topic":"room","key":"alice","meta":{"v":1,"phx_ref":"n1-1"},"node":"n1"},'
        b'{"type":"leave","topic":"room","key":"alice","ref":"n1-1","node":"n1"},'
        b'{"type":"sync","node":"n1","joins":[{"topic":"room","key":"alice",'
        b'"meta":{"v":1,"phx_ref":"n1-1"}}],"reply":false},'
        b'{"type":"sync","node":"n1","joins":[],"reply":true},'
        b'{"type":"heartbeat","node":"n1"},'
        b'{"type":"gone","node":"n1"}]'
    )


def test_round_trip() -> None:
    assert peers.decode(peers.encode(EVENTS)) == EVENTS
    assert peers.decode(peers.encode(EVENTS).decode()) == EVENTS
    assert peers.decode(b"[]") == []


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"nope", "not JSON"),
        (b"{}", "not a list of events"),
        (b"[1]", "an event is not an object"),
        (b'[{"type":"heartbeat"}]', "node is not a string"),
        (b'[{"type":"jump","node":"n","topic":"t"}]', "unknown event type 'jump'"),
        (b'[{"type":"broadcast","node":"n","event":"e","payload":1}]', "topic is not a string"),
        (b'[{"type":"broadcast","node":"n","topic":"t","event":"e"}]', "without payload"),
        (
            b'[{"type":"broadcast","node":"n","topic":"t","event":"e","payload":1,"binary":true}]',
            "not base64 text",
        ),
        (
            b'[{"type":"broadcast","node":"n","topic":"t","event":"e","payload":"!","binary":true}]',
            "not base64 text",
        ),
        (b'[{"type":"join","node":"n","topic":"t","key":"k","meta":{}}]', "with a phx_ref"),
        (b'[{"type":"join","node":"n","topic":"t","meta":{"phx_ref":"r"}}]', "key is not"),
        (b'[{"type":"leave","node":"n","topic":"t","key":"k"}]', "ref is not a string"),
        (b'[{"type":"sync","node":"n","reply":false}]', "joins are not a list"),
        (b'[{"type":"sync","node":"n","joins":[]}]', "reply not a boolean"),
        (b'[{"type":"sync","node":"n","joins":[1],"reply":false}]', "a join is not an object"),
    ],
)
def test_what_is_not_a_message(data: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        peers.decode(data)


def test_node_ids() -> None:
    ids = {peers.new_node_id() for _ in range(100)}
    assert len(ids) == 100
    assert all(len(node) == 12 and "-" not in node for node in ids)
