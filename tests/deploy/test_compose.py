"""compose.yaml, .env.example and the Caddyfile: valid, and consistent with each other
and with the relay's settings.

No engine runs containers on these machines: the file is checked against the Compose
specification's JSON schema (check-jsonschema's copy), and the Caddyfile is adapted
and validated by Debian's caddy.
"""

import json
import re
from pathlib import Path
from typing import Any

import yaml

from relay.settings import Settings
from tests.deploy.tools import ROOT, executable, run

COMPOSE = ROOT / "compose.yaml"
CADDYFILE = ROOT / "deploy" / "caddy" / "Caddyfile"
RELAYS = ("relay1", "relay2")
# A release (major.minor, or major.minor.patch), an optional variant, an optional digest.
PINNED = r"[a-z]+:\d+\.\d+(\.\d+)?(-[a-z]+)?(@sha256:[0-9a-f]{64})?"
DOMAINS = {"PORTAL_DOMAIN": "portal.example.com", "RELAY_DOMAIN": "relay.example.com"}


def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = compose()["services"]
    return found


def test_compose_file_is_valid_under_the_compose_specification() -> None:
    checker = executable("check-jsonschema", "pip install check-jsonschema")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_schema_check_would_catch_a_mistake(tmp_path: Path) -> None:
    broken = compose()
    broken["services"]["relay1"]["healthcheck"]["intervall"] = "10s"
    path = tmp_path / "compose.yaml"
    path.write_text(yaml.safe_dump(broken))
    checker = executable("check-jsonschema", "pip install check-jsonschema")
    result = run(checker, "--builtin-schema", "vendor.compose-spec", str(path))
    assert result.returncode == 1
    assert "intervall" in result.stdout


def test_the_deployment_has_every_part() -> None:
    assert set(services()) == {"postgres", "migrate", *RELAYS, "redis", "portal", "caddy"}


def test_third_party_images_are_pinned_to_a_release() -> None:
    for name in ("postgres", "redis", "caddy"):
        image = services()[name]["image"]
        assert re.fullmatch(PINNED, image), image


def test_our_images_are_built_from_the_dockerfile_targets() -> None:
    targets = {"migrate": "portal", "portal": "portal", **dict.fromkeys(RELAYS, "relay")}
    for name, target in targets.items():
        service = services()[name]
        assert service["build"] == {"context": ".", "target": target}, name
        assert service["image"].startswith(f"nexus-{target}:"), name


def test_migrations_run_once_before_the_relays_and_the_portal() -> None:
    migrate = services()["migrate"]
    assert migrate["command"] == ["alembic", "upgrade", "head"]
    assert migrate["restart"] == "no"
    assert migrate["depends_on"] == {"postgres": {"condition": "service_healthy"}}
    for name in (*RELAYS, "portal"):
        assert services()[name]["depends_on"]["migrate"] == {
            "condition": "service_completed_successfully"
        }, name


def test_the_relays_share_redis_and_are_health_checked_on_readyz() -> None:
    for name in RELAYS:
        relay = services()[name]
        env = relay["environment"]
        assert env["RELAY_REDIS_URL"] == "redis://redis:6379/0"
        assert env["RELAY_HOST"] == env["RELAY_OPS_HOST"] == "0.0.0.0"  # noqa: S104
        assert env["RELAY_ALLOWED_ORIGINS"].startswith("https://${PORTAL_DOMAIN")
        assert relay["depends_on"]["redis"] == {"condition": "service_healthy"}
        assert f"127.0.0.1:{Settings.ops_port}/readyz" in relay["healthcheck"]["test"][-1]
        # Longer than RELAY_DRAIN_S's default, plus the close handshakes.
        assert int(relay["stop_grace_period"].removesuffix("s")) >= 10 + 5
    # The same relay twice: one anchor, so that they cannot drift apart.
    assert services()["relay1"] == services()["relay2"]


def test_only_the_proxy_publishes_ports() -> None:
    published = {name for name, service in services().items() if "ports" in service}
    assert published == {"caddy"}
    networks = compose()["networks"]
    assert networks["back"]["internal"] is True
    for name in ("postgres", "redis", "migrate"):
        assert services()[name]["networks"] == ["back"], name


def test_the_relays_and_the_portal_listen_beyond_their_container() -> None:
    assert services()["portal"]["command"] == ["nexus-portal", "serve", "--host", "0.0.0.0"]  # noqa: S104
    for name in RELAYS:
        assert "command" not in services()[name]  # the image's: nexus-relay serve


def test_the_portal_trusts_forwarded_headers_from_the_proxy_only() -> None:
    caddy_address = services()["caddy"]["networks"]["front"]["ipv4_address"]
    assert services()["portal"]["environment"]["FORWARDED_ALLOW_IPS"] == caddy_address
    (subnet,) = compose()["networks"]["front"]["ipam"]["config"]
    assert caddy_address.startswith(subnet["subnet"].rsplit(".", 1)[0] + ".")


