"""What relays tell each other about topics: broadcasts and presence, as events.

Several relays serve one topic: a broadcast reaches the members on every relay,
and every relay shows the same presence. Each relay keeps its own copy of the
presence of every topic; what changes it is one of the events below, made by
the relay where it happened (its *node*) and applied by the others
(``Topics.apply_remote``, ``Presence.apply_remote``). The transport (Redis
pub/sub, say) is a shell's business: it publishes what ``encode`` makes and
hands what ``decode`` reads to the core. Contract:

- Publish the events of one update (``PresenceUpdate.events``) together, in
  one message, and apply them together: a replaced meta is a leave and a join,
  which the other relays must show as one ``presence_diff``, as this one does.
- Events of one node must arrive in the order they were made (one channel per
  node, or one for all: Redis pub/sub keeps a publisher's order).
- Publish every update's ``events``, those of ``Presence.apply_remote`` too:
  a relay that hears a node it does not know (it starts, or it expired that
  node, which may then lack its metas too) answers with a ``PresenceSync`` of
  its own metas that asks for the others' (``reply``); each relay answers
  such a request with its own sync. A sync makes the receiver's copy of that
  node's metas exactly those; applying a join twice changes nothing.
- Each relay publishes ``Heartbeat`` every few seconds; a relay that hears
  nothing from a node for ``node_timeout`` seconds drops its metas
  (``Presence.expire``). A relay that stops cleanly publishes ``NodeGone``.
- An event from one's own node is ignored: a transport may echo it back.

Nothing here is a protocol clients see: relays of one deployment run the same
version.
"""

import base64
import binascii
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

# A presence meta as clients see it: what the client tracked, plus ``phx_ref``
# (and ``phx_ref_prev`` for a meta that replaced another).
Meta = Mapping[str, Any]


def new_node_id() -> str:
    """A relay process's id: random, so that two relays (or one relay restarted)
    never share one, and short, as it prefixes every ``phx_ref`` it makes."""
    return secrets.token_hex(6)


@dataclass(frozen=True, slots=True)
class Broadcast:
    """A broadcast made on ``origin``: deliver it to every member here."""

    topic: str
    event: str
    payload: Any  # a JSON value, or bytes (a vsn 2.0.0 binary broadcast)
    origin: str


@dataclass(frozen=True, slots=True)
class PresenceJoin:
    """``node`` tracked ``meta`` (``meta["phx_ref"]`` is its id) under ``key``."""

    topic: str
    key: str
    meta: Meta
    node: str


@dataclass(frozen=True, slots=True)
class PresenceLeave:
    """The meta ``ref`` of ``node`` left ``key``."""

    topic: str
    key: str
    ref: str
    node: str


@dataclass(frozen=True, slots=True)
class PresenceSync:
    """Every meta of ``node``, every topic's: what this relay holds of ``node``
    becomes exactly ``joins`` (the metas it lacks join, those it has no more leave)."""

    node: str
    joins: tuple[PresenceJoin, ...]
    reply: bool = False  # the receivers answer with their own sync


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """``node`` is alive (so is its presence)."""

    node: str


@dataclass(frozen=True, slots=True)
class NodeGone:
    """``node`` stopped: its presence is gone, at once."""

    node: str


PresenceEvent = PresenceJoin | PresenceLeave | PresenceSync | Heartbeat | NodeGone
Event = Broadcast | PresenceEvent


def encode(events: Sequence[Event]) -> bytes:
    """One message for the other relays: a JSON array of ``events``."""
    return orjson.dumps([_to_json(event) for event in events])


def decode(data: bytes | str) -> list[Event]:
    """The events of a message made by ``encode``; ValueError if it is not one."""
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"not JSON: {exc}") from None
    if not isinstance(items, list):
        raise ValueError("not a list of events")
    return [_from_json(item) for item in items]


def _to_json(event: Event) -> dict[str, Any]:
    match event:
        case Broadcast(topic, name, payload, origin):
            binary = isinstance(payload, bytes)
            return {
                "type": "broadcast",
                "topic": topic,
                "event": name,
                "payload": base64.b64encode(payload).decode() if binary else payload,
                "binary": binary,
                "node": origin,
            }
        case PresenceJoin(topic, key, meta, node):
            return {"type": "join", "topic": topic, "key": key, "meta": meta, "node": node}
        case PresenceLeave(topic, key, ref, node):
            return {"type": "leave", "topic": topic, "key": key, "ref": ref, "node": node}
        case PresenceSync(node, joins, reply):
            metas = [{"topic": j.topic, "key": j.key, "meta": j.meta} for j in joins]
            return {"type": "sync", "node": node, "joins": metas, "reply": reply}
        case Heartbeat(node):
            return {"type": "heartbeat", "node": node}
        case NodeGone(node):
            return {"type": "gone", "node": node}


def _from_json(item: object) -> Event:
    if not isinstance(item, dict):
        raise ValueError("an event is not an object")
    kind = item.get("type")
    node = _string(item, "node")
    if kind == "heartbeat":
        return Heartbeat(node)
    if kind == "gone":
        return NodeGone(node)
    if kind == "sync":
        joins, reply = item.get("joins"), item.get("reply")
        if not isinstance(joins, list) or not isinstance(reply, bool):
            raise ValueError("a sync's joins are not a list, or its reply not a boolean")
        return PresenceSync(node, tuple(_join(join, node) for join in joins), reply)
    topic = _string(item, "topic")
    if kind == "broadcast":
        if "payload" not in item or not isinstance(item.get("binary"), bool):
            raise ValueError("a broadcast without payload or binary")
        payload = item["payload"]
        if item["binary"]:
            if not isinstance(payload, str):
                raise ValueError("a binary payload is not base64 text")
            try:
                payload = base64.b64decode(payload, validate=True)
            except binascii.Error:
                raise ValueError("a binary payload is not base64 text") from None
        return Broadcast(topic, _string(item, "event"), payload, node)
    if kind == "join":
        return _join(item, node)
    if kind == "leave":
        return PresenceLeave(topic, _string(item, "key"), _string(item, "ref"), node)
    raise ValueError(f"unknown event type {kind!r}")


def _join(item: object, node: str) -> PresenceJoin:
    if not isinstance(item, dict):
        raise ValueError("a join is not an object")
    meta = item.get("meta")
    if not isinstance(meta, dict) or not isinstance(meta.get("phx_ref"), str):
        raise ValueError("a join's meta is not an object with a phx_ref")
    return PresenceJoin(_string(item, "topic"), _string(item, "key"), meta, node)


def _string(item: dict[str, Any], name: str) -> str:
    value = item.get(name)
    if not isinstance(value, str):
        raise ValueError(f"{name} is not a string")
    return value
