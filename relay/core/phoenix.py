"""Phoenix channel frames, as Supabase Realtime's clients send and read them.

Every message has five parts: ``join_ref``, ``ref``, ``topic``, ``event``,
``payload`` (../shared/supabase-protocol.md, section 2; Phoenix's
``Phoenix.Socket.V1.JSONSerializer`` and ``V2.JSONSerializer``):

- vsn 1.0.0: a text frame holding a JSON object. From the server, exactly
  ``topic``, ``event``, ``payload`` and ``ref`` (``null`` on pushes, but
  present: the Python client rejects a frame without it).
- vsn 2.0.0: a text frame holding ``[join_ref, ref, topic, event, payload]``;
  and binary frames for user broadcasts: kind 3 from the client, kind 4 from
  the server (realtime-js decodes no other kind).

No I/O: the session decodes what the shell received and encodes what it sends.
"""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from relay.core.changes import Change
from relay.core.tables import Table

VSN_1 = "1.0.0"
VSN_2 = "2.0.0"
VERSIONS = (VSN_1, VSN_2)

# Binary frame kinds of vsn 2.0.0 (realtime-js src/lib/serializer.ts).
USER_BROADCAST_PUSH = 3  # client -> server
USER_BROADCAST = 4  # server -> client

Ref = str | None


class FrameError(ValueError):
    """A frame that is not a Phoenix message; the message says why."""


@dataclass(frozen=True, slots=True)
class Message:
    join_ref: Ref
    ref: Ref
    topic: str
    event: str
    payload: Any


def decode(data: str | bytes, vsn: str) -> Message:
    """The message in a frame from a client of protocol ``vsn``; ``FrameError`` if none."""
    if isinstance(data, bytes):
        if vsn != VSN_2:
            raise FrameError("binary frames are read only with vsn 2.0.0")
        return _decode_binary(data)
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise FrameError("the frame is not JSON") from None
    if vsn == VSN_2:
        if not isinstance(value, list) or len(value) != 5:
            raise FrameError("a vsn 2.0.0 frame is [join_ref, ref, topic, event, payload]")
        join_ref, ref, topic, event, payload = value
    else:
        if not isinstance(value, dict):
            raise FrameError("a vsn 1.0.0 frame is a JSON object")
        join_ref, ref = value.get("join_ref"), value.get("ref")
        topic, event, payload = value.get("topic"), value.get("event"), value.get("payload")
    if not isinstance(topic, str) or not isinstance(event, str):
        raise FrameError("a frame needs a topic and an event, as strings")
    return Message(_ref(join_ref), _ref(ref), topic, event, payload)


def _ref(value: Any) -> Ref:
    """Refs are strings from the client's counter; a number is read as its text."""
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise FrameError("a ref is a string or null")


def _decode_binary(data: bytes) -> Message:
    """Kind 3, a user broadcast: ``3, len(join_ref), len(ref), len(topic),
    len(event), len(metadata), encoding``, those strings, then the payload
    (JSON text when ``encoding`` is 1, raw bytes when 0)."""
    if len(data) < 7 or data[0] != USER_BROADCAST_PUSH:
        raise FrameError("the only binary frame a client may send is a user broadcast (kind 3)")
    lengths = data[1:6]
    encoding = data[6]
    offset = 7
    fields: list[str] = []
    try:
        for length in lengths:
            fields.append(data[offset : offset + length].decode())
            offset += length
    except UnicodeDecodeError:
        raise FrameError("a user broadcast's header is not UTF-8") from None
    if offset > len(data):
        raise FrameError("a user broadcast is shorter than its header says")
    join_ref, ref, topic, event, metadata = fields
    raw = data[offset:]
    if encoding != 1:
        raise FrameError("binary broadcast payloads are not supported: send JSON")
    try:
        payload = orjson.loads(raw)
        meta = orjson.loads(metadata) if metadata else {}
    except orjson.JSONDecodeError:
        raise FrameError("a user broadcast's payload or metadata is not JSON") from None
    return Message(
        join_ref or None,
        ref or None,
        topic,
        "broadcast",
        {"type": "broadcast", "event": event, "payload": payload, "meta": meta},
    )


def encode(vsn: str, join_ref: Ref, ref: Ref, topic: str, event: str, payload: Any) -> bytes:
    """A frame for a client of protocol ``vsn``."""
    if vsn == VSN_2:
        return orjson.dumps([join_ref, ref, topic, event, payload])
    return orjson.dumps({"topic": topic, "event": event, "payload": payload, "ref": ref})


