"""The relay's settings: read once from the environment at start-up.

Every setting has a default and a line in the README's table. Reading fails
with ``ConfigError`` naming the variable, never later on first use.
"""

import hashlib
import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from relay.core.errors import ConfigError
from relay.core.limits import Limits


@dataclass(frozen=True)
class TokenSettings:
    """How tokens are verified (relay.core.tokens.TokenVerifier)."""

    jwt_secret: str | None = field(default=None, repr=False)
    jwks_file: Path | None = None
    jwks_url: str | None = None
    jwks_refresh: float = 300.0
    algorithms: tuple[str, ...] | None = None
    audience: str | None = "nexus-relay"
    issuer: str | None = None
    leeway: float = 30.0


@dataclass(frozen=True)
class Settings:
    database_url: str
    policy_file: Path
    # Listening
    host: str = "127.0.0.1"
    port: int = 8765
    path: str = "/"
    # Supabase Realtime's protocol, for supabase-js and the other official
    # clients (relay.core.supabase); empty: not served.
    supabase_path: str | None = "/realtime/v1/websocket"
    ops_host: str = "127.0.0.1"
    ops_port: int = 8766
    allowed_origins: tuple[str, ...] = ()
    tokens: TokenSettings = field(default_factory=TokenSettings)
    # Limits
    limits: Limits = field(default_factory=Limits)
    max_send_buffer_bytes: int = 1024 * 1024
    # Timeouts
    ping_interval: float = 20.0
    ping_timeout: float = 20.0
    drain_window: float = 10.0  # SIGTERM: connections closed over this many seconds
    # The change log
    poll_interval: float = 0.25  # reads without the doorbell: the most a missed bell costs
    log_retention: float = 3600.0
    log_max_bytes: int = 1024**3
    resume_secret: bytes | None = field(default=None, repr=False)
    # The history in memory: a cache of the log
    history_size: int = 10_000
    history_max_bytes: int = 64 * 1024 * 1024
    # Several relays: broadcast and presence through Redis; None: this relay alone
    redis_url: str | None = field(default=None, repr=False)
    redis_heartbeat: float = 5.0  # silent 3 heartbeats, a relay's presence expires
    # The services' broadcast API (ops port): messages per second, the relay's whole
    api_broadcasts_per_second: float = 100.0
    # Logging
    log_level: str = "INFO"
    log_format: str = "json"


