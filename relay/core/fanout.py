"""The fan-out: changes in, frames out, to exactly the subscribers who may see them.

``Fanout`` holds what every session shares: the published tables, the
policies, the subscription index, the history and the stream. The listener
feeds it changes in commit order (``ingest``, ``reset_table``, ``gap_all``);
for each change it finds the candidate subscriptions in the index, decides for
each what its subscriber may see, encodes each distinct frame body once, and
hands frames to the sessions. The shell then writes the sessions of
``take_dirty()`` to their sockets. Sessions ask it, as their ``Hub``, for what
needs that shared state (admission, subscribing, refiling).

No I/O here, and nothing waits: a change is dispatched completely, or not at
all, between two frames of any client. That is what makes "an ack means live"
hold: a subscription is in the index before its ack is queued, so every change
processed after it, which includes every change committed after the client
read the ack, reaches it.
"""

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from relay.core import protocol
from relay.core.changes import Change, TableReset
from relay.core.connections import Connections
from relay.core.history import Gap, History
from relay.core.index import SubscriptionIndex
from relay.core.limits import Limits
from relay.core.policy import PolicySet, describe_problems
from relay.core.positions import Stream
from relay.core.resume import ResumeTokens
from relay.core.session import CloseRequest, Session
from relay.core.stats import Stats
from relay.core.subscription import (
    Subscription,
    Variant,
    Visibility,
    encode_body,
    from_request,
)
from relay.core.tables import Table
from relay.core.tokens import Identity, TokenVerifier
from relay.core.types import ConnectionId, SubscriptionId


@dataclass(frozen=True)
class Replay:
    """A resume's outcome: the frames it replays and where coverage starts, or why it is lost."""

    lost: str | None
    frames: list[bytes] = field(default_factory=list)
    covered_from: int = 0


