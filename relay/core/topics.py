"""Who is in which topic, and who receives a broadcast, without I/O.

Supabase Realtime's broadcast (supabase/realtime 833cf36,
``lib/realtime_web/channels/realtime_channel/broadcast_handler.ex``): a client
joins a topic with options, then sends ``event`` and ``payload`` to every
member of the topic, on every relay, itself included only with ``self``. A
*member* is whatever the shell uses for one join of one topic (its channel
object): any hashable value. The core never looks inside it.

Presence (``relay/core/presence.py``) is kept on top of this registry: with
presence in use, join and leave through ``Presence``, which keeps both.
"""

import uuid
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import orjson

from relay.core.errors import ClientError, ErrorCode
from relay.core.peers import Broadcast, new_node_id
from relay.core.rates import TokenBucket

M = TypeVar("M", bound=Hashable)


@dataclass(frozen=True, slots=True)
class Options:
    """What a member asked for when it joined (Supabase: the join's ``config``)."""

    self_broadcast: bool = False  # broadcast.self: receive one's own broadcasts
    ack: bool = False  # broadcast.ack: the shell replies to each broadcast
    presence: bool = False  # presence.enabled: receive presence_state and presence_diff
    presence_key: str = ""  # presence.key; "" lets the relay choose one


@dataclass(slots=True)
class Membership:
    """One member's place in one topic."""

    topic: str
    options: Options
    presence_key: str  # the client's, or one the relay chose
    # Receives presence_state and presence_diff: asked for at the join, or since
    # the member tracked (as Supabase, whose track sets presence_enabled?).
    presence: bool
    broadcasts: TokenBucket = field(repr=False)


def new_presence_key() -> str:
    """A presence key for a client that left the choice to the relay (Supabase: a UUID)."""
    return str(uuid.uuid4())


def payload_size(payload: object) -> int:
    """The bytes a payload takes: its own length for bytes, else its JSON text's.

    ValueError for a value that is not JSON (the shell decoded it from JSON, so
    this is a bug of the shell's).
    """
    if isinstance(payload, bytes):
        return len(payload)
    try:
        return len(orjson.dumps(payload))
    except TypeError as exc:
        raise ValueError(f"not a JSON value: {exc}") from None