def test_secrets_come_from_the_env_file_and_are_required() -> None:
    text = COMPOSE.read_text()
    for secret in ("POSTGRES_PASSWORD", "RELAY_JWT_SECRET", "NEXUS_SESSION_SECRET"):
        uses = re.findall(r"\$\{" + secret + r"([^}]*)\}", text)
        assert uses, secret
        # ${NAME:?message}: compose stops when it is not set, rather than run with "".
        assert all(use.startswith(":?") for use in uses), (secret, uses)
    assert "/.env\n" in (ROOT / ".gitignore").read_text()


def test_env_example_lists_every_variable_compose_reads_with_no_secret_filled_in() -> None:
    used = set(re.findall(r"\$\{([A-Z_]+)", COMPOSE.read_text()))
    example = dict(
        line.split("=", 1)
        for line in (ROOT / ".env.example").read_text().splitlines()
        if line and not line.startswith("#")
    )
    assert set(example) == used
    for secret in ("POSTGRES_PASSWORD", "RELAY_JWT_SECRET", "NEXUS_SESSION_SECRET"):
        assert example[secret] == "", secret


def test_the_relay_policy_is_mounted_from_the_repository() -> None:
    assert compose()["configs"]["relay_policy"]["file"] == "./portal/relay-policy.toml"
    assert (ROOT / "portal" / "relay-policy.toml").is_file()
    for name in RELAYS:
        (config,) = services()[name]["configs"]
        assert config["target"] == services()[name]["environment"]["RELAY_POLICY_FILE"]


def caddy_config() -> dict[str, Any]:
    caddy = executable("caddy", "apt-get install caddy")
    result = run(
        "env",
        *(f"{name}={value}" for name, value in DOMAINS.items()),
        caddy,
        "adapt",
        "--adapter",
        "caddyfile",
        "--config",
        str(CADDYFILE),
    )
    assert result.returncode == 0, result.stderr
    adapted: dict[str, Any] = json.loads(result.stdout)
    return adapted


def routes_by_host() -> dict[str, list[dict[str, Any]]]:
    (server,) = caddy_config()["apps"]["http"]["servers"].values()
    assert server["listen"] == [":443"]
    return {route["match"][0]["host"][0]: route["handle"] for route in server["routes"]}


def proxies(handlers: list[dict[str, Any]]) -> list[tuple[list[str], dict[str, Any]]]:
    """Every reverse_proxy under ``handlers``, with the paths that lead to it."""
    found: list[tuple[list[str], dict[str, Any]]] = []

    def walk(handlers: list[dict[str, Any]], paths: list[str]) -> None:
        for handler in handlers:
            if handler["handler"] == "reverse_proxy":
                found.append((paths, handler))
            for route in handler.get("routes", []):
                matched = [p for m in route.get("match", []) for p in m.get("path", [])]
                walk(route["handle"], matched or paths)

    walk(handlers, [])
    return found


def test_caddy_proxies_the_relays_websocket_paths_over_both_relays() -> None:
    [(paths, proxy)] = proxies(routes_by_host()[DOMAINS["RELAY_DOMAIN"]])
    assert Settings.supabase_path is not None
    assert sorted(paths) == sorted([Settings.path, Settings.supabase_path])
    assert [u["dial"] for u in proxy["upstreams"]] == [f"{r}:{Settings.port}" for r in RELAYS]
    active = proxy["health_checks"]["active"]
    assert (active["uri"], active["port"], active["expect_status"]) == (
        "/readyz",
        Settings.ops_port,
        200,
    )
    # A refused connection (a draining relay) is tried again on the other one.
    assert proxy["load_balancing"]["try_duration"] > 0


def test_caddy_serves_the_portal_and_nothing_else() -> None:
    routes = routes_by_host()
    assert set(routes) == set(DOMAINS.values())
    [(_, proxy)] = proxies(routes[DOMAINS["PORTAL_DOMAIN"]])
    assert [u["dial"] for u in proxy["upstreams"]] == ["portal:8000"]
    assert proxy["health_checks"]["active"]["uri"] == "/healthz"
    every_handler = [handler for handlers in routes.values() for handler in handlers]
    dials = {u["dial"] for _, proxy in proxies(every_handler) for u in proxy["upstreams"]}
    assert not any(dial.endswith(f":{Settings.ops_port}") for dial in dials)
    assert {dial.split(":")[0] for dial in dials} <= set(services())


def test_caddy_validates_the_configuration(tmp_path: Path) -> None:
    # `caddy validate` provisions every module; its health checkers start at once,
    # so the upstreams are pointed at loopback first: no name of compose's network
    # is looked up from here.
    text = json.dumps(caddy_config())
    for name in ("portal", *RELAYS):
        text = text.replace(f'"{name}:', '"127.0.0.1:')
    config = tmp_path / "caddy.json"
    config.write_text(text)
    result = run(executable("caddy", "apt-get install caddy"), "validate", "--config", str(config))
    assert result.returncode == 0, result.stderr
    assert "Valid configuration" in result.stdout + result.stderr
