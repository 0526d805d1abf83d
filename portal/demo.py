"""``make demo``: the whole system on one machine.

Starts an embedded PostgreSQL under ``.data/`` (or uses ``DATABASE_URL``),
applies the migrations, loads the demo data, starts the servers, prints how to
reach them, and stops everything on Ctrl-C.

However the demo ends (Ctrl-C, SIGTERM, even SIGKILL), nothing it started
keeps running: the relay and the portal get SIGTERM from Linux when it dies
(``PR_SET_PDEATHSIG``), and the embedded PostgreSQL is stopped by its keeper
(``embedded_postgres.start_kept``) when the demo's end closes its pipe.
"""

import argparse
import ctypes
import json
import os
import secrets
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psycopg

from portal import demo_data, embedded_postgres, migrations, relay_token
from portal.database_url import redacted, with_database

ROOT = Path(__file__).resolve().parent.parent
DEMO_DATABASE = "nexus"


@dataclass(frozen=True)
class Ports:
    relay: int = 8765
    relay_ops: int = 8766
    portal: int = 8000


@dataclass
class Server:
    name: str
    argv: Sequence[str]
    url: str
    ready_url: str  # answers 200 once the server is ready
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None


def demo_secrets(data_dir: Path) -> dict[str, str]:
    """The relay's JWT secret and the portal's session secret, made once per data directory."""
    path = data_dir / "demo-secrets.json"
    if path.exists():
        stored = json.loads(path.read_text())
        if {"jwt_secret", "session_secret"} <= set(stored):
            return {k: str(v) for k, v in stored.items()}
    data_dir.mkdir(parents=True, exist_ok=True)
    made = {"jwt_secret": secrets.token_urlsafe(48), "session_secret": secrets.token_urlsafe(48)}
    path.write_text(json.dumps(made))
    path.chmod(0o600)
    return made