class Fanout:
    def __init__(
        self,
        policies: PolicySet,
        verifier: TokenVerifier,
        limits: Limits | None = None,
        history_size: int = 10_000,
        history_max_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.policies = policies
        self.verifier = verifier
        self.limits = limits or Limits()
        self.tables: dict[str, Table] = {}
        self.broken_policies: set[str] = set()
        self.index = SubscriptionIndex()
        self.history = History(history_size, history_max_bytes)
        self.stream = Stream()
        self.resume_tokens = ResumeTokens(self.stream.epoch)
        self.stats = Stats()
        self.connections = Connections(self.limits, self.stats)
        self._dirty: dict[Session, None] = {}
        self._next_connection = 1

    # --- Sessions --------------------------------------------------------------

    def open_session(self, now: float) -> Session:
        """A session for a new connection; closed at once when the relay is full."""
        connection_id = ConnectionId(f"{self.stream.epoch}-{self._next_connection}")
        self._next_connection += 1
        session = Session(self, connection_id, now)
        refusal = self.connections.add(session)
        if refusal is not None:
            session.close(*refusal)
        return session

    def close_session(self, session: Session, reason: str) -> None:
        """The connection is gone: forget the session.

        ``reason`` says why, for the metrics, unless the relay ended it itself.
        """
        self.detach(session)
        self.connections.count_end(session, reason)
        self.connections.forget(session)

    def take_dirty(self) -> list[Session]:
        """The sessions with frames to send since the last call."""
        dirty = list(self._dirty)
        self._dirty.clear()
        return dirty

    def _mark(self, session: Session) -> None:
        if session.has_data():
            self._dirty[session] = None

    # --- What sessions ask (session.Hub) -------------------------------------------

    def position(self) -> str:
        return self.stream.position()

    def admit(self, session: Session, identity: Identity) -> CloseRequest | None:
        return self.connections.admit(session, identity)

    def detach(self, session: Session) -> None:
        for dropped in session.forget_all():
            self.index.remove(dropped)
        if session.close_request is not None:
            self.connections.count_end(session, session.close_request[1].value)
        self.connections.release(session)
        self._mark(session)

    def subscribe(
        self, session: Session, subscription_id: SubscriptionId, request: protocol.Subscribe
    ) -> tuple[Subscription, list[bytes]]:
        identity = session.identity
        assert identity is not None
        new = from_request(
            request, subscription_id, session.id, self.tables, self.policies, self.broken_policies
        )
        since = self.stream.parse(request.since) if request.since is not None else None
        self.index.add(new, new.bounds(identity))
        replay = self.plan_replay(new, identity, since, request.resume_token) if since else None
        resumed = replay is not None and replay.lost is None
        covered_from = replay.covered_from if replay is not None and resumed else self.stream.offset
        position = self.stream.position()
        frames = [
            protocol.subscribed(
                request.ref,
                id=subscription_id,
                table=new.table.name,
                events=sorted(request.events),
                position=position,
                resumed=resumed,
                resume_token=self.resume_tokens.issue(identity, covered_from),
            )
        ]
        if replay is not None and replay.lost is not None:
            self.stats.gaps[replay.lost] += 1
            frames.append(protocol.gap([subscription_id], replay.lost, position))
        elif replay is not None:
            # The replay, then its end: from here the client's resume point for
            # this subscription is the ack's position.
            frames += replay.frames
            self.stats.messages_out += len(replay.frames)
            frames.append(protocol.replayed(subscription_id, position))
        return new, frames

    def unsubscribe(self, subscription: Subscription) -> None:
        self.index.remove(subscription)

    def claims_changed(self, session: Session) -> None:
        identity = session.identity
        assert identity is not None
        for filed in session.subscriptions.values():
            self.index.remove(filed)
            self.index.add(filed, filed.bounds(identity))
        ids = sorted(session.subscriptions)
        if ids:
            reason = "claims_changed"
            self.stats.gaps[reason] += 1
            session.send(protocol.gap(ids, reason, self.stream.position()))

    # --- Resuming ----------------------------------------------------------------------

    def plan_replay(
        self,
        subscription: Subscription,
        identity: Identity,
        since: tuple[str, int],
        token: str | None,
    ) -> Replay:
        """What ``subscription`` gets of the history after ``since``: its frames, or why not.

        A resume is made whole only in this stream, with a resume token of the
        same user and claims covering ``since``, while the history holds
        everything after it, without a gap, within ``max_replay_bytes``.
        """
        epoch, after = since
        if epoch != self.stream.epoch:
            return Replay(lost="epoch_changed")
        covered_from = self.resume_tokens.covered_from(identity, token)
        if covered_from is None or after < covered_from:
            return Replay(lost="resume_refused")
        if not self.history.covers(after, self.stream.offset):
            return Replay(lost="history_exceeded")
        frames: list[bytes] = []
        size = 0
        for offset, entry in self.history.since(after):
            if isinstance(entry, Gap):
                if entry.table in (None, subscription.table.name):
                    return Replay(lost=entry.reason)
                continue
            if entry.table != subscription.table.name:
                continue
            variant = subscription.receives(identity, entry, {})
            if variant is None:
                continue
            body = encode_body(entry, self.stream.position(offset), variant)
            frame = subscription.prefix + body
            size += len(frame)
            if size > self.limits.max_replay_bytes:
                return Replay(lost="replay_too_large")
            frames.append(frame)
        return Replay(lost=None, frames=frames, covered_from=after)

    # --- Tables ----------------------------------------------------------------------

    def set_tables(self, tables: Mapping[str, Table]) -> list[str]:
        """What is published now; returns the policies' problems with it, in words.

        A table whose policy does not fit it is refused to subscribers (deny by
        default); subscriptions to a table no longer published are ended.
        """
        self.tables = dict(tables)
        found = self.policies.problems(self.tables)
        self.broken_policies = {name for name, _ in found}
        for session in self.connections.sessions.values():
            for filed in list(session.subscriptions.values()):
                name = filed.table.name
                if name not in self.tables or name in self.broken_policies:
                    session.forget(filed.id)
                    self.index.remove(filed)
                    session.send(protocol.unsubscribed(None, filed.id, "table_unpublished"))
                    self._mark(session)
        return describe_problems(found)

    # --- The stream ------------------------------------------------------------------

    def ingest(self, change: Change) -> None:
        """One committed change, in commit order."""
        offset = self.stream.advance()
        self.history.append(offset, change)
        self.stats.changes_in[(change.table, change.op)] += 1
        candidates = self.index.candidates(change)
        if candidates:
            self._deliver(change, self.stream.position(offset), candidates)

    def reset_table(self, reset: TableReset) -> None:
        """The table was truncated, or some of its changes were not sent."""
        self.gap_table(reset.table, reset.reason)

    def gap_table(self, table: str, reason: str) -> None:
        """Changes of ``table`` may have been lost (a large change that could not be read)."""
        self._gap(table, reason, self.index.of_table(table))

    def gap_all(self, reason: str) -> None:
        """Changes may have been lost for everyone (the listener reconnected, overflow)."""
        self._gap(
            None,
            reason,
            [
                filed
                for session in self.connections.sessions.values()
                for filed in session.subscriptions.values()
            ],
        )

    def _gap(self, table: str | None, reason: str, subscriptions: Iterable[Subscription]) -> None:
        offset = self.stream.advance()
        self.history.append(offset, Gap(table, reason))
        self.stats.gaps[reason] += 1
        by_session: dict[ConnectionId, list[str]] = {}
        for filed in subscriptions:
            by_session.setdefault(filed.connection, []).append(filed.id)
        position = self.stream.position(offset)
        sessions = self.connections.sessions
        for connection, ids in by_session.items():
            session = sessions[connection]
            session.send(protocol.gap(sorted(ids), reason, position))
            self._mark(session)

    def _deliver(
        self, change: Change, position: str, subscriptions: Iterable[Subscription]
    ) -> None:
        visibility: Visibility = {}
        sessions = self.connections.sessions
        # Most sessions match a change with one subscription: keep that case
        # to one tuple and a precomputed prefix; group only when there are more.
        matched: dict[Session, list[tuple[Subscription, Variant]]] = {}
        for candidate in subscriptions:
            session = sessions[candidate.connection]
            identity = session.identity
            assert identity is not None  # filed only once signed in, removed on close
            variant = candidate.receives(identity, change, visibility)
            if variant is not None:
                found = matched.get(session)
                if found is None:
                    matched[session] = [(candidate, variant)]
                else:
                    found.append((candidate, variant))
        if not matched:
            return
        bodies: dict[Variant, bytes] = {}
        sent = 0
        dirty = self._dirty
        for session, hits in matched.items():
            if len(hits) == 1:
                candidate, variant = hits[0]
                body = bodies.get(variant)
                if body is None:
                    body = bodies[variant] = encode_body(change, position, variant)
                session.send_change(candidate.prefix + body)
                sent += 1
            else:
                by_variant: dict[Variant, list[bytes]] = {}
                for candidate, variant in hits:
                    by_variant.setdefault(variant, []).append(candidate.id_json)
                for variant, ids in by_variant.items():
                    body = bodies.get(variant)
                    if body is None:
                        body = bodies[variant] = encode_body(change, position, variant)
                    session.send_change(protocol.change_prefix(ids) + body)
                    sent += 1
            dirty[session] = None
        self.stats.messages_out += sent
