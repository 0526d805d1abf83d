"""Signing in: passwords (argon2), sessions, failed-login slowdown."""

import contextlib
import hashlib
import secrets
import time
from collections import OrderedDict, deque
from dataclasses import dataclass, replace

import anyio
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import func, insert, select, update
from starlette.requests import HTTPConnection

from portal import schema
from portal.database import Claims, Database

HASHER = PasswordHasher()
# Verified when the email is unknown, so that a wrong email costs as much time
# as a wrong password and does not reveal which emails exist.
_DUMMY_HASH = HASHER.hash(secrets.token_urlsafe(16))
# argon2 is slow on purpose (tens of ms of CPU): off the event loop, a few at a time.
_HASHING = anyio.CapacityLimiter(4)


@dataclass(frozen=True)
class SignedIn:
    """A user and their session, as the cookie names them (``live_user`` checks it)."""

    user_id: str
    tenant_id: str
    session_id: str  # random; the database keeps its SHA-256 only
    # When the database began the check that found the session live (unix
    # time, the database's clock); None until checked.
    checked_at: float | None = None

    @property
    def claims(self) -> Claims:
        return Claims(self.user_id, self.tenant_id)

    @property
    def session_hash(self) -> str:
        return hashlib.sha256(self.session_id.encode()).hexdigest()


def _verify(password_hash: str, password: str) -> bool:
    try:
        return HASHER.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


async def sign_in(db: Database, email: str, password: str, session_seconds: int) -> SignedIn | None:
    """A new session for the user whose email and password these are, or None."""
    email = email.strip().lower()
    async with db.for_login(email) as conn:
        row = (
            await conn.execute(
                select(
                    schema.users.c.id,
                    schema.users.c.tenant_id,
                    schema.users.c.password_hash,
                    schema.users.c.deactivated_at,
                ).where(schema.users.c.email == email)
            )
        ).first()
        stored = row.password_hash if row else _DUMMY_HASH
        valid = await anyio.to_thread.run_sync(_verify, stored, password, limiter=_HASHING)
        # A deactivated user is refused as a wrong password is: the answer says
        # nothing about the account (and the database would refuse the session).
        if row is None or not valid or row.deactivated_at is not None:
            return None
        if HASHER.check_needs_rehash(row.password_hash):
            rehashed = await anyio.to_thread.run_sync(HASHER.hash, password, limiter=_HASHING)
            await conn.execute(
                update(schema.users)
                .where(schema.users.c.id == row.id)
                .values(password_hash=rehashed)
            )
        user = SignedIn(row.id, row.tenant_id, secrets.token_urlsafe(32))
        await conn.execute(
            insert(schema.sessions).values(
                id_hash=user.session_hash,
                user_id=user.user_id,
                tenant_id=user.tenant_id,
                expires_at=func.now() + func.make_interval(0, 0, 0, 0, 0, 0, session_seconds),
            )
        )
        return user


def from_cookie(request: HTTPConnection) -> SignedIn | None:
    """Who the signed session cookie names; not yet checked against the database."""
    session = request.session
    values = (session.get("user_id"), session.get("tenant_id"), session.get("sid"))
    if all(isinstance(value, str) for value in values):
        return SignedIn(*values)  # type: ignore[arg-type]
    return None


