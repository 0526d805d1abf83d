"""Revoked tokens: ``relay.revoke(subject, reason)`` in SQL, as the relay applies it.

A revocation covers every token of its subject (a token's ``sub``) issued
(``iat``) at or before the revocation, which is stamped at the commit of the
transaction that revoked: a user moved to another tenant, signed out or
deactivated. Those tokens are refused, and connections that hold one are
closed, until the user comes with a newer token. A token without ``iat``
cannot be shown newer: a revoked subject's are refused.

The relay learns of revocations from the log, in order with the changes
(``relay/sql/v2_objects.sql``: a marker per revocation), and loads the
newest of each subject when its reader connects.
"""

from collections.abc import Iterable
from dataclasses import dataclass

from relay.core.tokens import Identity
from relay.core.types import UserId


@dataclass(frozen=True, slots=True)
class Revocation:
    subject: UserId
    revoked_at: float  # unix time
    reason: str


class Revocations:
    def __init__(self) -> None:
        self._revoked_at: dict[UserId, float] = {}

    def __len__(self) -> int:
        return len(self._revoked_at)

    def add(self, revocation: Revocation) -> None:
        """Record a revocation; an older one of the same subject changes nothing."""
        known = self._revoked_at.get(revocation.subject)
        if known is None or revocation.revoked_at > known:
            self._revoked_at[revocation.subject] = revocation.revoked_at

    def load(self, revocations: Iterable[Revocation]) -> None:
        """Every subject's newest revocation, as the database has them."""
        for revocation in revocations:
            self.add(revocation)

    def covers(self, identity: Identity) -> bool:
        """Whether this identity's token is revoked."""
        revoked_at = self._revoked_at.get(identity.subject)
        if revoked_at is None:
            return False
        return identity.issued_at is None or identity.issued_at <= revoked_at
