"""`make demo`'s program: brings the system up, says how to reach it, stops on Ctrl-C."""

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import psycopg

from tests.support import WAIT, Process

ROOT = Path(__file__).resolve().parents[2]


def run_demo(env: dict[str, str], *args: str) -> Process:
    return Process([sys.executable, "-m", "portal.demo", *args], env=env, cwd=str(ROOT))


def test_demo_on_a_fresh_embedded_postgres(tmp_path: Path, server_url: str) -> None:
    del server_url  # a database test: it runs where PostgreSQL runs
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    demo = run_demo(env, "--data-dir", str(tmp_path))
    try:
        demo.wait_for("Press Ctrl-C to stop.", timeout=12 * WAIT)
        banner = "".join(demo.output)
        assert "embedded, data in" in banner
        for login in ("alice@alpha.com", "bob@beta.com", "grace@gamma.com"):
            assert login in banner
        url = next(line.split()[-1].strip('"') for line in demo.output if "psql" in line)
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM nexus_cases").fetchone() == (1,)
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
