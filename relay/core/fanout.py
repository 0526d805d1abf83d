"""The fan-out: changes in, frames out, to exactly the subscribers who may see them.

``Fanout`` holds what every session shares: the published tables, the
policies, the subscription index, the history and the stream. The log
reader feeds it the log's changes in order (``ingest``, ``reset``, ``end_tick``); for
each change it finds the candidate subscriptions in the index, decides for
each what its subscriber may see, encodes each distinct frame body once, and
hands frames to the sessions. The shell then writes the sessions of
``take_dirty()`` to their sockets. Sessions ask it, as their ``Hub``, for what
needs that shared state (admission, subscribing, refreshing).

No I/O here, and nothing waits: a change is dispatched completely, or not at
all, between two frames of any client. That is what makes "an ack means live"
hold: a subscription is in the index before its ack is queued, so every change
processed after it, which includes every change committed after the client
read the ack, reaches it.

Gaps are gathered, not sent at once: a subscription hears of every gap of one
batch in one ``gap`` frame, sent when the batch is written, whose position is
where a re-fetch made then is complete (``take_dirty``).
"""

from collections.abc import Iterable, Mapping
from typing import Any

from relay.core import protocol, topic_rules
from relay.core.changes import Change, LoggedBroadcast, LoggedChange, TableReset
from relay.core.connections import Connections
from relay.core.errors import CloseCode, ErrorCode
from relay.core.history import Entry, Gap, History
from relay.core.index import SubscriptionIndex
from relay.core.limits import Limits
from relay.core.policy import ParentColumns, PolicySet, Problem, find_problems
from relay.core.positions import Position, Stream
from relay.core.replays import Replay
from relay.core.resume import ResumeTokens
from relay.core.revocations import Revocation, Revocations
from relay.core.rooms import Rooms
from relay.core.session import BaseSession, CloseRequest, Session
from relay.core.stats import Stats
from relay.core.subscription import (
    RELAY_WIRE,
    Subscription,
    Variant,
    Visibility,
    Wire,
    encode_body,
    from_request,
)
from relay.core.supabase import SupabaseSession
from relay.core.tables import Table
from relay.core.tokens import Identity, TokenVerifier
from relay.core.topic_rules import Admitted, Refused
from relay.core.types import ConnectionId, SubscriptionId


