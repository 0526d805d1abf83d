"""Rooms: broadcast and presence on named topics, for both protocols, without I/O.

A room is a topic (``case:CASE-AB000001``; Supabase's channel
``realtime:case:CASE-AB000001`` is the same room), its members, who is present,
and the messages they broadcast. ``Topics`` and ``Presence`` keep that state;
this class is what sessions call, and it does what they cannot alone:

- it holds each member to what its topic rule allows (``topic_rules.Actions``):
  a member that may not read broadcasts or presence receives none, one that
  may not write cannot broadcast or track;
- it hands each recipient its frames (``Member``: each protocol words them),
  and marks the recipients' sessions for the shell to write;
- it hands what the other relays must hear (``peers`` events) to ``publish``,
  which the shell sets where several relays run (through Redis), and applies
  what they say.

Who may join a room is decided before (``topic_rules.decide``, and the SQL
check a rule may have): a member reaches this class admitted.
"""

from collections.abc import Callable, Iterable
from typing import Any, Protocol

from relay.core.errors import ClientError, ErrorCode
from relay.core.peers import Broadcast, Event, PresenceEvent
from relay.core.presence import Presence, PresenceUpdate, State
from relay.core.topic_rules import Actions
from relay.core.topics import Options, Topics


class Member(Protocol):
    """A session's place in one room: what it may do, and how its frames look."""

    @property
    def actions(self) -> Actions: ...

    @property
    def owner(self) -> Any:
        """The session, for the shell to write (``Fanout.mark``)."""
        ...

    def push_broadcast(self, event: str, payload: Any) -> None: ...

    def push_presence_diff(self, diff: dict[str, State]) -> None: ...

    def __hash__(self) -> int: ...


class Rooms:
    def __init__(
        self,
        mark: Callable[[Any], None],
        *,
        topics: Topics[Member] | None = None,
        presence: Presence[Member] | None = None,
    ) -> None:
        self.topics: Topics[Member] = topics or Topics()
        self.presence: Presence[Member] = presence or Presence(self.topics)
        self.node = self.topics.node
        self._mark = mark
        # What the other relays must hear, handed over as it happens (the shell
        # queues it for Redis); None: one relay, nobody to tell.
        self.publish: Callable[[list[Event]], None] | None = None

    # --- Membership ------------------------------------------------------------

    def join(self, topic: str, member: Member, options: Options, now: float) -> State | None:
        """Add an admitted member; the ``presence_state`` to push after the join's
        reply, if it asked for presence and may read it."""
        joined = self.presence.join(topic, member, options, now)
        self._apply(joined.update)
        return joined.state if member.actions.presence_read else None

    def leave(self, topic: str, member: Member) -> None:
        self._apply(self.presence.leave(topic, member))

    def leave_all(self, member: Member) -> None:
        self._apply(self.presence.leave_all(member))

    # --- Messages --------------------------------------------------------------

    def broadcast(
        self,
        topic: str,
        sender: Member | None,
        event: str,
        payload: Any,
        now: float,
        *,
        share: bool = True,
    ) -> None:
        """``sender``'s broadcast (None: the relay's own, from SQL or HTTP) to the
        members that may read it, here and, with ``share``, on the other relays.
        Without ``share``, this relay's members only: a broadcast from the change
        log (``relay.broadcast``), which every relay reads for itself.
        ``ClientError`` if it may not be sent (``Topics.broadcast``)."""
        if sender is not None and not sender.actions.broadcast_write:
            raise ClientError(ErrorCode.TOPIC_NOT_ALLOWED, f"you may not broadcast on {topic!r}")
        recipients = self.topics.broadcast(topic, sender, event, payload, now)
        self._deliver(recipients, event, payload)
        if share:
            self._emit([Broadcast(topic, event, payload, self.node)])

    def track(self, topic: str, member: Member, payload: Any, now: float) -> None:
        """``ClientError`` if it may not (``Presence.track``)."""
        if not member.actions.presence_write:
            raise ClientError(
                ErrorCode.TOPIC_NOT_ALLOWED, f"you may not track presence on {topic!r}"
            )
        self._apply(self.presence.track(topic, member, payload, now))

    def untrack(self, topic: str, member: Member) -> None:
        self._apply(self.presence.untrack(topic, member))

    # --- Other relays ----------------------------------------------------------

    def apply_peer_events(self, events: Iterable[Event], now: float) -> None:
        """One message of the other relays' events (``peers.decode``), in order."""
        presence: list[PresenceEvent] = []
        for event in events:
            if isinstance(event, Broadcast):
                if presence:
                    self._apply(self.presence.apply_remote(presence, now))
                    presence = []
                self._deliver(self.topics.apply_remote(event), event.event, event.payload)
            else:
                presence.append(event)
        if presence:
            self._apply(self.presence.apply_remote(presence, now))

    def expire(self, now: float) -> None:
        """Forget the presence of relays not heard from for a while."""
        self._apply(self.presence.expire(now))

    # --- Inside ----------------------------------------------------------------

    def _deliver(self, recipients: Iterable[Member], event: str, payload: Any) -> None:
        for member in recipients:
            if member.actions.broadcast_read:
                member.push_broadcast(event, payload)
                self._mark(member.owner)

    def _apply(self, update: PresenceUpdate[Member]) -> None:
        for diff in update.diffs:
            payload = diff.payload()
            for member in diff.recipients:
                if member.actions.presence_read:
                    member.push_presence_diff(payload)
                    self._mark(member.owner)
        if update.events:
            self._emit(list(update.events))

    def _emit(self, events: list[Event]) -> None:
        if self.publish is not None:
            self.publish(events)