async def live_user(
    request: HTTPConnection, db: Database, *, hold_session: bool = False
) -> SignedIn | None:
    """The signed-in user, if their session is live and they are still who it says.

    A session ended by signing out, expired, of a deleted or deactivated user,
    or of a user moved to another tenant since, is not. The user's
    ``checked_at`` is when the database began the check (its
    ``statement_timestamp()``: before the check read anything).

    With ``hold_session``, the check locks the session row (``FOR SHARE``)
    until its transaction ends: a move, deactivation, deletion or sign-out
    that has written the row but not yet committed is waited for, and then
    seen. What is issued on the strength of such a check (a relay token, with
    ``iat`` = ``checked_at``) is then either refused by the revocation that
    follows (issued before it) or issued after the change, never from a state
    that the revoking transaction has already left.
    """
    user = from_cookie(request)
    if user is None:
        return None
    sessions, users = schema.sessions, schema.users
    query = (
        select(func.extract("epoch", func.statement_timestamp()))
        .select_from(sessions.join(users, users.c.id == sessions.c.user_id))
        .where(
            sessions.c.id_hash == user.session_hash,
            sessions.c.revoked_at.is_(None),
            sessions.c.expires_at > func.now(),
            users.c.tenant_id == sessions.c.tenant_id,
            users.c.deactivated_at.is_(None),
        )
    )
    if hold_session:
        query = query.with_for_update(read=True, of=sessions)
    async with db.as_user(user.claims) as conn:
        checked_at = await conn.scalar(query)
    if checked_at is None:
        request.session.clear()
        return None
    return replace(user, checked_at=float(checked_at))


async def end_session(db: Database, user: SignedIn) -> None:
    """Revoke the session in the database: its cookie, and any copy of it, signs in no more."""
    async with db.as_user(user.claims) as conn:
        await conn.execute(
            update(schema.sessions)
            .where(schema.sessions.c.id_hash == user.session_hash)
            .values(revoked_at=func.now())
        )


def start_session(request: HTTPConnection, user: SignedIn) -> None:
    """Make the session cookie name this user, with a new CSRF token."""
    request.session.clear()  # nothing of the anonymous session carries over
    request.session.update(
        {
            "user_id": user.user_id,
            "tenant_id": user.tenant_id,
            "sid": user.session_id,
            "csrf": secrets.token_urlsafe(32),
        }
    )


class LoginThrottle:
    """Slows down repeated failed logins, per account and per client address.

    After ``free_failures`` failures within ``window`` seconds, each further
    attempt must wait 2, 4, 8... seconds (at most 15 minutes) after the last
    failure. An attempt counts from the moment it starts, so that concurrent
    guesses cannot all slip through; one that succeeds is taken back. At most
    ``max_keys`` accounts and addresses are remembered (the oldest go first).
    Held in memory: one portal process; behind several, use a shared store or
    the load balancer's rate limits.
    """

    def __init__(
        self, free_failures: int = 5, window: float = 900.0, max_keys: int = 100_000
    ) -> None:
        self.free_failures = free_failures
        self.window = window
        self.max_keys = max_keys
        self._attempts: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, key: str, now: float) -> deque[float] | None:
        attempts = self._attempts.get(key)
        if attempts is None:
            return None
        while attempts and attempts[0] < now - self.window:
            attempts.popleft()
        if not attempts:
            del self._attempts[key]
            return None
        return attempts

    def retry_after(self, keys: list[str], now: float | None = None) -> float:
        """Seconds to wait before another attempt with these keys; 0: go ahead."""
        now = time.monotonic() if now is None else now
        wait = 0.0
        for key in keys:
            attempts = self._recent(key, now)
            if attempts is None:
                continue
            excess = len(attempts) - self.free_failures
            if excess >= 0:
                delay = min(2.0 ** (excess + 1), 900.0)
                wait = max(wait, attempts[-1] + delay - now)
        return max(wait, 0.0)

    def attempt(self, keys: list[str], now: float | None = None) -> float:
        """Count an attempt as failed until it succeeds; its time, for ``succeeded``."""
        now = time.monotonic() if now is None else now
        for key in keys:
            self._attempts.setdefault(key, deque()).append(now)
            self._attempts.move_to_end(key)
        while len(self._attempts) > self.max_keys:
            self._attempts.popitem(last=False)
        return now

    def succeeded(self, account_key: str, address_key: str, attempted_at: float) -> None:
        """The account starts afresh; the address only loses this attempt."""
        self._attempts.pop(account_key, None)
        attempts = self._attempts.get(address_key)
        if attempts is not None:
            with contextlib.suppress(ValueError):  # already gone with the window
                attempts.remove(attempted_at)