class _Environment:
    """Typed reads of environment variables; a bad value is a ``ConfigError`` naming it."""

    def __init__(self, env: Mapping[str, str]) -> None:
        self.env = env

    def text(self, name: str) -> str | None:
        return self.env.get(name, "").strip() or None

    def text_or(self, name: str, default: str) -> str:
        return self.text(name) or default

    def number(self, name: str, default: float, minimum: float = 0) -> float:
        raw = self.text(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if value < minimum:
            raise ConfigError(f"{name}={raw!r} must be at least {minimum:g}")
        return value

    def integer(self, name: str, default: int, minimum: int = 0) -> int:
        value = self.number(name, default, minimum)
        if value != int(value):
            raise ConfigError(f"{name} must be a whole number")
        return int(value)

    def listing(self, name: str) -> tuple[str, ...]:
        raw = self.text(name) or ""
        return tuple(item.strip() for item in raw.split(",") if item.strip())


def from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Settings from ``env`` (default: ``os.environ``)."""
    read = _Environment(os.environ if env is None else env)
    database_url = read.text("RELAY_DATABASE_URL") or read.text("DATABASE_URL")
    if database_url is None:
        raise ConfigError(
            "RELAY_DATABASE_URL (or DATABASE_URL) is not set: which PostgreSQL to listen to?"
        )
    policy_file = read.text("RELAY_POLICY_FILE")
    if policy_file is None:
        raise ConfigError(
            "RELAY_POLICY_FILE is not set: without policies nobody may subscribe to anything"
        )
    max_send_buffer_bytes = read.integer(
        "RELAY_MAX_SEND_BUFFER_BYTES", Settings.max_send_buffer_bytes, 4096
    )
    limits = _limits(read, max_send_buffer_bytes)
    if limits.max_change_bytes >= max_send_buffer_bytes:
        raise ConfigError(
            f"RELAY_MAX_CHANGE_BYTES ({limits.max_change_bytes}) must be less than"
            f" RELAY_MAX_SEND_BUFFER_BYTES ({max_send_buffer_bytes}): one change would"
            " close its readers as slow consumers"
        )
    path = read.text_or("RELAY_PATH", Settings.path)
    supabase_path = (
        read.text("RELAY_SUPABASE_PATH")
        if "RELAY_SUPABASE_PATH" in read.env
        else Settings.supabase_path
    )
    if supabase_path is not None and (supabase_path == path or not supabase_path.startswith("/")):
        raise ConfigError(
            f"RELAY_SUPABASE_PATH={supabase_path!r} must be a path starting with / and"
            f" differ from RELAY_PATH ({path!r})"
        )
    log_format = read.text_or("RELAY_LOG_FORMAT", Settings.log_format).lower()
    if log_format not in ("json", "text"):
        raise ConfigError("RELAY_LOG_FORMAT must be json or text")
    return Settings(
        database_url=database_url,
        policy_file=Path(policy_file),
        host=read.text_or("RELAY_HOST", Settings.host),
        port=read.integer("RELAY_PORT", Settings.port),
        path=path,
        supabase_path=supabase_path,
        ops_host=read.text_or("RELAY_OPS_HOST", Settings.ops_host),
        ops_port=read.integer("RELAY_OPS_PORT", Settings.ops_port),
        allowed_origins=_origins(read.listing("RELAY_ALLOWED_ORIGINS")),
        tokens=_tokens(read),
        limits=limits,
        max_send_buffer_bytes=max_send_buffer_bytes,
        ping_interval=read.number("RELAY_PING_INTERVAL_S", Settings.ping_interval, 1),
        ping_timeout=read.number("RELAY_PING_TIMEOUT_S", Settings.ping_timeout, 1),
        drain_window=read.number("RELAY_DRAIN_S", Settings.drain_window, 0),
        poll_interval=read.number("RELAY_POLL_INTERVAL_S", Settings.poll_interval, 0.01),
        log_retention=read.number("RELAY_LOG_RETENTION_S", Settings.log_retention, 60),
        log_max_bytes=read.integer("RELAY_LOG_MAX_BYTES", Settings.log_max_bytes, 1024**2),
        resume_secret=_resume_secret(read),
        history_size=read.integer("RELAY_HISTORY_SIZE", Settings.history_size),
        history_max_bytes=read.integer("RELAY_HISTORY_MAX_BYTES", Settings.history_max_bytes, 0),
        redis_url=_redis_url(read.text("RELAY_REDIS_URL")),
        redis_heartbeat=read.number("RELAY_REDIS_HEARTBEAT_S", Settings.redis_heartbeat, 0.1),
        api_broadcasts_per_second=read.number(
            "RELAY_API_BROADCASTS_PER_SECOND", Settings.api_broadcasts_per_second, 1
        ),
        log_level=read.text_or("RELAY_LOG_LEVEL", Settings.log_level).upper(),
        log_format=log_format,
    )


def tokens_from_env(env: Mapping[str, str] | None = None) -> TokenSettings:
    """How the relay verifies tokens, from ``env`` (default: ``os.environ``) alone."""
    return _tokens(_Environment(os.environ if env is None else env))


def _secret(read: _Environment, name: str) -> str | None:
    """``NAME``, or the content of the file that ``NAME_FILE`` names."""
    value = read.text(name)
    path = read.text(f"{name}_FILE")
    if path is not None:
        try:
            value = Path(path).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"{name}_FILE: cannot read {path}: {exc.strerror}") from exc
    return value


def _resume_secret(read: _Environment) -> bytes | None:
    """Signs resume tokens, which every relay of a deployment must share; by
    default derived from the JWT secret, which they share already."""
    secret = _secret(read, "RELAY_RESUME_SECRET")
    if secret is not None:
        if len(secret.encode()) < 32:
            raise ConfigError("RELAY_RESUME_SECRET must be at least 32 bytes")
        return secret.encode()
    jwt_secret = _secret(read, "RELAY_JWT_SECRET")
    if jwt_secret is None:
        return None
    return hmac.new(jwt_secret.encode(), b"nexus-relay resume tokens", hashlib.sha256).digest()


def _redis_url(url: str | None) -> str | None:
    """A Redis URL as redis-py reads it: redis://, rediss:// (TLS) or unix://."""
    if url is not None and urlsplit(url).scheme not in ("redis", "rediss", "unix"):
        raise ConfigError(
            "RELAY_REDIS_URL must be a redis://, rediss:// or unix:// URL"
            " (e.g. redis://redis.internal:6379/0)"
        )
    return url


def _origins(origins: tuple[str, ...]) -> tuple[str, ...]:
    """Origins as browsers send them: ``scheme://host[:port]``, lower case, nothing after."""
    for origin in origins:
        try:
            parts = urlsplit(origin)
            parts.port  # noqa: B018 - raises ValueError for a port that is not one
        except ValueError:
            parts = None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or parts.username is not None
            or origin != f"{parts.scheme}://{parts.netloc}"
            or origin != origin.lower()
        ):
            raise ConfigError(
                f"RELAY_ALLOWED_ORIGINS: {origin!r} is not an origin as browsers send it:"
                " scheme://host[:port] in lower case, without a path or a trailing slash"
                " (e.g. https://portal.example.com)"
            )
    return origins


