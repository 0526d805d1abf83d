"""The portal's settings: read once from the environment at start-up."""

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from portal import relay_token

# htmx and the relay's JavaScript client (clients/js, linked by package.json), as
# `npm ci` installs them next to the checkout.
CHECKOUT = Path(__file__).resolve().parent.parent
DEFAULT_HTMX = CHECKOUT / "node_modules" / "htmx.org" / "dist" / "htmx.min.js"
DEFAULT_RELAY_CLIENT = CHECKOUT / "node_modules" / "@nexus-relay" / "client" / "src" / "index.js"


class SettingsError(Exception):
    """A setting that is missing or cannot be used; the message names the variable."""


@dataclass(frozen=True)
class PortalSettings:
    database_url: str
    session_secret: str = field(repr=False)
    relay_jwt_secret: str = field(repr=False)  # shared with the relay: RELAY_JWT_SECRET
    relay_url: str = "ws://127.0.0.1:8765/"  # as the browser reaches it
    relay_token_ttl: int = relay_token.LIFETIME
    relay_audience: str = relay_token.AUDIENCE
    cookie_secure: bool = True
    session_max_age: int = 8 * 3600
    # Failed logins: after this many in the window, each further attempt waits.
    login_free_failures: int = 5
    login_window: int = 15 * 60
    htmx_path: Path = DEFAULT_HTMX
    relay_client_path: Path = DEFAULT_RELAY_CLIENT


def from_env(env: Mapping[str, str] | None = None) -> PortalSettings:
    env = os.environ if env is None else env

    def required(name: str, fallback: str | None = None) -> str:
        value = env.get(name, "").strip() or (env.get(fallback, "").strip() if fallback else "")
        if not value:
            raise SettingsError(f"{name} is not set")
        return value

    def integer(name: str, default: int, minimum: int = 1) -> int:
        raw = env.get(name, "").strip()
        if not raw:
            return default
        if not raw.isdigit() or int(raw) < minimum:
            raise SettingsError(f"{name}={raw!r} must be a whole number, at least {minimum}")
        return int(raw)

    secure = env.get("NEXUS_COOKIE_SECURE", "true").strip().lower()
    if secure not in ("true", "false"):
        raise SettingsError("NEXUS_COOKIE_SECURE must be true or false")
    session_secret = required("NEXUS_SESSION_SECRET")
    relay_secret = required("NEXUS_RELAY_JWT_SECRET", "RELAY_JWT_SECRET")
    for name, value in (
        ("NEXUS_SESSION_SECRET", session_secret),
        ("NEXUS_RELAY_JWT_SECRET", relay_secret),
    ):
        if len(value.encode()) < 32:
            raise SettingsError(f"{name} must be at least 32 bytes")
    relay_url = env.get("NEXUS_RELAY_URL", "").strip() or "ws://127.0.0.1:8765/"
    if not relay_url.startswith(("ws://", "wss://")):
        raise SettingsError("NEXUS_RELAY_URL must be a ws:// or wss:// URL")
    return PortalSettings(
        database_url=required("DATABASE_URL"),
        session_secret=session_secret,
        relay_jwt_secret=relay_secret,
        relay_url=relay_url,
        relay_token_ttl=integer("NEXUS_RELAY_TOKEN_TTL_S", relay_token.LIFETIME, 30),
        relay_audience=env.get("NEXUS_RELAY_AUDIENCE", "").strip() or relay_token.AUDIENCE,
        cookie_secure=secure == "true",
        session_max_age=integer("NEXUS_SESSION_MAX_AGE_S", 8 * 3600, 60),
        login_free_failures=integer("NEXUS_LOGIN_FREE_FAILURES", 5),
        htmx_path=Path(env.get("NEXUS_HTMX_PATH", "").strip() or DEFAULT_HTMX),
        relay_client_path=Path(
            env.get("NEXUS_RELAY_CLIENT_PATH", "").strip() or DEFAULT_RELAY_CLIENT
        ),
    )
