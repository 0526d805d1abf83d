"""The relay's core: changes in, frames out, to exactly the subscribers who may see them.

``Fanout`` holds what every session shares: the published tables, the
policies, the subscription index, the history and the stream position. The
listener feeds it changes in commit order (``ingest``, ``reset_table``,
``gap_all``); for each change it finds the candidate subscriptions in the
index, decides for each what its subscriber may see, encodes each distinct
frame body once, and appends frames to the sessions' outboxes. The shell then
writes the outboxes of ``take_dirty()`` to their sockets.

No I/O here, and nothing waits: a change is dispatched completely, or not at
all, between two frames of any client. That is what makes "an ack means live"
hold: a subscription is in the index before its ack is in the outbox, so every
change processed after it, which includes every change committed after the
client read the ack, reaches it.

A stream position is ``"<epoch>:<offset>"``: the epoch names this process's
stream (a restart begins another), the offset grows by one per change or gap,
in commit order.
"""

import base64
import hashlib
import hmac
import re
import secrets
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from relay import policy, protocol
from relay.changes import Change, Row, TableReset
from relay.errors import ClientError, CloseCode, ErrorCode
from relay.history import Gap, History
from relay.ids import ConnectionId, UserId
from relay.index import Subscription, SubscriptionIndex
from relay.policy import PolicySet
from relay.session import Session
from relay.tables import Table
from relay.tokens import Identity, TokenVerifier


@dataclass(frozen=True)
class Limits:
    # Connections
    max_connections: int = 10_000  # authenticated
    max_unauthenticated: int = 1_000  # connected, not yet authenticated
    max_connections_per_user: int = 20
    max_subscriptions_per_connection: int = 50
    # Outbound traffic
    max_outbox_bytes: int = 8 * 1024 * 1024  # frames queued for one connection in one batch
    max_replay_bytes: int = 4 * 1024 * 1024  # what one resume may replay; beyond: gap
    # Inbound traffic
    max_messages_per_second: float = 20.0
    max_frame_bytes: int = 64 * 1024
    # Timeouts
    auth_timeout: float = 5.0
    token_expiry_warning: float = 60.0


class Stats:
    """Plain counters, read by the metrics endpoint at scrape time (cheaper than
    updating Prometheus metrics per message)."""

    def __init__(self) -> None:
        self.changes_in: Counter[tuple[str, str]] = Counter()
        self.messages_out = 0
        self.gaps: Counter[str] = Counter()
        self.disconnects: Counter[str] = Counter()


POSITION_OFFSET = re.compile(r"[0-9]{1,18}")  # ASCII digits: str.isdigit() also takes "²"


@dataclass(frozen=True)
class Replay:
    """A resume's outcome: the frames it replays and where coverage starts, or why it is lost."""

    lost: str | None
    frames: list[bytes] = field(default_factory=list)
    covered_from: int = 0