def _tokens(read: _Environment) -> TokenSettings:
    secret = _secret(read, "RELAY_JWT_SECRET")
    if secret is not None and len(secret.encode()) < 32:
        name = "RELAY_JWT_SECRET_FILE" if read.text("RELAY_JWT_SECRET_FILE") else "RELAY_JWT_SECRET"
        raise ConfigError(f"{name}: the JWT secret must be at least 32 bytes (RFC 7518, 3.2)")
    jwks_file = read.text("RELAY_JWKS_FILE")
    # The audience is checked by default: a token for another application
    # (another Supabase project sharing a secret, say) is not one for the
    # relay. "none" turns the check off.
    audience = read.text_or("RELAY_JWT_AUDIENCE", "nexus-relay")
    return TokenSettings(
        jwt_secret=secret,
        jwks_file=Path(jwks_file) if jwks_file else None,
        jwks_url=read.text("RELAY_JWKS_URL"),
        jwks_refresh=read.number("RELAY_JWKS_REFRESH_S", TokenSettings.jwks_refresh, 10),
        algorithms=read.listing("RELAY_JWT_ALGORITHMS") or None,
        audience=None if audience == "none" else audience,
        issuer=read.text("RELAY_JWT_ISSUER"),
        leeway=read.number("RELAY_JWT_LEEWAY_S", TokenSettings.leeway),
    )


def _limits(read: _Environment, max_send_buffer_bytes: int) -> Limits:
    default = Limits()
    # By default a quarter of the send buffer at most: one change never fills it.
    max_change_bytes = min(default.max_change_bytes, max_send_buffer_bytes // 4)
    return Limits(
        max_connections=read.integer("RELAY_MAX_CONNECTIONS", default.max_connections, 1),
        max_unauthenticated=read.integer(
            "RELAY_MAX_UNAUTHENTICATED", default.max_unauthenticated, 1
        ),
        max_outbox_bytes=read.integer("RELAY_MAX_OUTBOX_BYTES", default.max_outbox_bytes, 65536),
        max_replay_bytes=read.integer("RELAY_MAX_REPLAY_BYTES", default.max_replay_bytes, 0),
        max_change_bytes=read.integer("RELAY_MAX_CHANGE_BYTES", max_change_bytes, 1024),
        max_connections_per_user=read.integer(
            "RELAY_MAX_CONNECTIONS_PER_USER", default.max_connections_per_user, 1
        ),
        max_subscriptions_per_connection=read.integer(
            "RELAY_MAX_SUBSCRIPTIONS_PER_CONNECTION", default.max_subscriptions_per_connection, 1
        ),
        max_messages_per_second=read.number(
            "RELAY_MAX_MESSAGES_PER_SECOND", default.max_messages_per_second, 1
        ),
        max_frame_bytes=read.integer("RELAY_MAX_FRAME_BYTES", default.max_frame_bytes, 1024),
        auth_timeout=read.number("RELAY_AUTH_TIMEOUT_S", default.auth_timeout, 0.1),
        token_expiry_warning=read.number(
            "RELAY_TOKEN_EXPIRY_WARNING_S", default.token_expiry_warning
        ),
        max_channels_per_connection=read.integer(
            "RELAY_MAX_CHANNELS_PER_CONNECTION", default.max_channels_per_connection, 1
        ),
        join_error_delay=read.number("RELAY_JOIN_ERROR_DELAY_S", default.join_error_delay, 0),
    )