class Fanout:
    def __init__(
        self,
        policies: PolicySet,
        verifier: TokenVerifier,
        limits: Limits | None = None,
        history_size: int = 10_000,
        history_max_bytes: int = 64 * 1024 * 1024,
        resume_secret: bytes | None = None,
    ) -> None:
        self.policies = policies
        self.verifier = verifier
        self.limits = limits or Limits()
        self.tables: dict[str, Table] = {}
        self.tables_by_oid: dict[int, Table] = {}
        self.parent_columns: dict[tuple[str, str], frozenset[str]] = {}
        # Published tables whose policy does not fit them: refused to subscribers.
        self.broken_policies: set[str] = set()
        self.index = SubscriptionIndex()
        self.history = History(history_size, history_max_bytes)
        self.stream = Stream("", Position(0, 0))  # until begin()
        self.resume_tokens = ResumeTokens(self.stream, resume_secret)
        self.stats = Stats()
        self.connections = Connections(self.limits, self.stats)
        self.revocations = Revocations()
        self.rooms = Rooms(self._mark)
        self.replays: dict[Subscription, Replay] = {}
        self._replay_requests: list[Replay] = []  # for the shell: from the log
        self._gaps: dict[ConnectionId, dict[SubscriptionId, str]] = {}  # of this batch
        self._dirty: dict[BaseSession, None] = {}
        self._next_connection = 1

    def begin(self, log_id: str, head: Position) -> None:
        """Read the log ``log_id`` from ``head`` on: at start, or after a jump
        (a reinstalled log, or a part of it pruned before it was read), which
        the caller tells subscribers of with ``gap_all``."""
        self.stream.log_id = log_id
        self.stream.head = head
        self.history.begin(head)

    # --- Sessions --------------------------------------------------------------

    def open_session(self, now: float) -> Session:
        """A session for a new connection; closed at once when the relay is full."""
        session = Session(self, self._connection_id(), now)
        self._hold_session(session)
        return session

    def open_supabase_session(self, now: float, vsn: str, key: str) -> SupabaseSession:
        """A session of Supabase's protocol (``relay.core.supabase``), for a socket
        opened with the project key ``key`` (verified at the handshake)."""
        session = SupabaseSession(self, self._connection_id(), now, vsn, key)
        self._hold_session(session)
        return session

    def _connection_id(self) -> ConnectionId:
        connection_id = ConnectionId(f"{self.stream.log_id}-{self._next_connection}")
        self._next_connection += 1
        return connection_id

    def _hold_session(self, session: BaseSession) -> None:
        refusal = self.connections.add(session)
        if refusal is not None:
            session.reject(refusal)

    def close_session(self, session: BaseSession, reason: str) -> None:
        """The connection is gone: forget the session.

        ``reason`` says why, for the metrics, unless the relay ended it itself.
        """
        self.detach(session)
        self.connections.count_end(session, reason)
        self.connections.forget(session)

    def take_dirty(self, gaps: bool = True) -> list[BaseSession]:
        """The sessions with frames to send since the last call; the batch's gaps
        first, unless ``gaps`` is false (the batch goes on: they wait for its end)."""
        if gaps and self._gaps:
            self._send_gaps()
        dirty = list(self._dirty)
        self._dirty.clear()
        return dirty

    def _mark(self, session: BaseSession) -> None:
        if session.has_data():
            self._dirty[session] = None

    # --- What sessions ask (session.Hub) -------------------------------------------

    def position(self) -> str:
        return self.stream.text()

    def revoked(self, identity: Identity) -> bool:
        return self.revocations.covers(identity)

    def admit(self, session: BaseSession, identity: Identity) -> CloseRequest | None:
        return self.connections.admit(session, identity)

    def release(self, session: BaseSession) -> None:
        self.connections.release(session)

    def detach(self, session: BaseSession) -> None:
        for dropped in session.forget_all():
            self.unsubscribe(dropped)
        if session.close_request is not None:
            self.connections.count_end(session, session.close_request[1].value)
        self.connections.release(session)
        self._gaps.pop(session.id, None)
        self._mark(session)

    def subscribe(
        self,
        session: BaseSession,
        subscription_id: SubscriptionId,
        request: protocol.Subscribe,
        now: float,
    ) -> tuple[Subscription, list[bytes]]:
        identity = session.identity
        assert identity is not None
        new = from_request(
            request, subscription_id, session.id, self.tables, self.policies, self.broken_policies
        )
        since = self.stream.parse(request.since) if request.since is not None else None
        self.index.add(new, new.bounds(identity))
        resumed, after_ack = False, []
        if request.since is not None:
            lost = "log_changed" if since is None else self._refusal(identity, request, since)
            if lost is not None:
                self.stats.gaps[lost] += 1
                after_ack = [protocol.gap([subscription_id], lost, self.stream.text())]
            else:
                assert since is not None
                resumed, after_ack = self._resume(new, identity, since)
        new.covered_from = since if resumed and since is not None else self.stream.head
        ack = protocol.subscribed(
            request.ref,
            id=subscription_id,
            table=new.table.name,
            events=sorted(request.events),
            position=self.stream.text(),
            resumed=resumed,
            resume_token=self.resume_tokens.issue(identity, new.covered_from, now),
        )
        return new, [ack, *after_ack]

    def file(
        self,
        session: BaseSession,
        subscription_id: SubscriptionId,
        request: protocol.Subscribe,
        wire: Wire,
        id_json: bytes,
    ) -> Subscription:
        identity = session.identity
        assert identity is not None
        new = from_request(
            request,
            subscription_id,
            session.id,
            self.tables,
            self.policies,
            self.broken_policies,
            wire=wire,
            id_json=id_json,
            supabase_filter=True,
        )
        self.index.add(new, new.bounds(identity))
        new.covered_from = self.stream.head
        return new

    def decide_topic(self, topic: str, identity: Identity, private: bool) -> Admitted | Refused:
        return topic_rules.decide(self.policies.topics, topic, identity, private=private)

    def published_events(self, table: str) -> frozenset[str]:
        found = self.tables.get(table)
        return found.events if found is not None else frozenset()

    def subscribable(self, schema: str) -> list[str]:
        return sorted(
            name
            for name in self.tables
            if name.partition(".")[0] == schema
            and name in self.policies.tables
            and name not in self.broken_policies
        )

    def _refusal(
        self, identity: Identity, request: protocol.Subscribe, since: Position
    ) -> str | None:
        return self.resume_tokens.refusal(identity, request.resume_token, since)

    def unsubscribe(self, subscription: Subscription) -> None:
        self.index.remove(subscription)
        self.replays.pop(subscription, None)

    def refresh(self, session: BaseSession, claims_changed: bool, now: float) -> dict[str, str]:
        identity = session.identity
        assert identity is not None
        if claims_changed:
            for filed in session.subscriptions.values():
                self.index.remove(filed)
                self.index.add(filed, filed.bounds(identity))
                filed.covered_from = self.stream.head
            ids = sorted(session.subscriptions)
            if ids:
                reason = "claims_changed"
                self.stats.gaps[reason] += 1
                session.send_gap(ids, reason, self.stream.text())
        tokens: dict[str, str] = {}
        for filed in session.subscriptions.values():
            assert filed.covered_from is not None
            tokens[filed.id] = self.resume_tokens.issue(identity, filed.covered_from, now)
        return tokens

    # --- Resuming ----------------------------------------------------------------------

    def _resume(
        self, subscription: Subscription, identity: Identity, since: Position
    ) -> tuple[bool, list[bytes]]:
        """Whether a resume after ``since`` is under way, and the frames that
        answer it now: the replay from memory, or its gap; or none yet, with a
        replay from the log (or, for a position ahead of this relay, once it
        gets there) to follow."""
        head = self.stream.head
        from_log = since < head and not self.history.covers(since)
        replay = Replay(
            subscription,
            since,
            head,
            self.limits.max_replay_bytes,
            from_log,
            self.limits.max_change_bytes,
        )
        if since <= head and not from_log:
            replay.add(identity, self.stream, self.history.since(since))
            self.stats.replays["memory"] += 1
            return replay.lost is None, self._finished(replay)
        self.replays[subscription] = replay
        if from_log:
            self._replay_requests.append(replay)
        return True, []

    def take_replay_requests(self) -> list[Replay]:
        """Replays to read from the log: each of (since, upto] of its table."""
        requests = [r for r in self._replay_requests if self.replays.get(r.subscription) is r]
        self._replay_requests.clear()
        return requests

    def replay_from_log(
        self, replay: Replay, entries: Iterable[tuple[Position, Entry | None]]
    ) -> None:
        """Entries of the log for ``replay``, in order; more may follow."""
        if self.replays.get(replay.subscription) is replay:
            identity = self._identity(replay.subscription)
            replay.add(identity, self.stream, entries)

    def replay_read(self, replay: Replay, lost: str | None = None) -> None:
        """The log has been read for ``replay`` (or could not be: ``lost``); send it."""
        if self.replays.get(replay.subscription) is not replay:
            return  # unsubscribed meanwhile
        if lost is not None:
            replay.interrupt(lost)
        self.stats.replays["log"] += 1
        self._send_replay(replay)

    def _send_replay(self, replay: Replay) -> None:
        del self.replays[replay.subscription]
        session = self.connections.sessions[replay.subscription.connection]
        for frame in self._finished(replay):
            session.send(frame)
        self._mark(session)

    def _finished(self, replay: Replay) -> list[bytes]:
        subscription_id = replay.subscription.id
        if replay.lost is not None:
            self.stats.gaps[replay.lost] += 1
            return [protocol.gap([subscription_id], replay.lost, self.stream.text())]
        frames = replay.frames + replay.live_frames()
        self.stats.messages_out += len(frames)
        # From here the client's resume point for this subscription is this position.
        return [*frames, protocol.replayed(subscription_id, self.stream.text())]

    def _identity(self, subscription: Subscription) -> Identity:
        identity = self.connections.sessions[subscription.connection].identity
        assert identity is not None
        return identity

    # --- Tables ----------------------------------------------------------------------

    def set_tables(
        self, tables: Mapping[str, Table], parent_columns: ParentColumns | None = None
    ) -> list[Problem]:
        """What is published now (and the columns of its parents); returns the
        policies' problems with it (``policy.find_problems``).

        A table whose policy does not fit it is refused to subscribers (deny by
        default); subscriptions to a table no longer published are ended.
        """
        self.tables = dict(tables)
        self.tables_by_oid = {t.oid: t for t in self.tables.values()}
        self.parent_columns = dict(parent_columns or {})
        found = self._problems(self.policies)
        for session in self.connections.sessions.values():
            for filed in list(session.subscriptions.values()):
                name = filed.table.name
                if name not in self.tables or name in self.broken_policies:
                    self._end(session, filed, "table_unpublished")
        return found

    def _problems(self, policies: PolicySet) -> list[Problem]:
        """The policies' problems with what is published; sets ``broken_policies``."""
        found = find_problems(policies, self.tables, self.parent_columns)
        self.broken_policies = {p.table for p in found if p.policy is not None}
        return found

    def set_policies(self, policies: PolicySet) -> list[Problem]:
        """New policies (the policy file reloaded); returns their problems
        (``policy.find_problems``).

        Every live subscription is authorized under them from the next change
        on: one whose table lost its policy ends (``policy_removed``); one
        whose policy changed is told gap (``policy_changed``: what its client
        shows was decided under the old one), as is any resume across this
        point. New claims or roles change what a token means: every
        authenticated connection is closed with 1001, to come back with its
        token read under the new ones.
        """
        old, self.policies = self.policies, policies
        found = self._problems(policies)
        verifier = self.verifier
        if (policies.claims, policies.bypass_roles, policies.policy_roles) != (
            old.claims,
            old.bypass_roles,
            old.policy_roles,
        ):
            verifier.claims = policies.claims
            verifier.bypass_roles = policies.bypass_roles
            verifier.policy_roles = policies.policy_roles
            for session in list(self.connections.sessions.values()):
                if session.identity is not None:
                    session.close(
                        CloseCode.GOING_AWAY,
                        ErrorCode.GOING_AWAY,
                        "the relay's claims or roles changed; reconnect",
                    )
                    self._mark(session)
            return found
        changed: list[Subscription] = []
        for session in self.connections.sessions.values():
            for filed in list(session.subscriptions.values()):
                policy = policies.tables.get(filed.table.name)
                if policy is None or filed.table.name in self.broken_policies:
                    self._end(session, filed, "policy_removed")
                elif policy.source != filed.policy.source:
                    assert session.identity is not None
                    self.index.remove(filed)
                    filed.policy = policy
                    self.index.add(filed, filed.bounds(session.identity))
                    filed.covered_from = self.stream.head
                    changed.append(filed)
        if changed:
            self._gap(None, "policy_changed", changed)
        return found

    def _end(self, session: BaseSession, filed: Subscription, reason: str) -> None:
        """End a subscription on the relay's side: its client hears why."""
        session.forget(filed.id)
        self.unsubscribe(filed)
        session.send_ended(filed.id, reason)
        self._mark(session)

    # --- The stream ------------------------------------------------------------------

    def take(self, logged: LoggedChange, position: Position) -> None:
        """One entry of the log, in its order: read and dispatched when its table
        has subscribers, kept as it is (for resumes) when it has none."""
        if not self.index.has(logged.table):
            self.stream.head = position
            self.history.append(position, logged)
            self.stats.changes_in[(logged.table, logged.last_op)] += 1
            return
        entry = logged.read()
        if isinstance(entry, Change):
            self.ingest(entry, position)
        elif isinstance(entry, TableReset):
            self.reset(entry, position)
        else:  # inserted and deleted in one transaction: nothing
            self.stream.head = position

    def ingest(self, change: Change, position: Position) -> None:
        """One committed change, in the log's order."""
        self.stream.head = position
        self.history.append(position, change)
        self.stats.changes_in[(change.table, change.op)] += 1
        candidates = self.index.candidates(change)
        if candidates:
            self._deliver(change, position, candidates)

    def reset(self, reset: TableReset, position: Position) -> None:
        """The table was truncated: its subscribers must re-fetch."""
        self.stream.head = position
        self.history.append(position, reset)
        self.gap_table(reset.table, reset.reason)

    def revoke(self, revocation: Revocation, position: Position) -> int:
        """A revocation, in the log's order: the connections of the tokens it
        covers close before any change committed after it is dispatched.
        Returns how many closed."""
        self.stream.head = position
        self.revocations.add(revocation)
        return self._close_revoked(self.connections.sessions_of(revocation.subject))

    def broadcast_logged(self, logged: LoggedBroadcast, position: Position, now: float) -> None:
        """A broadcast from the log (``relay.broadcast``), in the log's order: to
        this relay's members of its topic that may read broadcasts, as the
        relay's own (no sender). Every relay reads the log, so it is not shared
        with the others. ``ClientError`` if the rooms refuse it (``Topics.broadcast``):
        then it reaches nobody here."""
        self.stream.head = position
        self.rooms.broadcast(logged.topic, None, logged.event, logged.payload, now, share=False)

    def load_revocations(self, revocations: Iterable[Revocation]) -> None:
        """The revocations the database holds (the reader connected): any
        connection they cover closes now, whether or not its marker is read."""
        self.revocations.load(revocations)
        self._close_revoked(list(self.connections.sessions.values()))

    def _close_revoked(self, sessions: Iterable[BaseSession]) -> int:
        closed = 0
        for session in sessions:
            if session.identity is not None and self.revocations.covers(session.identity):
                session.revoke()
                self._mark(session)
                closed += 1
        return closed

    def end_tick(self, tick: int) -> None:
        """Every change of ``tick`` has been read: the head moves past it."""
        self.stream.head = Position.after(tick)
        for replay in [r for r in self.replays.values() if not r.from_log]:
            if replay.since <= self.stream.head:
                self.stats.replays["ahead"] += 1
                self._send_replay(replay)  # a position that was ahead, now reached

    def gap_table(self, table: str, reason: str) -> None:
        """Changes of ``table`` may have been lost (a change that could not be processed)."""
        self._gap(table, reason, self.index.of_table(table))

    def gap_all(self, reason: str) -> None:
        """Changes may have been lost for everyone."""
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
        self.history.append(self.stream.head, Gap(table, reason))
        for filed in subscriptions:
            replay = self.replays.get(filed)
            if replay is not None:  # its resume cannot be made whole: its one gap, now
                replay.interrupt(reason)
                self._send_replay(replay)
            else:
                self._gaps.setdefault(filed.connection, {}).setdefault(filed.id, reason)

    def _send_gaps(self) -> None:
        """One gap frame per session and reason for this batch, at the head."""
        sessions = self.connections.sessions
        position = self.stream.text()
        for connection, by_subscription in self._gaps.items():
            session = sessions.get(connection)
            if session is None:
                continue
            by_reason: dict[str, list[SubscriptionId]] = {}
            for subscription_id, reason in by_subscription.items():
                by_reason.setdefault(reason, []).append(subscription_id)
            for reason, ids in by_reason.items():
                self.stats.gaps[reason] += 1
                session.send_gap(sorted(ids), reason, position)
            self._mark(session)
        self._gaps.clear()

    def _deliver(
        self, change: Change, position: Position, subscriptions: Iterable[Subscription]
    ) -> None:
        visibility: Visibility = {}
        sessions = self.connections.sessions
        replays = self.replays
        # Most sessions match a change with one subscription: keep that case
        # to one tuple and a precomputed prefix; group only when there are more.
        matched: dict[BaseSession, list[tuple[Subscription, Variant]]] = {}
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
        text = self.stream.text(position)
        table = self.tables[change.table]
        max_bytes = self.limits.max_change_bytes
        bodies: dict[Any, bytes] = {}  # by variant; by (kind, variant) for other wires
        sent = 0
        dirty = self._dirty
        for session, hits in matched.items():
            if replays:  # held back while a resume is assembled
                hits = self._hold(hits, change, position, text, bodies)
            if len(hits) == 1:
                candidate, variant = hits[0]
                wire = candidate.wire
                key: Any = variant if wire is RELAY_WIRE else (wire.kind, variant)
                body = bodies.get(key)
                if body is None:
                    body = bodies[key] = wire.body(change, text, variant, table, max_bytes)
                session.send_change(candidate.prefix + body)
                sent += 1
            elif hits:
                by_variant: dict[tuple[Wire, Variant], list[bytes]] = {}
                for candidate, variant in hits:
                    by_variant.setdefault((candidate.wire, variant), []).append(candidate.id_json)
                for (wire, variant), ids in by_variant.items():
                    key = variant if wire is RELAY_WIRE else (wire.kind, variant)
                    body = bodies.get(key)
                    if body is None:
                        body = bodies[key] = wire.body(change, text, variant, table, max_bytes)
                    session.send_change(wire.prefix(ids) + body)
                    sent += 1
            dirty[session] = None
        self.stats.messages_out += sent

    def _hold(
        self,
        hits: list[tuple[Subscription, Variant]],
        change: Change,
        position: Position,
        text: str,
        bodies: dict[Any, bytes],
    ) -> list[tuple[Subscription, Variant]]:
        """Hold the frames of subscriptions being replayed; the others, to send now."""
        live = []
        for candidate, variant in hits:
            replay = self.replays.get(candidate)
            if replay is None:
                live.append((candidate, variant))
                continue
            body = bodies.get(variant)
            if body is None:
                body = bodies[variant] = encode_body(
                    change, text, variant, candidate.table, self.limits.max_change_bytes
                )
            replay.hold(position, candidate.prefix + body)
            if replay.lost is not None:  # over its budget: its gap now, not when it is sent
                self._send_replay(replay)
        return live
