"""The portal's settings: required secrets, defaults, errors that name the variable."""

import pytest

from portal.settings import SettingsError, from_env

BASE = {
    "DATABASE_URL": "postgresql://db/nexus",
    "NEXUS_SESSION_SECRET": "s" * 32,
    "NEXUS_RELAY_JWT_SECRET": "r" * 32,
}


def test_defaults_are_safe() -> None:
    settings = from_env(BASE)
    assert settings.cookie_secure is True
    assert settings.relay_token_ttl == 300
    assert settings.relay_url == "ws://127.0.0.1:8765/"
    assert "s" * 32 not in repr(settings)  # secrets stay out of logs


def test_the_relay_secret_may_be_the_relays_own_variable() -> None:
    env = {k: v for k, v in BASE.items() if k != "NEXUS_RELAY_JWT_SECRET"}
    assert from_env({**env, "RELAY_JWT_SECRET": "x" * 40}).relay_jwt_secret == "x" * 40


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"NEXUS_SESSION_SECRET": ""}, "NEXUS_SESSION_SECRET is not set"),
        ({"NEXUS_SESSION_SECRET": "short"}, "NEXUS_SESSION_SECRET must be at least 32 bytes"),
        ({"NEXUS_RELAY_JWT_SECRET": ""}, "NEXUS_RELAY_JWT_SECRET is not set"),
        ({"DATABASE_URL": ""}, "DATABASE_URL is not set"),
        ({"NEXUS_RELAY_URL": "http://relay"}, "must be a ws:// or wss:// URL"),
        ({"NEXUS_COOKIE_SECURE": "maybe"}, "NEXUS_COOKIE_SECURE must be true or false"),
        ({"NEXUS_RELAY_TOKEN_TTL_S": "5"}, "at least 30"),
    ],
)
def test_bad_settings_name_their_variable(change: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        from_env({**BASE, **change})