class Topics(Generic[M]):
    """The members of every topic on this relay, and the broadcasts between them.

    ``node`` names this relay to the others (``relay/core/peers.py``);
    ``new_key`` makes a presence key for a member that brought none.
    """

    def __init__(
        self,
        *,
        node: str | None = None,
        new_key: Callable[[], str] = new_presence_key,
        # Limits
        max_topic_bytes: int = 255,  # Supabase's binary frames cannot carry more
        max_event_bytes: int = 255,  # the same
        max_payload_bytes: int = 64 * 1024,
        broadcasts_per_second: float = 25.0,  # per member: a cursor every 40 ms
        broadcast_burst: int = 50,
    ) -> None:
        self.node = node if node is not None else new_node_id()
        self.max_topic_bytes = max_topic_bytes
        self.max_event_bytes = max_event_bytes
        self.max_payload_bytes = max_payload_bytes
        self.broadcasts_per_second = broadcasts_per_second
        self.broadcast_burst = broadcast_burst
        self._new_key = new_key
        self._topics: dict[str, dict[M, Membership]] = {}
        self._joined: dict[M, set[str]] = {}  # member -> its topics

    # --- Membership ------------------------------------------------------------

    def join(self, topic: str, member: M, options: Options, now: float) -> Membership:
        """Add ``member`` to ``topic``; a second join replaces the first (its options,
        its presence flag, its full bucket), in the same place among the members.

        ClientError ``invalid_topic`` for an empty topic or one over
        ``max_topic_bytes`` (UTF-8).
        """
        if not topic or len(topic.encode()) > self.max_topic_bytes:
            raise ClientError(
                ErrorCode.INVALID_TOPIC,
                f"a topic is 1 to {self.max_topic_bytes} bytes of UTF-8",
            )
        membership = Membership(
            topic,
            options,
            options.presence_key or self._new_key(),
            options.presence,
            TokenBucket(self.broadcasts_per_second, self.broadcast_burst, now),
        )
        self._topics.setdefault(topic, {})[member] = membership
        self._joined.setdefault(member, set()).add(topic)
        return membership

    def leave(self, topic: str, member: M) -> Membership | None:
        """Remove ``member`` from ``topic``; its membership, or None if it was not in it."""
        members = self._topics.get(topic)
        if members is None or member not in members:
            return None
        membership = members.pop(member)
        if not members:
            del self._topics[topic]
        topics = self._joined[member]
        topics.discard(topic)
        if not topics:
            del self._joined[member]
        return membership

    def leave_all(self, member: M) -> list[Membership]:
        """Remove ``member`` from every topic (its socket is gone); what it left."""
        left = [self.leave(topic, member) for topic in sorted(self._joined.get(member, ()))]
        return [membership for membership in left if membership is not None]

    def membership(self, topic: str, member: M) -> Membership | None:
        return self._topics.get(topic, {}).get(member)

    def members(self, topic: str) -> list[M]:
        """The members of ``topic``, in the order they joined."""
        return list(self._topics.get(topic, ()))

    def presence_members(self, topic: str) -> list[M]:
        """The members of ``topic`` that receive its presence, in the order they joined."""
        return [m for m, ship in self._topics.get(topic, {}).items() if ship.presence]

    def topics_of(self, member: M) -> list[str]:
        return sorted(self._joined.get(member, ()))

    def topics(self) -> list[str]:
        """Every topic with a member here."""
        return list(self._topics)

    # --- Broadcast -------------------------------------------------------------

    def broadcast(
        self, topic: str, sender: M | None, event: str, payload: Any, now: float
    ) -> list[M]:
        """The members that receive ``sender``'s broadcast, in the order they joined.

        ``sender`` None is the relay's own (an HTTP broadcast): every member
        receives it. Otherwise ``sender`` must have joined ``topic``, and
        receives its own broadcast only with ``self_broadcast``. ``payload`` is
        a JSON value or bytes. The shell then publishes
        ``Broadcast(topic, event, payload, self.node)`` to the other relays.

        ClientError, checked in this order: ``not_joined``; ``invalid_message``
        for an event that is not a string of at most ``max_event_bytes``;
        ``payload_too_large`` past ``max_payload_bytes``; ``rate_limited``
        past the sender's ``broadcasts_per_second`` (refused broadcasts do not
        count).
        """
        members = self._topics.get(topic, {})
        membership = None
        if sender is not None:
            membership = members.get(sender)
            if membership is None:
                raise ClientError(ErrorCode.NOT_JOINED, f"not joined to {topic!r}")
        if not isinstance(event, str) or len(event.encode()) > self.max_event_bytes:
            raise ClientError(
                ErrorCode.INVALID_MESSAGE,
                f"a broadcast's event is a string of at most {self.max_event_bytes} bytes",
            )
        size = payload_size(payload)
        if size > self.max_payload_bytes:
            raise ClientError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"a broadcast's payload is at most {self.max_payload_bytes} bytes, not {size}",
            )
        if membership is not None and not membership.broadcasts.take(now):
            raise ClientError(
                ErrorCode.RATE_LIMITED,
                f"more than {self.broadcasts_per_second:g} broadcasts per second",
            )
        if membership is None or membership.options.self_broadcast:
            return list(members)
        return [member for member in members if member != sender]

    def apply_remote(self, message: Broadcast) -> list[M]:
        """The members that receive a broadcast made on another relay: all of them.

        The sender's ``self`` was honoured where it was sent. One's own
        broadcasts (a transport's echo) reach nobody: they were delivered when
        they were made.
        """
        if message.origin == self.node:
            return []
        return list(self._topics.get(message.topic, ()))
