"""Resume tokens: proof that a subscriber with these claims has been covered from a position.

A resume must show one: replaying the log to anyone who names a position would
show rows from before they held their claims (a new employee, another tenant),
deleted rows and old versions. A token says that this subject, with these
claims, received everything from position ``from`` on, as of time ``at``; it
is signed with a secret that every relay of a deployment shares, so any of
them can check it.

A resume also needs the token the client authenticates with now to have been
issued (``iat``) no later than ``at``: its claims then held from before the
client was last known covered until now. A user who went from tenant A to B
and back to A holds a token for A issued after the move back, later than any
resume token of A's first period: those rows written while they held B are
never replayed. (A token that stays valid after its claims changed is revoked
with ``relay.revoke``: relay/core/revocations.py.)
"""

import base64
import hashlib
import hmac
import math
import re
import secrets

import orjson

from relay.core.positions import Position, Stream
from relay.core.tokens import Identity

TOKEN = re.compile(r"([0-9]{1,18})\.([0-9]{1,18})\.([0-9]{1,15})\.([A-Za-z0-9_-]{24})")


class ResumeTokens:
    def __init__(self, stream: Stream, secret: bytes | None = None) -> None:
        self.stream = stream  # its log's id is signed: a token is good for that log only
        # Without a shared secret, one per process: its tokens are good on this relay only.
        self._secret = secret or secrets.token_bytes(32)

    def issue(self, identity: Identity, covered_from: Position, now: float) -> str:
        """A token saying that ``identity`` has been covered from ``covered_from`` until ``now``.

        ``now`` is at least the identity's ``iat``: a token issued a moment in
        the future, by a clock ahead of ours, has been shown to us by now.
        ``at`` is in milliseconds (rounded up), as ``iat`` may be fractional.
        """
        at = math.ceil(max(now, identity.issued_at or 0) * 1000)
        tick, seq = covered_from
        return f"{tick}.{seq}.{at}.{self._mac(identity, tick, seq, at)}"

    def refusal(self, identity: Identity, token: str | None, since: Position) -> str | None:
        """Why ``token`` does not let ``identity`` resume after ``since``; None if it does."""
        match = TOKEN.fullmatch(token or "")
        if match is None:
            return "resume_refused"
        tick, seq, at = int(match[1]), int(match[2]), int(match[3])
        if not hmac.compare_digest(match[4], self._mac(identity, tick, seq, at)):
            return "resume_refused"
        if since < Position(tick, seq):
            return "resume_refused"
        if identity.issued_at is None or identity.issued_at * 1000 > at:
            return "resume_refused"
        return None

    def _mac(self, identity: Identity, tick: int, seq: int, at: int) -> str:
        message = orjson.dumps(
            [self.stream.log_id, identity.subject, identity.grants, tick, seq, at]
        )
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()
