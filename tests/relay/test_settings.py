"""Settings from the environment: defaults, and errors that name the variable."""

from pathlib import Path

import pytest

from relay.core.errors import ConfigError
from relay.settings import from_env

BASE = {"RELAY_DATABASE_URL": "postgresql://db/nexus", "RELAY_POLICY_FILE": "policy.toml"}


def test_defaults() -> None:
    settings = from_env(BASE)
    assert (settings.host, settings.port, settings.ops_port, settings.path) == (
        "127.0.0.1",
        8765,
        8766,
        "/",
    )
    assert settings.policy_file == Path("policy.toml")
    assert settings.allowed_origins == ()
    assert settings.limits.max_connections_per_user == 20
    assert settings.tokens.algorithms is None
    assert settings.tokens.audience == "nexus-relay"  # checked unless turned off
    assert from_env({**BASE, "RELAY_JWT_AUDIENCE": "none"}).tokens.audience is None
    assert settings.redis_url is None  # one relay needs nothing
    assert settings.redis_heartbeat == 5.0
    assert settings.api_broadcasts_per_second == 100.0


def test_database_url_falls_back_to_database_url() -> None:
    assert (
        from_env({"DATABASE_URL": "postgresql://x/y", "RELAY_POLICY_FILE": "p"}).database_url
        == "postgresql://x/y"
    )


def test_values_are_read() -> None:
    settings = from_env(
        {
            **BASE,
            "RELAY_PORT": "9000",
            "RELAY_ALLOWED_ORIGINS": "https://a.example, https://b.example",
            "RELAY_JWT_ALGORITHMS": "RS256,ES256",
            "RELAY_MAX_MESSAGES_PER_SECOND": "2.5",
            "RELAY_LOG_FORMAT": "TEXT",
            "RELAY_REDIS_URL": "redis://:secret@redis.internal:6379/2",
            "RELAY_REDIS_HEARTBEAT_S": "1.5",
        }
    )
    assert settings.redis_url == "redis://:secret@redis.internal:6379/2"
    assert "secret" not in repr(settings)
    assert settings.redis_heartbeat == 1.5
    assert settings.port == 9000
    assert settings.allowed_origins == ("https://a.example", "https://b.example")
    assert settings.tokens.algorithms == ("RS256", "ES256")
    assert settings.limits.max_messages_per_second == 2.5
    assert settings.log_format == "text"


def test_the_secret_can_come_from_a_file(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("s" * 40 + "\n")
    assert (
        from_env({**BASE, "RELAY_JWT_SECRET_FILE": str(tmp_path / "secret")}).tokens.jwt_secret
        == "s" * 40
    )
    with pytest.raises(ConfigError, match="RELAY_JWT_SECRET_FILE: cannot read"):
        from_env({**BASE, "RELAY_JWT_SECRET_FILE": str(tmp_path / "missing")})


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RELAY_POLICY_FILE": "p"}, "RELAY_DATABASE_URL"),
        ({"RELAY_DATABASE_URL": "postgresql://db"}, "RELAY_POLICY_FILE is not set"),
        ({**BASE, "RELAY_PORT": "http"}, "RELAY_PORT='http' is not a number"),
        ({**BASE, "RELAY_PORT": "80.5"}, "RELAY_PORT must be a whole number"),
        ({**BASE, "RELAY_MAX_CONNECTIONS": "0"}, "RELAY_MAX_CONNECTIONS='0' must be at least 1"),
        ({**BASE, "RELAY_LOG_FORMAT": "xml"}, "RELAY_LOG_FORMAT must be json or text"),
        ({**BASE, "RELAY_AUTH_TIMEOUT_S": "0"}, "RELAY_AUTH_TIMEOUT_S='0' must be at least 0.1"),
        ({**BASE, "RELAY_DRAIN_S": "-1"}, "RELAY_DRAIN_S='-1' must be at least 0"),
        ({**BASE, "RELAY_SUPABASE_PATH": "/"}, "RELAY_SUPABASE_PATH='/' must be a path"),
        ({**BASE, "RELAY_SUPABASE_PATH": "realtime"}, "RELAY_SUPABASE_PATH='realtime'"),
        ({**BASE, "RELAY_REDIS_URL": "redis.internal:6379"}, "RELAY_REDIS_URL must be a redis://"),
        ({**BASE, "RELAY_REDIS_HEARTBEAT_S": "0"}, "RELAY_REDIS_HEARTBEAT_S='0' must be at least"),
        # Browsers send scheme://host[:port]: anything else would refuse every browser.
        ({**BASE, "RELAY_ALLOWED_ORIGINS": "app.example.com"}, "RELAY_ALLOWED_ORIGINS: 'app"),
        ({**BASE, "RELAY_ALLOWED_ORIGINS": "https://a.example/"}, "RELAY_ALLOWED_ORIGINS: 'https"),
        ({**BASE, "RELAY_ALLOWED_ORIGINS": "https://A.example"}, "in lower case"),
        ({**BASE, "RELAY_ALLOWED_ORIGINS": "ftp://a.example"}, "RELAY_ALLOWED_ORIGINS: 'ftp"),
        (
            {**BASE, "RELAY_JWT_SECRET": "short"},
            "RELAY_JWT_SECRET: the JWT secret must be at least",
        ),
    ],
)
def test_bad_values_name_their_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_env(env)


def test_supabases_endpoint_is_served_unless_its_path_is_empty() -> None:
    assert from_env(BASE).supabase_path == "/realtime/v1/websocket"
    assert from_env({**BASE, "RELAY_SUPABASE_PATH": ""}).supabase_path is None
    assert from_env({**BASE, "RELAY_SUPABASE_PATH": "/rt"}).supabase_path == "/rt"


def test_the_change_size_limit_follows_a_small_send_buffer() -> None:
    assert from_env(BASE).limits.max_change_bytes == 256 * 1024
    small = from_env({**BASE, "RELAY_MAX_SEND_BUFFER_BYTES": "65536"})
    assert small.limits.max_change_bytes == 16384
    with pytest.raises(ConfigError, match=r"RELAY_MAX_CHANGE_BYTES .* must be less than"):
        from_env(
            {**BASE, "RELAY_MAX_SEND_BUFFER_BYTES": "65536", "RELAY_MAX_CHANGE_BYTES": "65536"}
        )
