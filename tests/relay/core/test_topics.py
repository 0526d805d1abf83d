"""Topics: membership and broadcast (Supabase's section 9), fed the time."""

import itertools
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from relay.core.errors import ClientError, ErrorCode
from relay.core.peers import Broadcast
from relay.core.topics import Options, Topics, payload_size

SELF = Options(self_broadcast=True)


def make(**limits: float) -> Topics[str]:
    keys = itertools.count(1)
    return Topics(node="here", new_key=lambda: f"key-{next(keys)}", **limits)  # type: ignore[arg-type]


@contextmanager
def refused(code: ErrorCode) -> Iterator[pytest.ExceptionInfo[ClientError]]:
    with pytest.raises(ClientError) as info:
        yield info
    assert info.value.code == code


def test_join_and_leave() -> None:
    topics = make()
    a = topics.join("room", "a", Options(presence_key="alice"), 0)
    assert (a.topic, a.presence_key, a.presence) == ("room", "alice", False)
    b = topics.join("room", "b", Options(presence=True), 0)
    assert (b.presence_key, b.presence) == ("key-1", True)  # the relay chose the key
    topics.join("hall", "a", Options(), 0)
    assert topics.members("room") == ["a", "b"]
    assert topics.presence_members("room") == ["b"]
    assert topics.topics_of("a") == ["hall", "room"]
    assert topics.topics() == ["room", "hall"]
    assert topics.membership("room", "a") is a

    assert topics.leave("room", "a") is a
    assert topics.leave("room", "a") is None  # a second leave: nothing
    assert topics.leave("nowhere", "a") is None
    assert topics.members("room") == ["b"]
    assert [m.topic for m in topics.leave_all("b")] == ["room"]
    assert topics.topics() == ["hall"]
    assert topics.leave_all("b") == []
    assert topics.members("room") == []
    assert topics.membership("room", "b") is None
    topics.leave_all("a")
    assert topics.topics() == []
    assert topics.topics_of("a") == []


def test_a_second_join_replaces_the_options() -> None:
    topics = make()
    topics.join("room", "a", Options(), 0)
    topics.join("room", "b", Options(), 0)
    again = topics.join("room", "a", SELF, 0)
    assert topics.membership("room", "a") is again
    assert topics.members("room") == ["a", "b"]
    assert topics.broadcast("room", "a", "e", {}, 0) == ["a", "b"]


@pytest.mark.parametrize("topic", ["", "x" * 256, "é" * 128])
def test_topic_names(topic: str) -> None:
    with refused(ErrorCode.INVALID_TOPIC):
        make().join(topic, "a", Options(), 0)
    make().join(topic[:-1] or "x", "a", Options(), 0)  # 255 bytes of UTF-8 at most


def test_broadcast_honours_self() -> None:
    topics = make()
    topics.join("room", "a", Options(), 0)
    topics.join("room", "b", SELF, 0)
    topics.join("room", "c", Options(), 0)
    topics.join("hall", "d", Options(), 0)
    assert topics.broadcast("room", "a", "cursor", {"x": 1}, 0) == ["b", "c"]
    assert topics.broadcast("room", "b", "cursor", {"x": 1}, 0) == ["a", "b", "c"]
    assert topics.broadcast("room", None, "cursor", {"x": 1}, 0) == ["a", "b", "c"]
    assert topics.broadcast("empty", None, "cursor", {"x": 1}, 0) == []
    topics.leave("room", "c")
    assert topics.broadcast("room", "a", "cursor", b"\x00raw", 0) == ["b"]


def test_broadcast_from_a_stranger() -> None:
    topics = make()
    topics.join("room", "a", Options(), 0)
    topics.join("hall", "b", Options(), 0)
    with refused(ErrorCode.NOT_JOINED):
        topics.broadcast("room", "b", "e", {}, 0)
    with refused(ErrorCode.NOT_JOINED):
        topics.broadcast("nowhere", "b", "e", {}, 0)


