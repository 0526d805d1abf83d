"""`make demo`'s program: brings the system up, says how to reach it, stops on Ctrl-C."""

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import psycopg
import pytest

from relay.client import RelayClient
from tests.support import WAIT, Process, eventually, free_port, mint

ROOT = Path(__file__).resolve().parents[2]


def run_demo(env: dict[str, str], *args: str) -> Process:
    ports = [
        "--relay-port",
        str(free_port()),
        "--relay-ops-port",
        str(free_port()),
        "--portal-port",
        str(free_port()),
    ]
    return Process([sys.executable, "-m", "portal.demo", *ports, *args], env=env, cwd=str(ROOT))


async def live_change(relay_url: str, secret: str, database_url: str) -> str:
    """Subscribe as Bob to the demo's relay, write a payment: what arrives."""
    async with await RelayClient.connect(
        relay_url,
        mint("USR-BOB00001", "TNT-BETA0001", secret=secret, aud="nexus-relay", iss="nexus-portal"),
    ) as bob:
        await bob.subscribe("nexus_payments")
        with psycopg.connect(database_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO nexus_payments (id, from_id, to_id, amount)"
                " VALUES ('PAY-DEMO0001', 'TNT-ALPHA001', 'TNT-BETA0001', 1)"
            )
        event = await bob.next_event(WAIT)
        return str(event["new"]["id"])


def test_demo_on_a_fresh_embedded_postgres(tmp_path: Path, server_url: str) -> None:
    del server_url  # a database test: it runs where PostgreSQL runs
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    demo = run_demo(env, "--data-dir", str(tmp_path))
    try:
        demo.wait_for("Press Ctrl-C to stop.", timeout=12 * WAIT)
        banner = "".join(demo.output)
        assert "embedded, data in" in banner
        assert "/realtime/v1/websocket" in banner and "ANON_KEY=ey" in banner
        for login in ("alice@alpha.com", "bob@beta.com", "grace@gamma.com"):
            assert login in banner
        url = next(line.split()[-1].strip('"') for line in demo.output if "psql" in line)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM nexus_cases").fetchone() == (1,)
        portal_url = next(line.split()[1] for line in demo.output if "Portal:" in line)
        assert (
            httpx.get(portal_url.replace("/nexus/", "/nexus/login"), timeout=WAIT).status_code
            == 200
        )
        relay_url = next(line.split()[2] for line in demo.output if "Relay (WebSocket)" in line)
        secret = json.loads((tmp_path / "demo-secrets.json").read_text())["jwt_secret"]
        assert asyncio.run(live_change(relay_url, secret, url)) == "PAY-DEMO0001"
        assert demo.stop(signal.SIGINT, timeout=2 * WAIT) == 0
        assert not (tmp_path / "postgres" / "postmaster.pid").exists()
    finally:
        demo.kill()

    # The data survives a restart.
    demo = run_demo(env, "--data-dir", str(tmp_path))
    try:
        demo.wait_for("Press Ctrl-C to stop.", timeout=12 * WAIT)
        assert demo.stop(signal.SIGTERM, timeout=2 * WAIT) == 0
    finally:
        demo.kill()


def test_demo_uses_database_url_when_set(new_database: Callable[[], str], tmp_path: Path) -> None:
    url = new_database()
    demo = run_demo({**os.environ, "DATABASE_URL": url}, "--data-dir", str(tmp_path))
    try:
        demo.wait_for("Press Ctrl-C to stop.", timeout=12 * WAIT)
        assert "DATABASE_URL" in "".join(demo.output)
        assert not (tmp_path / "postgres").exists()
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM nexus_users").fetchone() == (4,)
        assert demo.stop(signal.SIGINT, timeout=2 * WAIT) == 0
    finally:
        demo.kill()


def test_ctrl_c_while_starting_leaves_no_server_behind(
    new_database: Callable[[], str], tmp_path: Path
) -> None:
    demo = run_demo({**os.environ, "DATABASE_URL": new_database()}, "--data-dir", str(tmp_path))
    try:
        demo.wait_for("Applying migrations", timeout=4 * WAIT)
        assert demo.stop(signal.SIGINT, timeout=4 * WAIT) == 0
        demo.wait_for("Stopping")
    finally:
        demo.kill()
    assert not any("Traceback" in line for line in demo.output)


def children_of(pid: int) -> set[int]:
    """The processes whose parent is ``pid``, from /proc."""
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                children.add(int(entry.name))
    return children


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie waiting for its parent is not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture(scope="module")
def demo_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("demo")  # one initdb for the module's runs


@pytest.mark.parametrize("signal_number", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_the_demo_takes_its_children_with_it_however_it_ends(
    demo_data_dir: Path, server_url: str, signal_number: int
) -> None:
    del server_url  # a database test: it runs where PostgreSQL runs
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    demo = run_demo(env, "--data-dir", str(demo_data_dir))
    try:
        demo.wait_for("Press Ctrl-C to stop.", timeout=12 * WAIT)
        children = children_of(demo.popen.pid)
        assert len(children) == 3, children  # the relay, the portal, PostgreSQL's keeper
        postmaster = int((demo_data_dir / "postgres" / "postmaster.pid").read_text().split()[0])
        assert running(postmaster)
        demo.popen.send_signal(signal_number)
        demo.popen.wait(4 * WAIT)
        left = eventually(
            lambda: not [pid for pid in {*children, postmaster} if running(pid)],
            timeout=6 * WAIT,
        )
        assert left
    finally:
        demo.kill()
    assert not (demo_data_dir / "postgres" / "postmaster.pid").exists()
