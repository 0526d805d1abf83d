"""Who is present in each topic, and the diffs that tell the members, without I/O.

Supabase Realtime's presence (supabase/realtime 833cf36,
``lib/realtime_web/channels/realtime_channel/presence_handler.ex``, over
``Phoenix.Presence``; realtime-js's ``RealtimePresence``): per topic, a
*key* (the member's ``presence.key``, or a UUID the relay chose) holds a list
of *metas*, one per member that tracked under that key. Each meta is what the
client tracked plus ``phx_ref``, unique across relays and restarts: both
official clients use it as the meta's identity. Members with presence get the
whole state (``presence_state``) after their join, then every change as a
``presence_diff``, ``{"joins": {key: {"metas": [...]}}, "leaves": {...}}``;
the member whose track caused it included.

- Tracking again replaces the member's meta: one diff with the old meta in
  ``leaves`` and the new one, with ``phx_ref_prev`` = the old ``phx_ref``, in
  ``joins`` (Phoenix.Tracker's update). The same payload again changes nothing.
- Untracking, leaving the topic and the socket going each make a leave.
- Other relays' metas arrive as events (``relay/core/peers.py``) and are shown
  as this relay's are; a relay that falls silent has its metas expire.

Every method returns a ``PresenceUpdate``: the diffs for the shell to push,
each with its recipients, and the events to publish to the other relays.
"""

from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from relay.core.errors import ClientError, ErrorCode
from relay.core.peers import (
    Meta,
    NodeGone,
    PresenceEvent,
    PresenceJoin,
    PresenceLeave,
    PresenceSync,
)
from relay.core.rates import TokenBucket
from relay.core.topics import Membership, Options, Topics, payload_size

M = TypeVar("M", bound=Hashable)

# The fields the relay owns in a meta: a client's own are dropped.
REFS = ("phx_ref", "phx_ref_prev")

# The payload of presence_state: key -> {"metas": [meta, ...]}.
State = dict[str, dict[str, list[Meta]]]


@dataclass(frozen=True, slots=True)
class PresenceDiff(Generic[M]):
    """A ``presence_diff`` for ``topic``, and the members to push it to."""

    topic: str
    recipients: list[M]
    joins: dict[str, list[Meta]]
    leaves: dict[str, list[Meta]]

    def payload(self) -> dict[str, State]:
        """The push's payload, as the clients read it."""
        return {
            "joins": {key: {"metas": metas} for key, metas in self.joins.items()},
            "leaves": {key: {"metas": metas} for key, metas in self.leaves.items()},
        }


@dataclass(frozen=True, slots=True)
class PresenceUpdate(Generic[M]):
    """What a change of presence asks of the shell.

    ``diffs``: one per topic that changed and has members with presence here.
    ``events``: to publish to the other relays, together, in one message
    (``peers.encode``); from ``apply_remote``, this relay's sync when the
    others need it.
    ``new_nodes``: relays heard of for the first time, or again after they
    expired (for the log).
    """

    diffs: list[PresenceDiff[M]] = field(default_factory=list)
    events: list[PresenceEvent] = field(default_factory=list)
    new_nodes: list[str] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Joined(Generic[M]):
    """A join: the membership, the ``presence_state`` payload to push after the
    join's reply (None without presence), and the update of a join it replaced."""

    membership: Membership
    state: State | None
    update: PresenceUpdate[M]


@dataclass(eq=False, slots=True)
class _Entry(Generic[M]):
    topic: str
    key: str
    meta: Meta  # as the clients see it
    payload: Meta | None  # as the member tracked it; None for another relay's
    node: str

    @property
    def ref(self) -> str:
        ref = self.meta["phx_ref"]
        assert isinstance(ref, str)
        return ref