@pytest.mark.parametrize("event", ["x" * 256, 7, None])
def test_broadcast_event_names(event: object) -> None:
    topics = make()
    topics.join("room", "a", Options(), 0)
    with refused(ErrorCode.INVALID_MESSAGE):
        topics.broadcast("room", "a", event, {}, 0)  # type: ignore[arg-type]
    assert topics.broadcast("room", "a", "", {}, 0) == []  # realtime-js may send ""
    assert topics.broadcast("room", "a", "x" * 255, {}, 0) == []


def test_broadcast_payload_size() -> None:
    topics = make(max_payload_bytes=10)
    topics.join("room", "a", SELF, 0)
    assert topics.broadcast("room", "a", "e", {"k": "12"}, 0) == ["a"]  # {"k":"12"}: 10 bytes
    with refused(ErrorCode.PAYLOAD_TOO_LARGE) as info:
        topics.broadcast("room", "a", "e", {"k": "123"}, 0)
    assert info.value.message == "a broadcast's payload is at most 10 bytes, not 11"
    assert topics.broadcast("room", "a", "e", b"x" * 10, 0) == ["a"]
    with refused(ErrorCode.PAYLOAD_TOO_LARGE):
        topics.broadcast("room", "a", "e", b"x" * 11, 0)
    with refused(ErrorCode.PAYLOAD_TOO_LARGE):  # the relay's own are held to it too
        topics.broadcast("room", None, "e", b"x" * 11, 0)


def test_payload_size() -> None:
    assert payload_size({"a": [1, "é"]}) == len('{"a":[1,"é"]}'.encode())
    assert payload_size(b"\x01\x02") == 2
    assert payload_size(None) == 4
    with pytest.raises(ValueError, match="not a JSON value"):
        payload_size({"a": object()})


def test_broadcast_rate_per_member() -> None:
    topics = make(broadcasts_per_second=2.0, broadcast_burst=3)
    topics.join("room", "a", Options(), 0)
    topics.join("room", "b", Options(), 0)
    for _ in range(3):
        topics.broadcast("room", "a", "e", {}, 10.0)
    with refused(ErrorCode.RATE_LIMITED) as info:
        topics.broadcast("room", "a", "e", {}, 10.0)
    assert info.value.message == "more than 2 broadcasts per second"
    assert topics.broadcast("room", "b", "e", {}, 10.0) == ["a"]  # b has its own bucket
    assert topics.broadcast("room", None, "e", {}, 10.0) == ["a", "b"]  # the relay has none
    topics.broadcast("room", "a", "e", {}, 10.5)  # half a second: one more
    with refused(ErrorCode.RATE_LIMITED):
        topics.broadcast("room", "a", "e", {}, 10.5)
    # A refused broadcast spends nothing: b has 3 tokens again (2 left, one refilled).
    with refused(ErrorCode.PAYLOAD_TOO_LARGE):
        topics.broadcast("room", "b", "e", b"x" * 100_000, 10.5)
    for _ in range(3):
        topics.broadcast("room", "b", "e", {}, 10.5)
    with refused(ErrorCode.RATE_LIMITED):
        topics.broadcast("room", "b", "e", {}, 10.5)


def test_rejoining_refills_the_bucket() -> None:
    topics = make(broadcasts_per_second=1.0, broadcast_burst=1)
    topics.join("room", "a", Options(), 0)
    topics.broadcast("room", "a", "e", {}, 0)
    topics.join("room", "a", Options(), 0)
    topics.broadcast("room", "a", "e", {}, 0)


def test_broadcasts_from_other_relays() -> None:
    topics = make()
    topics.join("room", "a", Options(), 0)
    topics.join("room", "b", SELF, 0)
    assert topics.apply_remote(Broadcast("room", "e", {}, "there")) == ["a", "b"]
    assert topics.apply_remote(Broadcast("hall", "e", {}, "there")) == []
    assert topics.apply_remote(Broadcast("room", "e", {}, "here")) == []  # an echo of ours


def test_a_random_node_and_keys() -> None:
    assert Topics[str]().node != Topics[str]().node
    assert len(Topics[str]().node) == 12
    topics = Topics[str]()
    keys = {topics.join("room", member, Options(), 0).presence_key for member in "ab"}
    assert len(keys) == 2
    assert all(uuid.UUID(key).version == 4 for key in keys)