def database(data_dir: Path) -> tuple[str, str, "subprocess.Popen[bytes] | None"]:
    """The demo's database URL, where it comes from, and the embedded server's keeper."""
    url = os.environ.get("DATABASE_URL")
    if url:
        return url, "DATABASE_URL", None
    server_url, keeper = embedded_postgres.start_kept(data_dir / "postgres")
    with psycopg.connect(server_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (DEMO_DATABASE,)
        ).fetchone()
        if not exists:
            conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
    source = f"embedded, data in {data_dir / 'postgres'}"
    return with_database(server_url, DEMO_DATABASE), source, keeper


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def dying_with_this_process() -> Callable[[], None] | None:
    """A ``preexec_fn`` that has Linux send the child SIGTERM when this process dies.

    Also when it dies by SIGKILL, which no handler of ours sees. The signal
    follows the thread that started the child: start children from the main
    thread. None off Linux.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # loaded here, not in the child
    parent = os.getpid()

    def preexec() -> None:  # pragma: no cover - runs in the child, before exec
        if prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
            os._exit(126)
        if os.getppid() != parent:  # the parent died before prctl took effect
            os._exit(0)

    return preexec


def servers(url: str, secret: dict[str, str], ports: Ports) -> list[Server]:
    """The servers that make up the system, in start order."""
    relay = Server(
        name="Relay (WebSocket)",
        argv=[sys.executable, "-m", "relay.cli", "serve"],
        url=f"ws://127.0.0.1:{ports.relay}/   metrics: http://127.0.0.1:{ports.relay_ops}/metrics",
        ready_url=f"http://127.0.0.1:{ports.relay_ops}/readyz",
        env={
            "RELAY_DATABASE_URL": url,
            "RELAY_POLICY_FILE": str(ROOT / "portal" / "relay-policy.toml"),
            "RELAY_JWT_SECRET": secret["jwt_secret"],
            "RELAY_JWT_AUDIENCE": relay_token.AUDIENCE,
            "RELAY_JWT_ISSUER": relay_token.ISSUER,
            "RELAY_PORT": str(ports.relay),
            "RELAY_OPS_PORT": str(ports.relay_ops),
            "RELAY_ALLOWED_ORIGINS": f"http://127.0.0.1:{ports.portal},http://localhost:{ports.portal}",
            "RELAY_LOG_FORMAT": "text",
        },
    )
    portal = Server(
        name="Portal",
        argv=[sys.executable, "-m", "portal.cli", "serve", "--port", str(ports.portal)],
        url=f"http://127.0.0.1:{ports.portal}/nexus/",
        ready_url=f"http://127.0.0.1:{ports.portal}/healthz",
        env={
            "DATABASE_URL": url,
            "NEXUS_SESSION_SECRET": secret["session_secret"],
            "NEXUS_RELAY_JWT_SECRET": secret["jwt_secret"],
            "NEXUS_RELAY_URL": f"ws://127.0.0.1:{ports.relay}/",
            "NEXUS_COOKIE_SECURE": "false",  # plain http on localhost, for the demo only
            "NEXUS_LOG_LEVEL": "warning",
        },
    )
    return [relay, portal]


def wait_ready(server: Server, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.process is not None
        if server.process.poll() is not None:
            raise SystemExit(f"{server.name} exited with {server.process.returncode}")
        try:
            with urllib.request.urlopen(server.ready_url, timeout=1):  # noqa: S310 - our own server
                return
        except (urllib.error.URLError, OSError):
            time.sleep(0.2)
    raise SystemExit(f"{server.name} was not ready within {timeout:g} s")


def print_banner(
    url: str, source: str, running: list[Server], jwt_secret: str, relay_url: str
) -> None:
    with psycopg.connect(url) as conn:
        version = conn.execute("SHOW server_version").fetchone()
    lines = [
        "",
        "Nexus Relay demo is running.",
        "",
        f"  PostgreSQL {version[0] if version else '?'}: {source}",
        f"    {redacted(url)}",
        f'    psql "{redacted(url)}"',
    ]
    for server in running:
        lines.append(f"  {server.name}: {server.url}")
    if running:
        supabase_url, realtime_url = relay_token.supabase_urls(relay_url)
        lines += [
            "",
            "  Supabase clients (docs/supabase.md): the relay speaks Supabase Realtime at",
            f"    {realtime_url}/websocket",
            f"    createClient('{supabase_url}', ANON_KEY), then realtime.setAuth(a user's token)",
            f"    ANON_KEY={relay_token.anon_key(jwt_secret)}",
        ]
    lines += [
        "",
        "  Open the portal in two browsers (or a private window), sign in as Alice in",
        "  one and Bob in the other, and open case CASE-AB000001 in both.",
        "",
        "  Demo logins (email / password):",
    ]
    for user in demo_data.USERS:
        lines.append(
            f"    {user.email:<18} {user.password:<16} {user.display_name}, {user.tenant_id}"
        )
    lines += ["", "Press Ctrl-C to stop.", ""]
    print("\n".join(lines), flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m portal.demo", description=__doc__)
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=ROOT / ".data",
        help="where the embedded PostgreSQL keeps its data (default: .data/)",
    )
    defaults = Ports()
    parser.add_argument("--relay-port", type=int, default=defaults.relay)
    parser.add_argument("--relay-ops-port", type=int, default=defaults.relay_ops)
    parser.add_argument("--portal-port", type=int, default=defaults.portal)
    args = parser.parse_args(argv)
    ports = Ports(args.relay_port, args.relay_ops_port, args.portal_port)

    # Ctrl-C (SIGINT) and SIGTERM stop everything cleanly, at any moment:
    # also while starting, so that no server is left behind.
    signal.signal(signal.SIGTERM, _interrupt)
    running: list[Server] = []
    keeper = None
    try:
        url, source, keeper = database(args.data_dir.resolve())
        print(f"Applying migrations to {redacted(url)} ...", flush=True)
        migrations.upgrade(url)
        demo_data.load(url)
        secret = demo_secrets(args.data_dir.resolve())
        running = servers(url, secret, ports)
        for server in running:
            server.process = subprocess.Popen(  # noqa: S603 - our own commands
                server.argv,
                env={**os.environ, **server.env},
                cwd=ROOT,
                preexec_fn=dying_with_this_process(),
            )
            wait_ready(server)
        print_banner(url, source, running, secret["jwt_secret"], f"ws://127.0.0.1:{ports.relay}/")
        while True:
            for server in running:
                assert server.process is not None
                if server.process.poll() is not None:
                    print(f"{server.name} exited with {server.process.returncode}; stopping.")
                    return 1
            time.sleep(0.2)
    except KeyboardInterrupt:
        return 0
    finally:
        print("\nStopping ...", flush=True)
        stop_all(running)
        if keeper is not None:
            embedded_postgres.stop_kept(keeper)


def _interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def stop_all(running: list[Server]) -> None:
    for server in reversed(running):
        if server.process and server.process.poll() is None:
            server.process.terminate()
    for server in running:
        if server.process:
            try:
                server.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.process.kill()
                server.process.wait()


if __name__ == "__main__":
    sys.exit(main())