# What a subscriber receives of one change: the op it sees, whether the frame
# carries the new row and the old row, and the columns selected.
Variant = tuple[str, bool, bool, tuple[str, ...] | None]


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
        # Signs resume tokens; per process, like the epoch: a token is good in this stream only.
        self._resume_key = secrets.token_bytes(32)
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.sessions: dict[ConnectionId, Session] = {}
        self._users: Counter[UserId] = Counter()
        self.authenticated = 0
        self._dirty: dict[Session, None] = {}
        self._next_connection = 1
        self.stats = Stats()

    # --- Sessions --------------------------------------------------------------

    def open_session(self, now: float) -> Session:
        """A session for a new connection; closed at once when the relay is full."""
        connection_id = ConnectionId(f"{self.epoch}-{self._next_connection}")
        self._next_connection += 1
        session = Session(self, connection_id, now)
        # Not yet authenticated connections have their own, smaller allowance:
        # idle sockets without a token cannot crowd out those with one.
        if len(self.sessions) - self.authenticated >= self.limits.max_unauthenticated:
            session.close(
                CloseCode.TOO_MANY_CONNECTIONS,
                ErrorCode.TOO_MANY_CONNECTIONS,
                "too many connections waiting to authenticate",
            )
        else:
            self.sessions[connection_id] = session
        return session

    def has_room(self) -> bool:
        """Whether one more connection may authenticate."""
        return self.authenticated < self.limits.max_connections

    def close_session(self, session: Session, reason: str) -> None:
        """The connection is gone: forget the session.

        ``reason`` says why, for the metrics, unless the relay ended it itself.
        """
        self.detach(session)
        self.sessions.pop(session.id, None)
        if not session.counted:
            session.counted = True
            self.stats.disconnects[reason] += 1

    def attach(self, session: Session) -> None:
        """``session`` has authenticated: it counts against its user's limit."""
        assert session.identity is not None
        assert not session.attached
        session.attached = True
        self.authenticated += 1
        self._users[session.identity.subject] += 1

    def detach(self, session: Session) -> None:
        """``session`` receives nothing more: unfile its subscriptions, free its user's slot."""
        for subscription in session.subscriptions.values():
            self.index.remove(subscription)
        session.subscriptions.clear()
        if session.close_request is not None and not session.counted:
            # Counted when the relay ends it, not when the socket is finally
            # gone: a slow consumer may take its close timeout to go.
            session.counted = True
            self.stats.disconnects[session.close_request[1].value] += 1
        if session.attached:
            assert session.identity is not None
            session.attached = False
            self.authenticated -= 1
            subject = session.identity.subject
            self._users[subject] -= 1
            if self._users[subject] <= 0:
                del self._users[subject]
        self._mark(session)

    def connections_of(self, subject: UserId) -> int:
        return self._users.get(subject, 0)

    def take_dirty(self) -> list[Session]:
        """The sessions with frames to send since the last call."""
        dirty = list(self._dirty)
        self._dirty.clear()
        return dirty

    def _mark(self, session: Session) -> None:
        if session.outbox:
            self._dirty[session] = None

    # --- Subscriptions -----------------------------------------------------------

    def file(self, subscription: Subscription) -> None:
        identity = subscription.session.identity
        assert identity is not None
        self.index.add(subscription, subscription.index_keys(identity))

    def unfile(self, subscription: Subscription) -> None:
        self.index.remove(subscription)

    def refile(self, session: Session) -> None:
        """The session's claims changed: file its subscriptions under the new ones."""
        for subscription in session.subscriptions.values():
            self.index.remove(subscription)
            self.file(subscription)

    def position(self, offset: int | None = None) -> str:
        return f"{self.epoch}:{self.offset if offset is None else offset}"

    def parse_position(self, text: str) -> tuple[str, int]:
        epoch, sep, offset = text.partition(":")
        if not sep or not epoch or not POSITION_OFFSET.fullmatch(offset):
            raise ClientError(
                ErrorCode.INVALID_POSITION, f"{text!r} is not a position (epoch:offset)"
            )
        value = int(offset)
        if epoch == self.epoch and value > self.offset:
            raise ClientError(ErrorCode.INVALID_POSITION, f"{text!r} is ahead of the stream")
        return epoch, value

    # --- Resuming ---------------------------------------------------------------------

    def resume_token(self, identity: Identity, from_offset: int) -> str:
        """Proof that a subscriber with these claims has been covered from ``from_offset``.

        A resume must show one: replaying history to anyone who names a
        position would show rows from before they held their claims (a new
        employee, another tenant), deleted rows and old versions.
        """
        return f"{from_offset}.{self._resume_mac(identity, from_offset)}"

    def _resume_mac(self, identity: Identity, from_offset: int) -> str:
        message = orjson.dumps([self.epoch, identity.subject, identity.key, from_offset])
        digest = hmac.new(self._resume_key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()

    def _covered_from(self, identity: Identity, token: str | None) -> int | None:
        offset, _, mac = (token or "").partition(".")
        if not POSITION_OFFSET.fullmatch(offset):
            return None
        if not hmac.compare_digest(mac, self._resume_mac(identity, int(offset))):
            return None
        return int(offset)

    def plan_replay(
        self, subscription: Subscription, since: tuple[str, int], token: str | None
    ) -> Replay:
        """What ``subscription`` gets of the history after ``since``: its frames, or why not.

        A resume is made whole only in this stream, with a resume token of the
        same user and claims covering ``since``, while the history holds
        everything after it, without a gap, within ``max_replay_bytes``.
        """
        identity = subscription.session.identity
        assert identity is not None
        epoch, after = since
        if epoch != self.epoch:
            return Replay(lost="epoch_changed")
        covered_from = self._covered_from(identity, token)
        if covered_from is None or after < covered_from:
            return Replay(lost="resume_refused")
        if not self.history.covers(after, self.offset):
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
            variant = self._decide(subscription, entry, {})
            if variant is None:
                continue
            frame = subscription.prefix + self._body(entry, self.position(offset), variant)
            size += len(frame)
            if size > self.limits.max_replay_bytes:
                return Replay(lost="replay_too_large")
            frames.append(frame)
        return Replay(lost=None, frames=frames, covered_from=after)

    # --- Tables ------------------------------------------------------------------

    def set_tables(self, tables: Mapping[str, Table]) -> list[str]:
        """What is published now; returns the policies' problems with it, in words.

        A table whose policy does not fit it is refused to subscribers (deny by
        default); subscriptions to a table no longer published are ended.
        """
        self.tables = dict(tables)
        found = self.policies.problems(self.tables)
        self.broken_policies = {name for name, _ in found}
        for session in self.sessions.values():
            for subscription in list(session.subscriptions.values()):
                name = subscription.table.name
                if name not in self.tables or name in self.broken_policies:
                    del session.subscriptions[subscription.id]
                    self.index.remove(subscription)
                    session.outbox.append(
                        protocol.unsubscribed(None, subscription.id, "table_unpublished")
                    )
                    self._mark(session)
        return policy.describe_problems(found)

    # --- The stream ----------------------------------------------------------------

    def ingest(self, change: Change) -> None:
        """One committed change, in commit order."""
        self.offset += 1
        self.history.append(self.offset, change)
        self.stats.changes_in[(change.table, change.op)] += 1
        candidates = self.index.candidates(change)
        if candidates:
            self._deliver(change, self.position(), candidates)

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
            [s for session in self.sessions.values() for s in session.subscriptions.values()],
        )

    def _gap(self, table: str | None, reason: str, subscriptions: Iterable[Subscription]) -> None:
        self.offset += 1
        self.history.append(self.offset, Gap(table, reason))
        self.stats.gaps[reason] += 1
        by_session: dict[Session, list[str]] = {}
        for subscription in subscriptions:
            by_session.setdefault(subscription.session, []).append(subscription.id)
        position = self.position()
        for session, ids in by_session.items():
            session.outbox.append(protocol.gap(sorted(ids), reason, position))
            self._mark(session)

    def gap_session(self, session: Session, reason: str) -> None:
        """Tell one session that all its subscriptions may show stale rows (its claims changed)."""
        ids = sorted(session.subscriptions)
        if ids:
            self.stats.gaps[reason] += 1
            session.outbox.append(protocol.gap(ids, reason, self.position()))
            self._mark(session)

    def _deliver(
        self, change: Change, position: str, subscriptions: Iterable[Subscription]
    ) -> None:
        visibility: dict[Any, tuple[bool, bool]] = {}
        # Most sessions match a change with one subscription: keep that case
        # to one tuple and a precomputed prefix; group only when there are more.
        matched: dict[Session, list[tuple[Subscription, Variant]]] = {}
        for subscription in subscriptions:
            variant = self._decide(subscription, change, visibility)
            if variant is not None:
                found = matched.get(subscription.session)
                if found is None:
                    matched[subscription.session] = [(subscription, variant)]
                else:
                    found.append((subscription, variant))
        if not matched:
            return
        bodies: dict[Variant, bytes] = {}
        sent = 0
        dirty = self._dirty
        for session, hits in matched.items():
            queued = session.outbox_bytes
            if len(hits) == 1:
                subscription, variant = hits[0]
                body = bodies.get(variant)
                if body is None:
                    body = bodies[variant] = self._body(change, position, variant)
                frame = subscription.prefix + body
                session.outbox.append(frame)
                queued += len(frame)
                sent += 1
            else:
                by_variant: dict[Variant, list[bytes]] = {}
                for subscription, variant in hits:
                    by_variant.setdefault(variant, []).append(subscription.id_json)
                for variant, ids in by_variant.items():
                    body = bodies.get(variant)
                    if body is None:
                        body = bodies[variant] = self._body(change, position, variant)
                    frame = protocol.change_prefix(ids) + body
                    session.outbox.append(frame)
                    queued += len(frame)
                    sent += 1
            session.outbox_bytes = queued
            if queued > self.limits.max_outbox_bytes:
                session.drop_slow()
            dirty[session] = None
        self.stats.messages_out += sent

    @staticmethod
    def _decide(
        subscription: Subscription, change: Change, visibility: dict[Any, tuple[bool, bool]]
    ) -> Variant | None:
        """What ``subscription`` receives of ``change``, as a variant; None: nothing.

        - INSERT: the new row, if visible and matching the filter.
        - DELETE: the old row, if it was visible and matching (authorized
          against the old row, so no primary key leaks to anyone else).
        - UPDATE: the new row if it is visible and matching, with the old row
          only if that was visible too; if only the old row was, ``LEAVE``
          with the old row: the row left the subscriber's view, and the new
          row is not revealed.
        """
        op = change.op
        if op not in subscription.events:
            return None
        session = subscription.session
        identity = session.identity
        assert identity is not None  # filed only once signed in, removed on close
        key = identity.key
        seen = visibility.get(key)
        if seen is None:
            if identity.bypass:
                seen = (change.new is not None, change.old is not None)
            else:
                evaluate = subscription.policy.evaluate
                claims = identity.claims
                seen = (
                    change.new is not None and evaluate(change.new, change.parents, claims) is True,
                    change.old is not None
                    and evaluate(change.old, change.parents_of_old, claims) is True,
                )
            visibility[key] = seen
        new_visible, old_visible = seen
        row_filter = subscription.filter
        select = subscription.select
        if op == "INSERT":
            if new_visible and (row_filter is None or row_filter.match(_row(change.new)) is True):
                return ("INSERT", True, False, select)
            return None
        if op == "DELETE":
            if old_visible and (row_filter is None or row_filter.match(_row(change.old)) is True):
                return ("DELETE", False, True, select)
            return None
        new_in = new_visible and (row_filter is None or row_filter.match(_row(change.new)) is True)
        if new_in:
            return ("UPDATE", True, old_visible, select)
        if old_visible and (row_filter is None or row_filter.match(_row(change.old)) is True):
            return ("LEAVE", False, True, select)
        return None

    @staticmethod
    def _body(change: Change, position: str, variant: Variant) -> bytes:
        op, with_new, with_old, select = variant
        return protocol.change_body(
            change.table,
            op,
            change.timestamp,
            position,
            _project(change.new, select) if with_new else None,
            _project(change.old, select) if with_old else None,
        )


def _row(row: Row | None) -> Row:
    assert row is not None
    return row


def _project(row: Row | None, select: tuple[str, ...] | None) -> Row | None:
    if row is None or select is None:
        return row
    return {column: row[column] for column in select if column in row}
