"""Signing in: passwords (argon2), the session, failed-login slowdown, relay tokens."""

import secrets
import time
from collections import defaultdict, deque
from dataclasses import dataclass

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from starlette.requests import HTTPConnection

from portal import schema
from portal.database import Claims, Database
from portal.settings import PortalSettings

HASHER = PasswordHasher()
# Verified when the email is unknown, so that a wrong email costs as much time
# as a wrong password and does not reveal which emails exist.
_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))


@dataclass(frozen=True)
class SignedIn:
    user_id: str
    tenant_id: str

    @property
    def claims(self) -> Claims:
        return Claims(self.user_id, self.tenant_id)


async def check_password(db: Database, email: str, password: str) -> SignedIn | None:
    """The user whose email and password these are, or None."""
    email = email.strip().lower()
    async with db.for_login(email) as conn:
        row = (
            await conn.execute(
                select(
                    schema.users.c.id, schema.users.c.tenant_id, schema.users.c.password_hash
                ).where(schema.users.c.email == email)
            )
        ).first()
        try:
            HASHER.verify(row.password_hash if row else _DUMMY_HASH, password)
        except (VerificationError, InvalidHashError):
            return None
        if row is None:
            return None
        if HASHER.check_needs_rehash(row.password_hash):
            await conn.execute(
                update(schema.users)
                .where(schema.users.c.id == row.id)
                .values(password_hash=HASHER.hash(password))
            )
        return SignedIn(row.id, row.tenant_id)


def signed_in(request: HTTPConnection) -> SignedIn | None:
    """Who the session says is signed in."""
    user_id = request.session.get("user_id")
    tenant_id = request.session.get("tenant_id")
    if isinstance(user_id, str) and isinstance(tenant_id, str):
        return SignedIn(user_id, tenant_id)
    return None


def start_session(request: HTTPConnection, user: SignedIn) -> None:
    request.session.clear()  # nothing of the anonymous session carries over
    request.session.update(
        {"user_id": user.user_id, "tenant_id": user.tenant_id, "csrf": secrets.token_urlsafe(32)}
    )


class LoginThrottle:
    """Slows down repeated failed logins, per account and per client address.

    After ``free_failures`` failures within ``window`` seconds, each further
    attempt must wait 2, 4, 8... seconds (at most 15 minutes) after the last
    failure. Held in memory: one portal process; behind several, use a shared
    store or the load balancer's rate limits.
    """

    def __init__(self, free_failures: int = 5, window: float = 900.0) -> None:
        self.free_failures = free_failures
        self.window = window
        self._failures: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str, now: float) -> deque[float]:
        failures = self._failures[key]
        while failures and failures[0] < now - self.window:
            failures.popleft()
        return failures

    def retry_after(self, keys: list[str], now: float | None = None) -> float:
        """Seconds to wait before another attempt with these keys; 0: go ahead."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            failures = self._recent(key, now)
            excess = len(failures) - self.free_failures
            if excess >= 0:
                delay = min(2.0 ** (excess + 1), 900.0)
                wait = max(wait, failures[-1] + delay - now)
        return max(wait, 0.0)

    def failed(self, keys: list[str], now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        for key in keys:
            self._recent(key, now).append(now)

    def succeeded(self, keys: list[str]) -> None:
        for key in keys:
            self._failures.pop(key, None)


def relay_token(user: SignedIn, settings: PortalSettings) -> tuple[str, int]:
    """A short-lived token for the relay, with the claims its policies read."""
    now = int(time.time())
    expires_at = now + settings.relay_token_ttl
    token = jwt.encode(
        {
            "sub": user.user_id,
            "role": "authenticated",
            "aud": settings.relay_audience,
            "iss": "nexus-portal",
            "iat": now,
            "exp": expires_at,
            "app_metadata": {"user_id": user.user_id, "tenant_id": user.tenant_id},
        },
        settings.relay_jwt_secret,
        algorithm="HS256",
    )
    return token, expires_at
