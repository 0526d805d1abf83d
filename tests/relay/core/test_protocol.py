"""Frames in and out, byte for byte, without a socket."""

import orjson
import pytest

from relay.core import protocol
from relay.core.errors import CloseCode, ErrorCode


def test_requests() -> None:
    assert protocol.decode('{"type":"auth","token":"t","ref":"1"}') == protocol.Auth("1", "t")
    assert protocol.decode('{"type":"ping"}') == protocol.Ping(None)
    assert protocol.decode('{"type":"unsubscribe","id":"s1","ref":3}') == protocol.Unsubscribe(
        3, "s1"
    )
    assert protocol.decode('{"type":"subscribe","table":"t"}') == protocol.Subscribe(
        None, "t", frozenset({"INSERT", "UPDATE", "DELETE"}), None, None, None
    )
    subscribe = protocol.decode(
        '{"type":"subscribe","table":"t","events":["insert","UPDATE"],"select":["a","a","b"],'
        '"filter":"a=eq.1","since":"e:1"}'
    )
    assert subscribe == protocol.Subscribe(
        None, "t", frozenset({"INSERT", "UPDATE"}), ("a", "b"), "a=eq.1", "e:1"
    )


def test_room_requests() -> None:
    assert protocol.decode('{"type":"join","topic":"case:1","ref":1}') == protocol.Join(
        1, "case:1", False, False, False, ""
    )
    assert protocol.decode(
        '{"type":"join","topic":"t","broadcast":{"self":true,"ack":true},"presence":{}}'
    ) == protocol.Join(None, "t", True, True, True, "")
    assert protocol.decode('{"type":"join","topic":"t","presence":{"key":"k"}}') == protocol.Join(
        None, "t", False, False, True, "k"
    )
    assert protocol.decode('{"type":"leave","topic":"t"}') == protocol.Leave(None, "t")
    assert protocol.decode(
        '{"type":"broadcast","topic":"t","event":"e","payload":null}'
    ) == protocol.Broadcast(None, "t", "e", None)
    assert protocol.decode('{"type":"track","topic":"t","payload":{"name":"A"}}') == protocol.Track(
        None, "t", {"name": "A"}
    )
    assert protocol.decode('{"type":"untrack","topic":"t"}') == protocol.Untrack(None, "t")


def test_room_frames() -> None:
    assert orjson.loads(protocol.joined(1, "t", None)) == {"type": "joined", "topic": "t", "ref": 1}
    assert orjson.loads(protocol.joined(None, "t", {})) == {
        "type": "joined",
        "topic": "t",
        "presence_state": {},
    }
    assert orjson.loads(protocol.left(2, "t")) == {"type": "left", "topic": "t", "ref": 2}
    assert orjson.loads(protocol.left(None, "t", ErrorCode.TOPIC_NOT_ALLOWED, "no")) == {
        "type": "left",
        "topic": "t",
        "reason": "topic_not_allowed",
        "message": "no",
    }
    assert protocol.broadcast("t", "e", [1]) == (
        b'{"type":"broadcast","topic":"t","event":"e","payload":[1]}'
    )
    assert protocol.presence_diff("t", {"joins": {}, "leaves": {}}) == (
        b'{"type":"presence_diff","topic":"t","joins":{},"leaves":{}}'
    )
    assert orjson.loads(protocol.room_reply("tracked", 3, "t")) == {
        "type": "tracked",
        "topic": "t",
        "ref": 3,
    }


@pytest.mark.parametrize(
    ("frame", "code", "ref"),
    [
        ("nope", ErrorCode.BAD_FRAME, None),
        ('"a string"', ErrorCode.BAD_FRAME, None),
        ('{"type":"jump","ref":5}', ErrorCode.UNKNOWN_TYPE, 5),
        ('{"ref":5}', ErrorCode.UNKNOWN_TYPE, 5),
        ('{"type":"auth","ref":"r"}', ErrorCode.INVALID_MESSAGE, "r"),
        ('{"type":"auth","token":""}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"subscribe","table":"t","events":"INSERT"}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"subscribe","table":"t","events":[]}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"subscribe","table":"t","select":[]}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"subscribe","table":"t","select":[1]}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"subscribe","table":"t","filter":5}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"ping","ref":true}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"ping","ref":"' + "x" * 65 + '"}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"join","ref":1}', ErrorCode.INVALID_MESSAGE, 1),
        ('{"type":"join","topic":"' + "t" * 1025 + '"}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"join","topic":"t","presence":true}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"join","topic":"t","presence":{"key":5}}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"join","topic":"t","broadcast":{"ack":"yes"}}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"leave"}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"broadcast","topic":"t","payload":1}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"broadcast","topic":"t","event":"e"}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"track","topic":"t"}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"track","topic":"t","payload":"x"}', ErrorCode.INVALID_MESSAGE, None),
        ('{"type":"untrack"}', ErrorCode.INVALID_MESSAGE, None),
    ],
)
def test_bad_frames(frame: str, code: ErrorCode, ref: object) -> None:
    with pytest.raises(protocol.FrameError) as excinfo:
        protocol.decode(frame)
    assert excinfo.value.code == code
    assert excinfo.value.ref == ref


def test_a_change_frame_is_a_prefix_and_a_shared_body() -> None:
    body = protocol.change_body(
        "public.t", "INSERT", "2026-01-01T00:00:00+00:00", "e:7", {"id": 1}, None
    )
    frame = protocol.change_prefix([b'"s1"', b'"s2"']) + body
    assert orjson.loads(frame) == {
        "type": "change",
        "subscriptions": ["s1", "s2"],
        "table": "public.t",
        "op": "INSERT",
        "commit_timestamp": "2026-01-01T00:00:00+00:00",
        "position": "e:7",
        "new": {"id": 1},
    }


def test_system_frames() -> None:
    assert orjson.loads(protocol.gap(["s1"], "overflow", "e:9")) == {
        "type": "gap",
        "subscriptions": ["s1"],
        "reason": "overflow",
        "position": "e:9",
    }
    assert orjson.loads(protocol.replayed("s1", "e:9")) == {
        "type": "replayed",
        "id": "s1",
        "position": "e:9",
    }
    assert orjson.loads(
        protocol.closing(CloseCode.TOKEN_EXPIRED, ErrorCode.TOKEN_EXPIRED, "m")
    ) == {"type": "closing", "code": 4003, "reason": "token_expired", "message": "m"}
    assert orjson.loads(protocol.error("r", ErrorCode.INVALID_FILTER, "m")) == {
        "type": "error",
        "code": "invalid_filter",
        "message": "m",
        "ref": "r",
    }
    assert orjson.loads(protocol.token_expiring(100.7, 59.9)) == {
        "type": "token_expiring",
        "expires_at": 100,
        "seconds_left": 59,
    }
