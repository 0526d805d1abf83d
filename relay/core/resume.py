"""Resume tokens: proof that a subscriber with these claims has been covered from a position.

A resume must show one: replaying history to anyone who names a position would
show rows from before they held their claims (a new employee, another tenant),
deleted rows and old versions. A token is ``"<offset>.<mac>"``, the MAC over
the stream's epoch, the subject, its claims and the offset.
"""

import base64
import hashlib
import hmac
import secrets

import orjson

from relay.core.positions import OFFSET
from relay.core.tokens import Identity


class ResumeTokens:
    def __init__(self, epoch: str, secret: bytes | None = None) -> None:
        self.epoch = epoch
        # Per process by default, like the epoch: a token is good in this stream only.
        self._secret = secret or secrets.token_bytes(32)

    def issue(self, identity: Identity, from_offset: int) -> str:
        """A token saying that ``identity`` is covered from ``from_offset`` on."""
        return f"{from_offset}.{self._mac(identity, from_offset)}"

    def covered_from(self, identity: Identity, token: str | None) -> int | None:
        """The offset that ``token`` covers ``identity`` from; None if it does not."""
        offset, _, mac = (token or "").partition(".")
        if not OFFSET.fullmatch(offset):
            return None
        if not hmac.compare_digest(mac, self._mac(identity, int(offset))):
            return None
        return int(offset)

    def _mac(self, identity: Identity, from_offset: int) -> str:
        message = orjson.dumps([self.epoch, identity.subject, identity.grants, from_offset])
        digest = hmac.new(self._secret, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest[:18]).decode()
