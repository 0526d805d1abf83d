"""Phoenix frames (relay/core/phoenix.py), byte for byte."""

import json
from typing import Any

import orjson
import pytest

from relay.core import phoenix
from relay.core.changes import Change
from relay.core.phoenix import ChannelWire, FrameError, Message
from relay.core.tables import Column, Table


def test_vsn_1_frames_are_objects_and_pushes_carry_a_null_ref() -> None:
    message = phoenix.decode(
        '{"join_ref":"1","ref":"2","topic":"realtime:x","event":"phx_join","payload":{}}', "1.0.0"
    )
    assert message == Message("1", "2", "realtime:x", "phx_join", {})
    frame = json.loads(phoenix.encode("1.0.0", "1", None, "realtime:x", "system", {"a": 1}))
    # Exactly these keys, ref present even when null: the Python client needs it.
    assert frame == {"topic": "realtime:x", "event": "system", "payload": {"a": 1}, "ref": None}


def test_vsn_2_frames_are_arrays() -> None:
    message = phoenix.decode('["1","2","realtime:x","phx_join",{}]', "2.0.0")
    assert message == Message("1", "2", "realtime:x", "phx_join", {})
    assert (
        phoenix.encode("2.0.0", "1", "3", "t", "phx_reply", {}) == b'["1","3","t","phx_reply",{}]'
    )


def test_a_reply_keeps_the_requests_refs() -> None:
    request = Message("4", "5", "phoenix", "heartbeat", {})
    assert json.loads(phoenix.reply("2.0.0", request, "ok")) == [
        "4",
        "5",
        "phoenix",
        "phx_reply",
        {"status": "ok", "response": {}},
    ]


def user_broadcast(topic: str, event: str, payload: bytes, encoding: int = 1) -> bytes:
    """realtime-js's kind 3 frame (src/lib/serializer.ts)."""
    join_ref, ref, meta = b"1", b"7", b""
    header = bytes(
        [3, len(join_ref), len(ref), len(topic.encode()), len(event.encode()), len(meta), encoding]
    )
    return header + join_ref + ref + topic.encode() + event.encode() + meta + payload


def test_a_binary_user_broadcast_is_a_broadcast_event() -> None:
    message = phoenix.decode(user_broadcast("realtime:room", "hi", b'{"n":1}'), "2.0.0")
    assert message.event == "broadcast" and message.topic == "realtime:room"
    assert message.ref == "7" and message.join_ref == "1"
    assert message.payload == {"type": "broadcast", "event": "hi", "payload": {"n": 1}, "meta": {}}


@pytest.mark.parametrize(
    ("data", "vsn"),
    [
        ("{not json", "1.0.0"),
        ("[1,2,3]", "1.0.0"),  # an array with vsn 1.0.0
        ('{"topic":"t"}', "1.0.0"),  # no event
        ('["1","2","t","e"]', "2.0.0"),  # four parts
        ('[1.5,"2","t","e",{}]', "2.0.0"),  # a ref that is not a string
        (b"\x03\x01", "2.0.0"),  # a short binary frame
        (b"\x01\x00\x00\x00\x00\x00\x01", "2.0.0"),  # another kind
        (user_broadcast("t", "e", b"\x00raw", encoding=0), "2.0.0"),  # raw bytes
        (user_broadcast("t", "e", b"{}"), "1.0.0"),  # binary with vsn 1.0.0
    ],
)
def test_what_is_not_a_phoenix_message_is_refused(data: Any, vsn: str) -> None:
    with pytest.raises(FrameError):
        phoenix.decode(data, vsn)


@pytest.mark.parametrize(
    ("formatted", "name"),
    [
        ("integer", "int4"),
        ("bigint", "int8"),
        ("numeric(14,2)", "numeric"),
        ("timestamp with time zone", "timestamptz"),
        ("timestamp(3) without time zone", "timestamp"),
        ("character varying(20)", "varchar"),
        ("text", "text"),
        ("text[]", "_text"),
        ("integer[]", "_int4"),
        ("jsonb", "jsonb"),
        ("uuid", "uuid"),
        ("public.mood", "mood"),
    ],
)
def test_column_types_are_named_as_pg_type_names_them(formatted: str, name: str) -> None:
    assert phoenix.type_name(formatted) == name


TABLE = Table(
    name="public.notes",
    events=frozenset(("INSERT", "UPDATE", "DELETE")),
    primary_key=("id",),
    columns={
        "id": Column("id", "bigint", "N"),
        "title": Column("title", "text", "S"),
    },
    parents={},
)


def change(op: str, new: Any = None, old: Any = None, size: int = 10) -> Change:
    return Change("public.notes", op, new, old, {}, None, "1", "2026-11-28T10:00:00+00:00", size)  # type: ignore[arg-type]


@pytest.mark.parametrize("vsn", ["1.0.0", "2.0.0"])
def test_a_postgres_changes_push_is_a_prefix_per_channel_and_a_body_per_change(vsn: str) -> None:
    wire = ChannelWire(vsn, "realtime:inbox")
    body = wire.body(
        change("INSERT", {"id": 1, "title": "a"}), "p", ("INSERT", True, False, None), TABLE, 1000
    )
    frame = orjson.loads(wire.prefix([b"3", b"4"]) + body)
    if vsn == "2.0.0":
        assert frame[:4] == [None, None, "realtime:inbox", "postgres_changes"]
        payload = frame[4]
    else:
        assert set(frame) == {"topic", "event", "payload", "ref"} and frame["ref"] is None
        payload = frame["payload"]
    assert payload == {
        "ids": [3, 4],
        "data": {
            "schema": "public",
            "table": "notes",
            "commit_timestamp": "2026-11-28T10:00:00+00:00",
            "type": "INSERT",
            "columns": [{"name": "id", "type": "int8"}, {"name": "title", "type": "text"}],
            "record": {"id": 1, "title": "a"},
            "errors": None,
        },
    }


def test_a_row_leaving_the_view_is_a_delete_of_its_old_version() -> None:
    wire = ChannelWire("2.0.0", "realtime:inbox")
    body = wire.body(
        change("UPDATE", {"id": 1, "title": "new"}, {"id": 1, "title": "old"}),
        "p",
        ("LEAVE", False, True, None),
        TABLE,
        1000,
    )
    data = orjson.loads(wire.prefix([b"1"]) + body)[4]["data"]
    assert data["type"] == "DELETE" and data["old_record"] == {"id": 1, "title": "old"}
    assert "record" not in data and b"new" not in body


def test_a_change_too_large_keeps_its_key_and_says_why() -> None:
    wire = ChannelWire("1.0.0", "realtime:inbox")
    body = wire.body(
        change("INSERT", {"id": 1, "title": "x" * 100}, size=5000),
        "p",
        ("INSERT", True, False, None),
        TABLE,
        1000,
    )
    data = orjson.loads(wire.prefix([b"1"]) + body)["payload"]["data"]
    assert data["errors"] == ["Error 413: Payload Too Large"]
    assert data["record"] == {"id": 1}


def test_select_narrows_the_record_and_the_columns() -> None:
    wire = ChannelWire("1.0.0", "realtime:inbox")
    body = wire.body(
        change("INSERT", {"id": 1, "title": "a"}),
        "p",
        ("INSERT", True, False, ("id",)),
        TABLE,
        1000,
    )
    data = orjson.loads(wire.prefix([b"1"]) + body)["payload"]["data"]
    assert data["record"] == {"id": 1}
    assert data["columns"] == [{"name": "id", "type": "int8"}]