def reply(
    vsn: str, message: Message, status: str, response: Mapping[str, Any] | None = None
) -> bytes:
    """``phx_reply`` to ``message``: ``{status, response}`` with its refs."""
    return encode(
        vsn,
        message.join_ref,
        message.ref,
        message.topic,
        "phx_reply",
        {"status": status, "response": dict(response or {})},
    )


# --- postgres_changes -------------------------------------------------------------------

# PostgreSQL's type names as Supabase's columns list them (pg_type.typname),
# for what format_type() renders differently; realtime-js converts string
# values by them. Arrays are "_" and the element's name.
_TYPE_NAMES = {
    "smallint": "int2",
    "integer": "int4",
    "bigint": "int8",
    "real": "float4",
    "double precision": "float8",
    "boolean": "bool",
    "character varying": "varchar",
    "character": "bpchar",
    "timestamp with time zone": "timestamptz",
    "timestamp without time zone": "timestamp",
    "time with time zone": "timetz",
    "time without time zone": "time",
    "bit varying": "varbit",
}


def type_name(formatted: str) -> str:
    """``pg_type.typname`` for a type as ``format_type()`` renders it:
    ``numeric(14,2)`` -> ``numeric``, ``integer[]`` -> ``_int4``."""
    array = formatted.endswith("[]")
    base = formatted.removesuffix("[]")
    if "(" in base:  # typmods: numeric(14,2), character varying(20), timestamp(3) with time zone
        head, _, rest = base.partition("(")
        base = (head + rest.partition(")")[2]).strip()
    name = _TYPE_NAMES.get(base, base.rsplit(".", 1)[-1].strip('"'))
    return "_" + name if array else name


class ChannelWire:
    """``postgres_changes`` pushes for one channel (supabase-protocol.md, section 7):
    ``{"ids": [...], "data": {schema, table, commit_timestamp, type, columns,
    record, old_record, errors}}``, the data encoded once per change and
    variant for every channel of the same ``vsn``.

    A row that left the subscriber's view (``LEAVE``) arrives as a DELETE of
    the last version they were allowed to see: the clients know no other way
    to say "this row is no longer yours", and its new version is never sent.
    """

    def __init__(self, vsn: str, topic: str) -> None:
        self.kind = f"phoenix-{vsn}"
        topic_json = orjson.dumps(topic)
        if vsn == VSN_2:
            self._start = b"[null,null," + topic_json + b',"postgres_changes",{"ids":['
            self._end = b"}]"
        else:
            self._start = (
                b'{"topic":'
                + topic_json
                + b',"event":"postgres_changes","ref":null,"payload":{"ids":['
            )
            self._end = b"}}"

    def prefix(self, ids: Sequence[bytes]) -> bytes:
        return self._start + b",".join(ids) + b'],"data":'

    def body(
        self,
        change: Change,
        position: str,
        variant: tuple[str, bool, bool, tuple[str, ...] | None],
        table: Table,
        max_change_bytes: int,
    ) -> bytes:
        op, with_new, with_old, select = variant
        schema, _, name = table.name.partition(".")
        data: dict[str, Any] = {
            "schema": schema,
            "table": name,
            "commit_timestamp": change.timestamp,
            "type": "DELETE" if op == "LEAVE" else op,
            "columns": [
                {"name": column.name, "type": type_name(column.type)}
                for column in table.columns.values()
                if select is None or column.name in select
            ],
            "errors": None,
        }
        new = change.new if with_new else None
        old = change.old if with_old else None
        if change.size > max_change_bytes:
            # As Supabase: the error, and the rows cut to their primary key.
            data["errors"] = ["Error 413: Payload Too Large"]
            new = _key(new, table)
            old = _key(old, table)
        if new is not None:
            data["record"] = _project(new, select)
        if old is not None:
            data["old_record"] = _project(old, select)
        return orjson.dumps(data) + self._end


def _key(row: Mapping[str, Any] | None, table: Table) -> dict[str, Any] | None:
    if row is None:
        return None
    return {column: row.get(column) for column in table.primary_key}


def _project(row: Mapping[str, Any], select: tuple[str, ...] | None) -> Mapping[str, Any]:
    if select is None:
        return row
    return {column: row[column] for column in select if column in row}
