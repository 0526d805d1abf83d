"""The relay's wire protocol, version 1 (docs/protocol.md): frames in and out.

Client frames are JSON objects with a ``type``; ``decode`` turns one into a
request or raises ``ClientError``. Server frames are built here as bytes
(UTF-8 JSON), ready to send as text frames. A change frame is a per-recipient
prefix (the subscription ids) joined to a body encoded once per change.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from relay.core.changes import OPS
from relay.core.errors import ClientError, CloseCode, ErrorCode

SUBPROTOCOL = "nexus-relay.v1"
VERSION = 1

Ref = str | int | None
MAX_REF_LENGTH = 64
EVENTS = OPS  # what a subscription may ask for: every operation of a change


@dataclass(frozen=True, slots=True)
class Auth:
    ref: Ref
    token: str


@dataclass(frozen=True, slots=True)
class Refresh:
    ref: Ref
    token: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    ref: Ref
    table: str
    events: frozenset[str]
    select: tuple[str, ...] | None
    filter: str | None
    since: str | None
    resume_token: str | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    ref: Ref
    id: str


@dataclass(frozen=True, slots=True)
class Ping:
    ref: Ref


@dataclass(frozen=True, slots=True)
class Join:
    """Enter the room ``topic``: its broadcasts, and its presence if ``presence``."""

    ref: Ref
    topic: str
    self_broadcast: bool  # broadcast.self: receive one's own broadcasts
    ack: bool  # broadcast.ack: each broadcast is answered with ``broadcasted``
    presence: bool  # a presence object was given: presence_state and presence_diff
    presence_key: str  # presence.key; "" lets the relay choose one


@dataclass(frozen=True, slots=True)
class Leave:
    ref: Ref
    topic: str


@dataclass(frozen=True, slots=True)
class Broadcast:
    ref: Ref
    topic: str
    event: str
    payload: Any


@dataclass(frozen=True, slots=True)
class Track:
    ref: Ref
    topic: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Untrack:
    ref: Ref
    topic: str


Request = (
    Auth | Refresh | Subscribe | Unsubscribe | Ping | Join | Leave | Broadcast | Track | Untrack
)


class FrameError(ClientError):
    """A client frame that is not a valid request; ``ref`` is echoed when it could be read."""

    def __init__(self, code: ErrorCode, message: str, ref: Ref = None) -> None:
        super().__init__(code, message)
        self.ref = ref


def decode(text: str) -> Request:
    """The request in a text frame; ``FrameError`` if it is not one."""
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise FrameError(ErrorCode.BAD_FRAME, "a frame must be a JSON object") from None
    if not isinstance(data, dict):
        raise FrameError(ErrorCode.BAD_FRAME, "a frame must be a JSON object")
    ref = data.get("ref")
    if ref is not None and not (
        (isinstance(ref, str) and len(ref) <= MAX_REF_LENGTH)
        or (isinstance(ref, int) and not isinstance(ref, bool))
    ):
        raise FrameError(
            ErrorCode.INVALID_MESSAGE,
            f"ref must be a string of at most {MAX_REF_LENGTH} characters or an integer",
        )
    kind = data.get("type")
    reader = _READERS.get(kind) if isinstance(kind, str) else None
    if reader is None:
        raise FrameError(ErrorCode.UNKNOWN_TYPE, f"unknown frame type {kind!r}", ref)
    try:
        return reader(data, ref)
    except _Invalid as exc:
        raise FrameError(ErrorCode.INVALID_MESSAGE, str(exc), ref) from None


class _Invalid(ValueError):
    pass


def _string(data: Mapping[str, Any], key: str, *, required: bool = True, limit: int = 16384) -> Any:
    value = data.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise _Invalid(f"{key!r} must be a non-empty string")
    if len(value) > limit:
        raise _Invalid(f"{key!r} is longer than {limit} characters")
    return value


def _auth(data: Mapping[str, Any], ref: Ref) -> Request:
    return Auth(ref, _string(data, "token"))


def _refresh(data: Mapping[str, Any], ref: Ref) -> Request:
    return Refresh(ref, _string(data, "token"))


def _subscribe(data: Mapping[str, Any], ref: Ref) -> Request:
    table = _string(data, "table", limit=127)
    events_value = data.get("events", "*")
    if events_value == "*" or events_value == ["*"]:
        events = EVENTS
    elif (
        isinstance(events_value, list)
        and events_value
        and all(isinstance(e, str) and e.upper() in EVENTS for e in events_value)
    ):
        events = frozenset(e.upper() for e in events_value)
    else:
        raise _Invalid('"events" must be "*" or a list of "INSERT", "UPDATE", "DELETE"')
    select_value = data.get("select")
    select = None
    if select_value is not None:
        if (
            not isinstance(select_value, list)
            or not select_value
            or len(select_value) > 256
            or not all(isinstance(c, str) and c for c in select_value)
        ):
            raise _Invalid('"select" must be a non-empty list of column names')
        select = tuple(dict.fromkeys(select_value))
    return Subscribe(
        ref,
        table,
        events,
        select,
        _string(data, "filter", required=False, limit=8192),
        _string(data, "since", required=False, limit=128),
        _string(data, "resume_token", required=False, limit=128),
    )


def _unsubscribe(data: Mapping[str, Any], ref: Ref) -> Request:
    return Unsubscribe(ref, _string(data, "id", limit=64))


def _ping(data: Mapping[str, Any], ref: Ref) -> Request:
    return Ping(ref)


# Rooms (broadcast, presence). A topic's and an event's limits in bytes are
# the rooms' (relay.core.topics), which say so with their own codes; these
# only bound what a frame may hold.
MAX_TOPIC_LENGTH = 1024
MAX_EVENT_LENGTH = 1024
MAX_PRESENCE_KEY_LENGTH = 255


def _topic(data: Mapping[str, Any]) -> Any:
    return _string(data, "topic", limit=MAX_TOPIC_LENGTH)


def _object(data: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise _Invalid(f"{key!r} must be an object")
    return value


def _flag(data: Mapping[str, Any], key: str) -> bool:
    value = data.get(key, False)
    if not isinstance(value, bool):
        raise _Invalid(f"{key!r} must be true or false")
    return value


def _join(data: Mapping[str, Any], ref: Ref) -> Request:
    topic = _topic(data)
    broadcast = _object(data, "broadcast") or {}
    presence = _object(data, "presence")
    key = ""
    if presence is not None and presence.get("key") not in (None, ""):
        key = _string(presence, "key", limit=MAX_PRESENCE_KEY_LENGTH)
    return Join(
        ref,
        topic,
        _flag(broadcast, "self"),
        _flag(broadcast, "ack"),
        presence is not None,
        key,
    )


def _leave(data: Mapping[str, Any], ref: Ref) -> Request:
    return Leave(ref, _topic(data))


def _broadcast(data: Mapping[str, Any], ref: Ref) -> Request:
    if "payload" not in data:
        raise _Invalid("a broadcast needs a 'payload' (any JSON value)")
    return Broadcast(
        ref, _topic(data), _string(data, "event", limit=MAX_EVENT_LENGTH), data["payload"]
    )


def _track(data: Mapping[str, Any], ref: Ref) -> Request:
    payload = _object(data, "payload")
    if payload is None:
        raise _Invalid("'payload' must be an object: what the others see of you")
    return Track(ref, _topic(data), payload)


def _untrack(data: Mapping[str, Any], ref: Ref) -> Request:
    return Untrack(ref, _topic(data))


_READERS = {
    "auth": _auth,
    "refresh": _refresh,
    "subscribe": _subscribe,
    "unsubscribe": _unsubscribe,
    "ping": _ping,
    "join": _join,
    "leave": _leave,
    "broadcast": _broadcast,
    "track": _track,
    "untrack": _untrack,
}


# --- Server frames -------------------------------------------------------------


def encode(frame: Mapping[str, Any]) -> bytes:
    return orjson.dumps(frame)


def _with_ref(frame: dict[str, Any], ref: Ref) -> dict[str, Any]:
    if ref is not None:
        frame["ref"] = ref
    return frame


def ready(ref: Ref, **fields: Any) -> bytes:
    return encode(_with_ref({"type": "ready", "version": VERSION, **fields}, ref))


def subscribed(ref: Ref, **fields: Any) -> bytes:
    return encode(_with_ref({"type": "subscribed", **fields}, ref))


def unsubscribed(ref: Ref, id: str, reason: str | None = None) -> bytes:
    frame = _with_ref({"type": "unsubscribed", "id": id}, ref)
    if reason is not None:
        frame["reason"] = reason
    return encode(frame)


def refreshed(ref: Ref, expires_at: float, resume_tokens: Mapping[str, str]) -> bytes:
    return encode(
        _with_ref(
            {
                "type": "refreshed",
                "expires_at": int(expires_at),
                "resume_tokens": dict(resume_tokens),
            },
            ref,
        )
    )


def pong(ref: Ref) -> bytes:
    return encode(_with_ref({"type": "pong"}, ref))


def error(ref: Ref, code: ErrorCode, message: str) -> bytes:
    return encode(_with_ref({"type": "error", "code": code.value, "message": message}, ref))


def gap(subscriptions: Iterable[str], reason: str, position: str) -> bytes:
    return encode(
        {
            "type": "gap",
            "subscriptions": list(subscriptions),
            "reason": reason,
            "position": position,
        }
    )


def replayed(subscription: str, position: str) -> bytes:
    return encode({"type": "replayed", "id": subscription, "position": position})


def token_expiring(expires_at: float, seconds_left: float) -> bytes:
    return encode(
        {"type": "token_expiring", "expires_at": int(expires_at), "seconds_left": int(seconds_left)}
    )


def closing(code: CloseCode, reason: ErrorCode, message: str) -> bytes:
    return encode(
        {"type": "closing", "code": int(code), "reason": reason.value, "message": message}
    )


# --- Rooms ---------------------------------------------------------------------


def joined(ref: Ref, topic: str, presence_state: Mapping[str, Any] | None) -> bytes:
    """The join's reply, once the member is in the room; with the room's presence
    if it asked for presence and may read it."""
    frame: dict[str, Any] = {"type": "joined", "topic": topic}
    if presence_state is not None:
        frame["presence_state"] = presence_state
    return encode(_with_ref(frame, ref))


def left(ref: Ref, topic: str, reason: ErrorCode | None = None, message: str = "") -> bytes:
    """The reply to ``leave``; without ``ref``, with ``reason``: the relay ended the
    membership (a refreshed token no longer admits it)."""
    frame = _with_ref({"type": "left", "topic": topic}, ref)
    if reason is not None:
        frame["reason"] = reason.value
        frame["message"] = message
    return encode(frame)


def room_reply(kind: str, ref: Ref, topic: str) -> bytes:
    """``broadcasted`` (a broadcast's ack), ``tracked``, ``untracked``."""
    return encode(_with_ref({"type": kind, "topic": topic}, ref))


def broadcast(topic: str, event: str, payload: Any) -> bytes:
    return encode({"type": "broadcast", "topic": topic, "event": event, "payload": payload})


def presence_diff(topic: str, diff: Mapping[str, Any]) -> bytes:
    """``diff`` is ``{"joins": {key: {"metas": [...]}}, "leaves": {...}}`` (Phoenix's shape)."""
    return encode({"type": "presence_diff", "topic": topic, **diff})


def change_body(
    table: str,
    op: str,
    timestamp: str,
    position: str,
    new: Mapping[str, Any] | None,
    old: Mapping[str, Any] | None,
) -> bytes:
    """Everything of a change frame after its subscription ids, encoded once per variant."""
    body: dict[str, Any] = {
        "table": table,
        "op": op,
        "commit_timestamp": timestamp,
        "position": position,
    }
    if new is not None:
        body["new"] = new
    if old is not None:
        body["old"] = old
    # {"table":...} without its opening brace: the prefix supplies it.
    return orjson.dumps(body)[1:]


def too_large_body(
    table: str,
    op: str,
    timestamp: str,
    position: str,
    key: Mapping[str, Any],
    size: int,
) -> bytes:
    """A change frame's body without its rows, too large to send: the primary
    key of the row to re-fetch, and how large the rows were."""
    body = {
        "table": table,
        "op": op,
        "commit_timestamp": timestamp,
        "position": position,
        "too_large": True,
        "key": key,
        "size": size,
    }
    return orjson.dumps(body)[1:]


def change_prefix(subscription_ids: Iterable[bytes]) -> bytes:
    """``{"type":"change","subscriptions":[...],`` for one recipient: ids pre-encoded as JSON."""
    return b'{"type":"change","subscriptions":[' + b",".join(subscription_ids) + b"],"
