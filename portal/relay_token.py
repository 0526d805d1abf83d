"""The portal's link to the relay: the token that lets a signed-in browser subscribe.

The relay verifies it with the secret both share (``RELAY_JWT_SECRET``), and
checks ``aud`` and ``iss`` when it is told to (``RELAY_JWT_AUDIENCE``,
``RELAY_JWT_ISSUER``; relay/tokens.py). Its policies (relay-policy.toml) read
the user from ``app_metadata``, as the database's RLS reads it from
``request.jwt.claims``; ``role`` picks the rows' policies (``authenticated``)
or none (``service_role``).

The tests mint their tokens with ``claims`` and ``encode`` too
(tests/support.py), so that the shape lives here only. Imports nothing from
the portal.
"""

import time
import urllib.parse
from typing import Any

import jwt

ISSUER = "nexus-portal"
AUDIENCE = "nexus-relay"  # the default of NEXUS_RELAY_AUDIENCE
LIFETIME = 300  # seconds; the default of NEXUS_RELAY_TOKEN_TTL_S
ROLE = "authenticated"
ALGORITHM = "HS256"


def claims(
    user_id: str | None,
    tenant_id: str | None,
    *,
    subject: str | None = None,
    role: str = ROLE,
    audience: str = AUDIENCE,
    issuer: str | None = ISSUER,
    lifetime: float = LIFETIME,
    now: float | None = None,
) -> dict[str, Any]:
    """The claims of a token for this user, issued ``now`` (default: the current time).

    ``sub`` is ``subject``, by default the user id; ``iat`` is ``now`` to the
    microsecond (a float: the relay compares it with the time of a
    revocation, ``relay.revoke``, and a token issued in the same second after
    it must pass); ``exp`` is ``lifetime`` seconds after ``now``, in whole
    seconds; ``iss`` is left out when ``issuer`` is None. A None id is a null
    claim, which the relay refuses (only the tests forge those).
    """
    now = time.time() if now is None else now
    payload: dict[str, Any] = {
        "sub": user_id if subject is None else subject,
        "role": role,
        "aud": audience,
        "iat": round(now, 6),
        "exp": int(now + lifetime),
        "app_metadata": {"user_id": user_id, "tenant_id": tenant_id},
    }
    if issuer is not None:
        payload["iss"] = issuer
    return payload


def encode(payload: dict[str, Any], secret: str, algorithm: str = ALGORITHM) -> str:
    """The signed token of these claims."""
    return jwt.encode(payload, secret, algorithm=algorithm)


def issue(
    user_id: str,
    tenant_id: str,
    *,
    secret: str,
    audience: str = AUDIENCE,
    lifetime: int = LIFETIME,
    issued_at: float | None = None,
) -> tuple[str, int]:
    """A token for this user from the portal, and when it expires (unix time).

    ``issued_at`` (default: now) must be taken before the user's tenant was
    read, so that a token made from what a move has since changed is older
    than the move's revocation (docs/architecture.md, "Revocation").
    """
    payload = claims(user_id, tenant_id, audience=audience, lifetime=lifetime, now=issued_at)
    return encode(payload, secret), payload["exp"]


# The anon key's lifetime: as Supabase's, years. It opens a socket to the
# relay's Supabase endpoint, never a row (the relay refuses its role for rows),
# so it is as public as Supabase's anon key.
ANON_KEY_LIFETIME = 10 * 365 * 24 * 3600


def anon_key(secret: str, *, issuer: str | None = ISSUER, now: float | None = None) -> str:
    """The project key that Supabase clients send as ``apikey``: role ``anon``,
    no user, no audience, signed with the relay's secret."""
    now = time.time() if now is None else now
    payload: dict[str, Any] = {
        "role": "anon",
        "iat": int(now),
        "exp": int(now + ANON_KEY_LIFETIME),
    }
    if issuer is not None:
        payload["iss"] = issuer
    return encode(payload, secret)


def supabase_urls(relay_url: str) -> tuple[str, str]:
    """For a relay reached at ``relay_url`` (ws:// or wss://): the URL to give
    supabase-js's ``createClient`` (http:// or https://, no path) and the
    realtime endpoint that supabase-js derives from it (``…/realtime/v1``)."""
    parts = urllib.parse.urlsplit(relay_url)
    http = "https" if parts.scheme == "wss" else "http"
    return (
        urllib.parse.urlunsplit((http, parts.netloc, "", "", "")),
        urllib.parse.urlunsplit((parts.scheme, parts.netloc, "/realtime/v1", "", "")),
    )