class _Changes(Generic[M]):
    """The joins and leaves of one update, per topic, in the order they happened."""

    def __init__(self) -> None:
        self.topics: dict[str, tuple[dict[str, list[Meta]], dict[str, list[Meta]]]] = {}

    def join(self, entry: _Entry[M]) -> None:
        joins, _ = self.topics.setdefault(entry.topic, ({}, {}))
        joins.setdefault(entry.key, []).append(entry.meta)

    def leave(self, entry: _Entry[M]) -> None:
        _, leaves = self.topics.setdefault(entry.topic, ({}, {}))
        leaves.setdefault(entry.key, []).append(entry.meta)

    def diffs(self, topics: Topics[M]) -> list[PresenceDiff[M]]:
        """The diffs, to the members with presence now (one that left gets none)."""
        diffs = []
        for topic, (joins, leaves) in self.topics.items():
            recipients = topics.presence_members(topic)
            if recipients:
                diffs.append(PresenceDiff(topic, recipients, joins, leaves))
        return diffs


class Presence(Generic[M]):
    """The presence of every topic, this relay's members' and the other relays'.

    It keeps ``topics``'s membership too: with presence in use, join and leave
    through this class, which untracks what a leaving member tracked.
    """

    def __init__(
        self,
        topics: Topics[M],
        *,
        # Limits
        max_metas_per_topic: int = 1_000,
        max_meta_bytes: int = 4 * 1024,
        max_tracks: int = 10,  # per member, at once; then max_tracks per track_window
        track_window: float = 10.0,
        # Other relays
        node_timeout: float = 15.0,  # silent this long (3 heartbeats of 5 s), a relay is gone
    ) -> None:
        self.topics = topics
        self.node = topics.node
        self.max_metas_per_topic = max_metas_per_topic
        self.max_meta_bytes = max_meta_bytes
        self.max_tracks = max_tracks
        self.track_window = track_window
        self.node_timeout = node_timeout
        self._keys: dict[str, dict[str, list[_Entry[M]]]] = {}  # topic -> key -> metas
        self._counts: dict[str, int] = {}  # topic -> metas
        self._refs: dict[str, _Entry[M]] = {}
        self._tracked: dict[tuple[str, M], _Entry[M]] = {}
        self._tracks: dict[tuple[str, M], TokenBucket] = {}
        self._nodes: dict[str, dict[str, None]] = {}  # another relay -> its metas' refs
        self._heard: dict[str, float] = {}  # another relay -> when it was last heard
        self._next_ref = 0

    # --- Reading ---------------------------------------------------------------

    def state(self, topic: str) -> State:
        """The payload of ``presence_state`` for ``topic``: every key, its metas in
        the order they were tracked."""
        return {
            key: {"metas": [entry.meta for entry in entries]}
            for key, entries in self._keys.get(topic, {}).items()
        }

    def count(self, topic: str) -> int:
        """The metas of ``topic``, every relay's."""
        return self._counts.get(topic, 0)

    def sync(self, reply: bool = False) -> PresenceSync:
        """This relay's own metas, every topic's: for the relays that may lack
        them; with ``reply``, asking for theirs."""
        joins = tuple(
            PresenceJoin(entry.topic, entry.key, entry.meta, self.node)
            for entry in self._tracked.values()
        )
        return PresenceSync(self.node, joins, reply)

    # --- This relay's members --------------------------------------------------

    def join(self, topic: str, member: M, options: Options, now: float) -> Joined[M]:
        """``Topics.join``, and the state to push after the reply if ``options.presence``.

        A second join of ``member`` leaves first (what it tracked leaves), as
        Phoenix closes a channel joined again.
        """
        update = self.leave(topic, member)
        membership = self.topics.join(topic, member, options, now)
        state = self.state(topic) if membership.presence else None
        return Joined(membership, state, update)

    def track(self, topic: str, member: M, payload: object, now: float) -> PresenceUpdate[M]:
        """Track ``payload`` for ``member`` in ``topic``, under its membership's key;
        its previous meta there is replaced, and tracking turns presence on for it.

        ClientError, checked in this order: ``not_joined``; ``invalid_message``
        if ``payload`` is not an object; ``payload_too_large`` past
        ``max_meta_bytes`` (of JSON); then, unless it is the payload already
        tracked (an empty update): ``too_many_presences`` for a new meta in a
        topic holding ``max_metas_per_topic``; ``rate_limited`` past
        ``max_tracks`` per ``track_window``. A refused track changes nothing.
        """
        accepted = self._admit(topic, member, payload, now)
        if accepted is None:
            return PresenceUpdate()
        membership = self.topics.membership(topic, member)
        assert membership is not None  # _admit saw it
        membership.presence = True
        old = self._tracked.get((topic, member))
        meta: dict[str, Any] = {**accepted, "phx_ref": self._new_ref()}
        if old is not None:
            meta["phx_ref_prev"] = old.ref
        entry: _Entry[M] = _Entry(topic, membership.presence_key, meta, accepted, self.node)
        changes: _Changes[M] = _Changes()
        events: list[PresenceEvent] = []
        if old is not None:
            self._remove(old)
            changes.leave(old)
            events.append(PresenceLeave(topic, old.key, old.ref, self.node))
        self._add(entry)
        self._tracked[topic, member] = entry
        changes.join(entry)
        events.append(PresenceJoin(topic, entry.key, meta, self.node))
        return PresenceUpdate(changes.diffs(self.topics), events)

    def untrack(self, topic: str, member: M) -> PresenceUpdate[M]:
        """Remove what ``member`` tracked in ``topic`` (an empty update if nothing);
        the member stays, and receives the diff if it has presence."""
        changes: _Changes[M] = _Changes()
        events = self._untrack(topic, member, changes)
        return PresenceUpdate(changes.diffs(self.topics), events)

    def leave(self, topic: str, member: M) -> PresenceUpdate[M]:
        """``Topics.leave``, and the leave of what ``member`` tracked there."""
        changes: _Changes[M] = _Changes()
        events = self._leave(topic, member, changes)
        return PresenceUpdate(changes.diffs(self.topics), events)

    def leave_all(self, member: M) -> PresenceUpdate[M]:
        """``member`` is gone (its socket closed): it leaves every topic."""
        changes: _Changes[M] = _Changes()
        events = []
        for topic in self.topics.topics_of(member):
            events += self._leave(topic, member, changes)
        return PresenceUpdate(changes.diffs(self.topics), events)

    # --- Other relays ----------------------------------------------------------

    def apply_remote(self, events: Iterable[PresenceEvent], now: float) -> PresenceUpdate[M]:
        """Apply the events of one message from other relays (``peers.decode``).

        Every event says its node is alive at ``now``. A join already known, a
        leave of an unknown meta, and one's own events change nothing; a node
        may only remove its own metas. The diffs of the whole message are
        merged: a replaced meta shows as one diff here as on its relay. The
        update's events are this relay's sync, asking for the others', if a
        node was new; or answering, if a sync asked for it.
        """
        changes: _Changes[M] = _Changes()
        new_nodes: list[str] = []
        asked = False
        for event in events:
            node = event.node
            if node == self.node:
                continue
            if isinstance(event, NodeGone):  # heard of only to be forgotten
                self._forget(node, changes)
                if node in new_nodes:
                    new_nodes.remove(node)
                continue
            if node not in self._heard and node not in new_nodes:
                new_nodes.append(node)
            self._heard[node] = now
            match event:
                case PresenceJoin():
                    self._join_remote(event, changes)
                case PresenceLeave(ref=ref):
                    self._leave_remote(node, ref, changes)
                case PresenceSync(joins=joins, reply=reply):
                    asked = asked or reply
                    refs = {join.meta["phx_ref"] for join in joins}
                    for ref in [r for r in self._nodes.get(node, {}) if r not in refs]:
                        self._leave_remote(node, ref, changes)
                    for join in joins:
                        self._join_remote(join, changes)
                case _:  # a Heartbeat: the node lives, which is said above
                    pass
        answer: list[PresenceEvent] = []
        if new_nodes or asked:
            answer.append(self.sync(reply=bool(new_nodes)))
        return PresenceUpdate(changes.diffs(self.topics), answer, new_nodes)

    def expire(self, now: float) -> PresenceUpdate[M]:
        """Drop the metas of the relays not heard from for ``node_timeout`` seconds.

        Call it every few seconds; the shell then pushes the diffs.
        """
        changes: _Changes[M] = _Changes()
        for node, heard in list(self._heard.items()):
            if now - heard > self.node_timeout:
                self._forget(node, changes)
        return PresenceUpdate(changes.diffs(self.topics))

    # --- Inside ----------------------------------------------------------------

    def _new_ref(self) -> str:
        # Unique across relays and restarts: the node is random (peers.new_node_id).
        self._next_ref += 1
        return f"{self.node}-{self._next_ref}"

    def _admit(self, topic: str, member: M, payload: object, now: float) -> Meta | None:
        """The payload to track, without the refs; None if it is tracked already.
        ClientError if it may not be (``track``'s list)."""
        if self.topics.membership(topic, member) is None:
            raise ClientError(ErrorCode.NOT_JOINED, f"not joined to {topic!r}")
        if not isinstance(payload, dict):
            raise ClientError(ErrorCode.INVALID_MESSAGE, "a presence track payload is an object")
        payload = {name: value for name, value in payload.items() if name not in REFS}
        size = payload_size(payload)
        if size > self.max_meta_bytes:
            raise ClientError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"a presence payload is at most {self.max_meta_bytes} bytes, not {size}",
            )
        old = self._tracked.get((topic, member))
        if old is not None and old.payload == payload:
            return None
        if old is None and self.count(topic) >= self.max_metas_per_topic:
            raise ClientError(
                ErrorCode.TOO_MANY_PRESENCES,
                f"{topic!r} holds {self.max_metas_per_topic} presences, the most it may",
            )
        bucket = self._tracks.get((topic, member))
        if bucket is None:
            rate = self.max_tracks / self.track_window
            bucket = self._tracks[topic, member] = TokenBucket(rate, self.max_tracks, now)
        if not bucket.take(now):
            raise ClientError(
                ErrorCode.RATE_LIMITED,
                f"more than {self.max_tracks} presence tracks per {self.track_window:g} s",
            )
        return payload

    def _leave(self, topic: str, member: M, changes: _Changes[M]) -> list[PresenceEvent]:
        self.topics.leave(topic, member)
        self._tracks.pop((topic, member), None)
        return self._untrack(topic, member, changes)

    def _untrack(self, topic: str, member: M, changes: _Changes[M]) -> list[PresenceEvent]:
        entry = self._tracked.pop((topic, member), None)
        if entry is None:
            return []
        self._remove(entry)
        changes.leave(entry)
        return [PresenceLeave(topic, entry.key, entry.ref, self.node)]

    def _join_remote(self, event: PresenceJoin, changes: _Changes[M]) -> None:
        entry: _Entry[M] = _Entry(event.topic, event.key, event.meta, None, event.node)
        if entry.ref in self._refs:
            return
        self._add(entry)
        self._nodes.setdefault(event.node, {})[entry.ref] = None
        changes.join(entry)

    def _leave_remote(self, node: str, ref: str, changes: _Changes[M]) -> None:
        entry = self._refs.get(ref)
        if entry is None or entry.node != node:
            return
        self._remove(entry)
        del self._nodes[node][ref]
        changes.leave(entry)

    def _forget(self, node: str, changes: _Changes[M]) -> None:
        """``node`` is gone: its metas leave, and it is a new node if heard again."""
        for ref in self._nodes.pop(node, {}):
            entry = self._refs[ref]
            self._remove(entry)
            changes.leave(entry)
        self._heard.pop(node, None)

    def _add(self, entry: _Entry[M]) -> None:
        self._keys.setdefault(entry.topic, {}).setdefault(entry.key, []).append(entry)
        self._counts[entry.topic] = self._counts.get(entry.topic, 0) + 1
        self._refs[entry.ref] = entry

    def _remove(self, entry: _Entry[M]) -> None:
        keys = self._keys[entry.topic]
        entries = keys[entry.key]
        entries.remove(entry)
        if not entries:
            del keys[entry.key]
        if not keys:
            del self._keys[entry.topic]
        self._counts[entry.topic] -= 1
        if not self._counts[entry.topic]:
            del self._counts[entry.topic]
        del self._refs[entry.ref]
