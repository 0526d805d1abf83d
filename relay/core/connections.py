"""Who is connected: the one owner of connection counting.

Every session by id; which have authenticated, and for which user (the limits
on connections count these); and how each ended, counted once in the
disconnect metrics whether the relay or the client ended it.
"""

from collections import Counter

from relay.core.errors import CloseCode, ErrorCode
from relay.core.limits import Limits
from relay.core.session import BaseSession, CloseRequest
from relay.core.stats import Stats
from relay.core.tokens import Identity
from relay.core.types import ConnectionId, UserId


class Connections:
    def __init__(self, limits: Limits, stats: Stats) -> None:
        self.limits = limits
        self.stats = stats
        self.sessions: dict[ConnectionId, BaseSession] = {}
        self._users: dict[BaseSession, UserId] = {}  # the authenticated ones, and their user
        self._per_user: Counter[UserId] = Counter()
        self._counted: set[BaseSession] = set()  # ended and counted, not yet forgotten

    def __len__(self) -> int:
        return len(self.sessions)

    @property
    def authenticated(self) -> int:
        return len(self._users)

    def of_user(self, subject: UserId) -> int:
        return self._per_user.get(subject, 0)

    def sessions_of(self, subject: UserId) -> list[BaseSession]:
        """The authenticated sessions of this user."""
        if subject not in self._per_user:
            return []
        return [session for session, user in self._users.items() if user == subject]

    def add(self, session: BaseSession) -> CloseRequest | None:
        """Hold a new connection's session; or why it may not connect (the relay is full).

        Connections not yet authenticated have their own, smaller allowance:
        idle sockets without a token cannot crowd out those with one.
        """
        if len(self.sessions) - len(self._users) >= self.limits.max_unauthenticated:
            return (
                CloseCode.TOO_MANY_CONNECTIONS,
                ErrorCode.TOO_MANY_CONNECTIONS,
                "too many connections waiting to authenticate",
            )
        self.sessions[session.id] = session
        return None

    def admit(self, session: BaseSession, identity: Identity) -> CloseRequest | None:
        """Count ``session`` as authenticated for ``identity``; or why it may not be."""
        assert session not in self._users
        limits = self.limits
        if len(self._users) >= limits.max_connections:
            return (
                CloseCode.TOO_MANY_CONNECTIONS,
                ErrorCode.TOO_MANY_CONNECTIONS,
                f"the relay holds its maximum of {limits.max_connections} connections",
            )
        if self._per_user[identity.subject] >= limits.max_connections_per_user:
            return (
                CloseCode.TOO_MANY_USER_CONNECTIONS,
                ErrorCode.TOO_MANY_USER_CONNECTIONS,
                f"at most {limits.max_connections_per_user} connections per user",
            )
        self._users[session] = identity.subject
        self._per_user[identity.subject] += 1
        return None

    def release(self, session: BaseSession) -> None:
        """``session`` no longer counts against its user's connections."""
        subject = self._users.pop(session, None)
        if subject is not None:
            self._per_user[subject] -= 1
            if self._per_user[subject] <= 0:
                del self._per_user[subject]

    def count_end(self, session: BaseSession, reason: str) -> None:
        """Count how ``session`` ended, once: when the relay ends it (a slow
        consumer may take its close timeout to go), or when its socket is gone."""
        if session not in self._counted:
            self._counted.add(session)
            self.stats.disconnects[reason] += 1

    def forget(self, session: BaseSession) -> None:
        """The connection is gone."""
        self.release(session)
        self.sessions.pop(session.id, None)
        self._counted.discard(session)
